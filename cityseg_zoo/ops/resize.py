"""Bilinear resizing with the ``align_corners`` choice always explicit."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resize(x: torch.Tensor, size, align_corners: bool) -> torch.Tensor:
    """Bilinear resize of ``x`` to ``size`` (H, W); a no-op when the size already matches."""
    size = tuple(s if isinstance(s, torch.SymInt) else int(s) for s in size)  # keep export sizes symbolic
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
