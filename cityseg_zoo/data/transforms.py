"""Reading images and turning them into model input, built from a model's ``pretrained_cfg`` so that nobody
hand-codes normalisation."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from .normalization import Normalization

# PIL modes that convert to RGB without losing meaning: grayscale, palette, with or without alpha, CMYK, YCbCr.
_CONVERTIBLE_MODES = {"L", "LA", "P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "1", "La"}


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as an RGB ``uint8`` tensor ``[3, H, W]``.

    Grayscale and palette images are replicated to three channels; RGBA images lose their alpha channel (the
    networks were trained on opaque RGB street photos). Both conversions warn. 16-bit and float images are
    refused rather than silently clipped.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such image file: {path}" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {path} as an image: {err}") from None
    if image.mode != "RGB":
        if image.mode not in _CONVERTIBLE_MODES:
            raise InputError(f"{path}: image mode {image.mode!r} (16-bit or float) is not supported; "
                             "save it as 8-bit RGB")
        warnings.warn(f"{path}: converted {image.mode} image to RGB"
                      + (" (alpha channel dropped)" if "A" in image.mode else ""), stacklevel=2)
        image = image.convert("RGB")
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def normalization_from_cfg(pretrained_cfg: dict) -> Normalization:
    """The input normalisation a model was trained with (``pretrained_cfg["input"]``)."""
    if "input" not in pretrained_cfg:
        raise InputError("pretrained_cfg has no 'input' entry describing the normalisation")
    return Normalization.from_dict(pretrained_cfg["input"])


def preprocess(rgb_uint8: torch.Tensor, pretrained_cfg: dict) -> torch.Tensor:
    """RGB ``uint8`` image(s) ``[3, H, W]`` or ``[B, 3, H, W]`` -> the normalised float batch the model expects.

    Channel order (RGB/BGR), 0-1 or 0-255 scaling and mean/std all come from ``pretrained_cfg["input"]``.
    """
    if not isinstance(rgb_uint8, torch.Tensor):
        raise InputError(f"expected a uint8 torch.Tensor [3, H, W] or [B, 3, H, W], got {type(rgb_uint8).__name__}")
    if rgb_uint8.dtype != torch.uint8:
        raise InputError(f"expected 0-255 pixels as torch.uint8, got dtype {rgb_uint8.dtype}; load images with "
                         "cityseg_zoo.data.load_image, or pass an already normalised float tensor to the model")
    x = rgb_uint8.unsqueeze(0) if rgb_uint8.dim() == 3 else rgb_uint8
    if x.dim() != 4 or x.shape[1] != 3:
        raise InputError(f"expected RGB images [3, H, W] or [B, 3, H, W], got shape {tuple(rgb_uint8.shape)}")
    return normalization_from_cfg(pretrained_cfg)(x)
