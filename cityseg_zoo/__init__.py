"""cityseg_zoo: faithful, verified semantic segmentation models for street scenes (Cityscapes)."""
from . import models  # noqa: F401  (registers every architecture)
from .errors import (CheckpointError, CitysegZooError, InputError, UnknownModelError,
                     WeightsUnavailableError)
from .factory import create_model, load_checkpoint, model_info
from .hf import from_pretrained
from . import registry
from .registry import list_models, list_pretrained

__version__ = "0.1.0"

__all__ = ["create_model", "from_pretrained", "list_models", "list_pretrained", "model_info", "load_checkpoint", "__version__",
           "CitysegZooError", "UnknownModelError", "CheckpointError", "WeightsUnavailableError", "InputError"]
