"""Colourised label maps and side-by-side overlays (numpy ``uint8`` images, ready for ``PIL.Image.fromarray``)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .data.cityscapes import IGNORE_INDEX, PALETTE


def _numpy(array) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def colorize(labels, palette: Sequence[Sequence[int]] = PALETTE) -> np.ndarray:
    """trainIds ``[H, W]`` -> RGB ``[H, W, 3]``; ``IGNORE_INDEX`` (and any id without a colour) is black."""
    labels = _numpy(labels).astype(np.int64)
    table = np.zeros((max(256, labels.max(initial=0) + 1), 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    table[IGNORE_INDEX] = 0
    return table[labels]


def overlay(image, labels, palette: Sequence[Sequence[int]] = PALETTE, alpha: float = 0.5) -> np.ndarray:
    """The photo and its colourised prediction blended with weight ``alpha``, side by side: ``[H, 2W, 3]``.

    ``image`` is RGB ``uint8``, ``[3, H, W]`` (tensor) or ``[H, W, 3]`` (array).
    """
    photo = _numpy(image)
    if photo.ndim == 3 and photo.shape[0] == 3 and photo.shape[-1] != 3:
        photo = photo.transpose(1, 2, 0)
    blend = (1 - alpha) * photo.astype(np.float32) + alpha * colorize(labels, palette).astype(np.float32)
    return np.concatenate([photo, blend.round().astype(np.uint8)], axis=1)
