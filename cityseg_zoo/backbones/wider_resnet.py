"""WiderResNetA2-38 with identity-mapping (pre-activation) blocks, dilated to output stride 8.

The trunk of the released GFF-Net (lxtGH/DecoupleSegNets ``network/wider_resnet.py``, adapted from mapillary
``inplace_abn``'s ``wider_resnet38_a2``; models.md §3 "Trunk"). Module and key names follow that code, so a
reference checkpoint maps one-to-one under ``backbone.``:

* ``mod1.conv1``: conv3x3(3 -> 64, stride 1), full resolution, no norm after it.
* ``pool2`` -> ``mod2`` (3 blocks, 128-128) at 1/2; ``pool3`` -> ``mod3`` (3 blocks, 256-256) at 1/4.
  Both pools are MaxPool2d(3, 2, 1), ceil_mode off.
* ``mod4`` (6 blocks, 512-512): its first block's conv1 has stride 2, giving 1/8.
* ``mod5`` (3 blocks, 512-1024) at dilation 2; ``mod6`` (one bottleneck 512-1024-2048) and ``mod7`` (one
  bottleneck 1024-2048-4096) at dilation 4, with Dropout2d(0.3) / Dropout2d(0.5) before their last conv.

This is the code's ``dilation=True`` schedule (``mod_id == 2`` strided, ``mod_id == 3`` dilation 2, later 4);
models.md §3 puts the stride in mod3 and the dilations one module earlier, which the golden output rules out.
The ImageNet trunk's final ``bn_out`` and classifier are not part of the segmentation model.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn


# (widths of each block, number of blocks) for mod2..mod7 of WiderResNet-38.
WRN38_CHANNELS = ((128, 128), (256, 256), (512, 512), (512, 1024), (512, 1024, 2048), (1024, 2048, 4096))
WRN38_BLOCKS = (3, 3, 6, 3, 1, 1)
# Output-stride-8 schedule of the released code: (first-block stride, dilation, dropout) for mod2..mod7.
WRN38_OS8 = ((1, 1, 0.0), (1, 1, 0.0), (2, 1, 0.0), (1, 2, 0.0), (1, 4, 0.3), (1, 4, 0.5))


def _bn_relu(channels: int) -> nn.Sequential:
    """The trunk's ``norm_act``: BN then ReLU as one Sequential (keys ``<name>.0.*``)."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class IdentityResidualBlock(nn.Module):
    """Pre-activation residual block: ``convs(bn1(x)) + shortcut``.

    The shortcut is ``proj_conv(bn1(x))`` (conv1x1, stride) when the width or the stride changes, else ``x``.
    Two widths give the basic block (conv3x3 -> BN-ReLU -> conv3x3, both dilated); three give the bottleneck
    (conv1x1 -> BN-ReLU -> conv3x3 dilated -> BN-ReLU -> [Dropout2d] -> conv1x1). The stride sits on the first conv.
    """

    def __init__(self, in_ch: int, channels: Sequence[int], stride: int = 1, dilation: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        if len(channels) not in (2, 3):
            raise ValueError(f"channels must have 2 or 3 widths, got {channels}")
        self.bn1 = _bn_relu(in_ch)
        d = dilation
        if len(channels) == 2:
            layers = [("conv1", nn.Conv2d(in_ch, channels[0], 3, stride, padding=d, dilation=d, bias=False)),
                      ("bn2", _bn_relu(channels[0])),
                      ("conv2", nn.Conv2d(channels[0], channels[1], 3, padding=d, dilation=d, bias=False))]
        else:
            layers = [("conv1", nn.Conv2d(in_ch, channels[0], 1, stride, bias=False)),
                      ("bn2", _bn_relu(channels[0])),
                      ("conv2", nn.Conv2d(channels[0], channels[1], 3, padding=d, dilation=d, bias=False)),
                      ("bn3", _bn_relu(channels[1])),
                      ("conv3", nn.Conv2d(channels[1], channels[2], 1, bias=False))]
        if dropout > 0:  # before the last conv, as in the reference
            layers.insert(len(layers) - 1, ("dropout", nn.Dropout2d(dropout)))
        self.convs = nn.Sequential(OrderedDict(layers))
        if stride != 1 or in_ch != channels[-1]:
            self.proj_conv = nn.Conv2d(in_ch, channels[-1], 1, stride, bias=False)
        else:
            self.proj_conv = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.bn1(x)
        shortcut = x if self.proj_conv is None else self.proj_conv(pre)
        return self.convs(pre) + shortcut


class WiderResNetA2(nn.Module):
    # read by create_model(..., pretrained_backbone=True): timm has no WiderResNet-38 ImageNet weights
    imagenet_weights_note = (
        "no ImageNet WiderResNet-38 weights are available through timm; load the DecoupleSegNets "
        "wider_resnet38.pth.tar (Google Drive 1dGfPvzf4fS0aaSDnw2uahQpnBrUJfRDt) into model.backbone yourself, "
        "or load a full GFF-Net checkpoint")

    """WiderResNetA2 trunk returning ``[mod2, mod3, mod5, mod7]`` outputs.

    Strides 2, 4, 8, 8 and widths 128, 256, 1024, 4096 (``out_channels``). GFF-Net takes ``mod2`` (m2),
    ``mod5`` (m5) and ``mod7``; ``mod5`` sits at index 2, where a ResNet gives layer3.
    """

    taps = ("mod2", "mod3", "mod5", "mod7")

    def __init__(self, blocks: Sequence[int] = WRN38_BLOCKS, channels=WRN38_CHANNELS, schedule=WRN38_OS8):
        super().__init__()
        self.mod1 = nn.Sequential(OrderedDict([("conv1", nn.Conv2d(3, 64, 3, padding=1, bias=False))]))
        self.pool2 = nn.MaxPool2d(3, stride=2, padding=1)
        self.pool3 = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = 64
        for index, (num, widths, (stride, dilation, dropout)) in enumerate(zip(blocks, channels, schedule)):
            mod = []
            for b in range(num):
                mod.append((f"block{b + 1}", IdentityResidualBlock(in_ch, widths, stride if b == 0 else 1,
                                                                    dilation, dropout)))
                in_ch = widths[-1]
            self.add_module(f"mod{index + 2}", nn.Sequential(OrderedDict(mod)))
        self.out_channels = [channels[int(tap[3:]) - 2][-1] for tap in self.taps]  # "modK" is channels[K - 2]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        m2 = self.mod2(self.pool2(self.mod1(x)))
        m3 = self.mod3(self.pool3(m2))
        m5 = self.mod5(self.mod4(m3))
        m7 = self.mod7(self.mod6(m5))
        return [m2, m3, m5, m7]


def wider_resnet38_a2() -> WiderResNetA2:
    """WiderResNetA2-38, output stride 8 (the released GFF-Net trunk)."""
    return WiderResNetA2()
