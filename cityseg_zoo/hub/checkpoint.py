"""Reading checkpoint files into a flat ``{key: tensor}`` state dict, without ever unpickling code.

``.safetensors`` files are read with safetensors. Legacy ``.pth``/``.pt``/``.tar`` files are opened only with
``torch.load(weights_only=True)``, which refuses any pickle that would construct arbitrary objects.
Containers seen in the wild (models.md §0.4): a bare state dict, ``{'state_dict': ...}`` (DANet,
DecoupleSegNets), ``{'model': ...}``, ``{'meta', 'state_dict'}`` (mmseg), and a ``module.`` prefix from
DataParallel/DDP.

Loading into a model (:func:`open_state_dict`) reads a safetensors file lazily: the keys and shapes come from
its header, each tensor's bytes when it is copied into the model, so the peak memory of ``create_model`` is
the model plus its largest tensor, not the model plus the whole checkpoint (Swin-L: 0.8 GiB less).

A folder written by ``save_pretrained`` (the zoo's or transformers') is read through
:func:`checkpoint_in_folder`: its ``model.safetensors``, else its ``pytorch_model.bin``, and its ``config.json``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import CheckpointError

_CONTAINER_KEYS = ("state_dict", "model_state", "model", "net")
FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")   # in order of preference: safetensors first


def checkpoint_in_folder(folder: str | os.PathLike) -> tuple[Path, dict | None]:
    """The weights file of a ``save_pretrained`` folder and its parsed ``config.json`` (``None`` if absent)."""
    folder = Path(folder)
    config = None
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{folder / 'config.json'} is not valid JSON: {err}") from err
    for name in FOLDER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name, config
    sharded = sorted(p.name for p in folder.glob("*.index.json"))
    raise CheckpointError(f"{folder} holds no {' or '.join(FOLDER_WEIGHTS)}"
                          + (f" (sharded checkpoints such as {sharded[0]} are not supported)" if sharded else ""))


class StoredTensor:
    """One tensor of an open safetensors file: its shape now (from the header), its bytes on :meth:`load`."""

    def __init__(self, handle, key: str, path: Path):
        self._handle, self.key, self.path = handle, key, path
        self.shape = torch.Size(handle.get_slice(key).get_shape())

    def load(self) -> torch.Tensor:
        from safetensors import SafetensorError
        try:
            return self._handle.get_tensor(self.key)
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{self.path}: tensor {self.key!r} could not be read: {err}") from err


def materialize(value: torch.Tensor | StoredTensor) -> torch.Tensor:
    return value.load() if isinstance(value, StoredTensor) else value


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")


def _open_unmapped(path: Path):
    """``safe_open`` reading each tensor with ``pread`` where safetensors can (>= 0.8): through its default memory
    map, every page read stays resident until the file is closed, and the peak is model + file again."""
    from safetensors import safe_open
    try:
        return safe_open(str(path), framework="pt", device="cpu", backend="pread")
    except TypeError:   # an older safetensors: no backend argument
        return safe_open(str(path), framework="pt", device="cpu")


def open_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor | StoredTensor]:
    """Like :func:`read_state_dict`, but a safetensors file's values are :class:`StoredTensor` (read on load)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return read_state_dict(path)
    _check_file(path)
    from safetensors import SafetensorError
    try:
        handle = _open_unmapped(path)
        return {key: StoredTensor(handle, key, path) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file and return its flat state dict (container and ``module.`` prefix removed)."""
    path = Path(path)
    _check_file(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise CheckpointError(
            f"{path} could not be loaded with torch.load(weights_only=True): {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}. Only plain tensor checkpoints are accepted; a file "
            "that needs arbitrary unpickling is refused for safety.") from err
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Take the state dict out of a training container and strip a ``module.`` prefix."""
    if isinstance(obj, dict):
        for key in _CONTAINER_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{source} holds no state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: entries that are not tensors: {bad[:5]}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)
