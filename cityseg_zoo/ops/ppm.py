"""Pyramid pooling module (PSPNet): pooled context at several grid sizes, concatenated with the input."""
from __future__ import annotations

import torch
from torch import nn

from .norm import ABN
from .resize import resize


class PyramidPooling(nn.Module):
    """``[up(conv(pool_k(x))) for k in sizes] + [x]`` concatenated (order as the GALD-repo PSPModule).

    Each stage is ``AdaptiveAvgPool(k) -> conv1x1 (no bias) -> norm`` (keys ``stages.i.1``, ``stages.i.2``).
    ``act="none"``: plain BN, no activation (GALD repo); ``act="abn"``: InPlaceABN + LeakyReLU (CCNet repo).
    """

    def __init__(self, in_ch: int, stage_ch: int, sizes=(1, 2, 3, 6), act: str = "none",
                 align_corners: bool = True):
        super().__init__()
        norm = (lambda c: ABN(c)) if act == "abn" else nn.BatchNorm2d
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(k), nn.Conv2d(in_ch, stage_ch, 1, bias=False), norm(stage_ch))
            for k in sizes)
        self.align_corners = align_corners
        self.out_channels = in_ch + len(sizes) * stage_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [resize(stage(x), size, self.align_corners) for stage in self.stages]
        return torch.cat(pooled + [x], dim=1)
