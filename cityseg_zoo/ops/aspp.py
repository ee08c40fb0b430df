"""Atrous spatial pyramid pooling (DeepLabv3): image pooling, a 1x1 and three dilated 3x3 branches."""
from __future__ import annotations

import torch
from torch import nn

from .norm import conv_bn_act
from .resize import resize


class ASPP(nn.Module):
    """Concatenation ``[image pool, 1x1, d1, d2, d3]`` (the order of every reference that has weights).

    Returns the concatenation (``5 * inner_ch`` channels); the projection after it differs per repo and
    belongs to the head. ``act`` is the branch norm/activation (see :func:`conv_bn_act`).
    """

    def __init__(self, in_ch: int, inner_ch: int = 256, dilations=(12, 24, 36), act: str = "relu",
                 align_corners: bool = True):
        super().__init__()
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), *conv_bn_act(in_ch, inner_ch, 1, act=act))
        self.branches = nn.ModuleList(
            [conv_bn_act(in_ch, inner_ch, 1, act=act)]
            + [conv_bn_act(in_ch, inner_ch, 3, dilation=d, act=act) for d in dilations])
        self.align_corners = align_corners
        self.out_channels = inner_ch * (2 + len(dilations))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = resize(self.image_pool(x), x.shape[-2:], self.align_corners)
        return torch.cat([pooled] + [branch(x) for branch in self.branches], dim=1)
