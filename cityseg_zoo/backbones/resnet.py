"""timm ResNets made dilated (output stride 8), with the switches the reference repos need.

Two topologies occur in the references (models.md §0.1, §4):
* ``resnet50s`` / ``resnet101s``: 3x3 deep stem 64-64-128 (lxtGH, speedinghzl, OCNet, DecoupleSegNets).
* ``resnet50`` / ``resnet101``: 7x7 stem (DANet's Encoding ResNet).

timm's own ``output_stride=8`` contracts the first block of each dilated stage (layer3 block 0 at dilation 1,
layer4 block 0 at 2). The references do not, so dilations are set per block here.
"""
from __future__ import annotations

from typing import Callable, Sequence

import timm
import torch
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

# (conv, norm) attribute pairs of timm's residual blocks whose forward is norm(conv(x)) (optimize.fold_batchnorms).
BLOCK_FOLD_PAIRS = {
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
}


class DilatedResNet(nn.Module):
    """A timm ResNet trunk without pooling/classifier, returning ``[layer1, layer2, layer3, layer4]``.

    ``kept_features``: in eval mode, the stage outputs (indices 0-3) to return; the others are ``None``, so each is
    freed as soon as the next stage has read it (``optimize.drop_unused_features`` sets it to what the head reads:
    DANet keeps only layer4, which frees 320 MiB at 1024x2048). ``None`` keeps all four.
    """

    fold_pairs = (("conv1", "bn1"),)   # conv1 is the 7x7 conv or the deep stem (its last conv)

    def __init__(self, trunk: nn.Module):
        super().__init__()
        # Keep timm's attribute names so that timm / reference state dicts map one-to-one.
        self.conv1 = trunk.conv1
        self.bn1 = trunk.bn1
        self.act1 = trunk.act1
        self.maxpool = trunk.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
        self.out_channels = [
            self.layer1[-1].conv3.out_channels, self.layer2[-1].conv3.out_channels,
            self.layer3[-1].conv3.out_channels, self.layer4[-1].conv3.out_channels,
        ]

        self.kept_features: set[int] | None = None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        keep = None if self.training else self.kept_features
        outputs = []
        for index, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            x = layer(x)
            outputs.append(x if keep is None or index in keep else None)
        return outputs


def _set_dilations(layer: nn.Sequential, dilations: Sequence[int]) -> None:
    if len(dilations) != len(layer):
        raise ValueError(f"need {len(layer)} dilations, got {len(dilations)}")
    for block, d in zip(layer, dilations):
        block.conv2.dilation = (d, d)
        block.conv2.padding = (d, d)


def dilated_resnet(
    variant: str = "resnet101s",
    layer3_dilations: Sequence[int] | int = 2,
    layer4_dilations: Sequence[int] = (4, 4, 4),
    ceil_mode_pool: bool = True,
    norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
) -> DilatedResNet:
    """Build an output-stride-8 ResNet.

    Args:
        variant: timm model name (``resnet50s``, ``resnet101s``, ``resnet50``, ``resnet101``, ``resnet101c``...).
        layer3_dilations: per-block dilations of layer3, or one value for every block.
        layer4_dilations: per-block dilations of layer4 (multi-grid (1, 2, 4) at base 4 gives 4, 8, 16).
        ceil_mode_pool: max-pool with ``ceil_mode=True`` as lxtGH / speedinghzl / OCNet do.
        norm_layer: normalisation of every backbone norm (``ABN`` with identity activation for InPlaceABN repos).

    ImageNet weights: ``create_model(..., pretrained_backbone=True)`` (``factory.load_backbone_imagenet``).
    """
    trunk = timm.create_model(variant, output_stride=8, num_classes=0,
                              global_pool="", norm_layer=norm_layer)
    if isinstance(layer3_dilations, int):
        layer3_dilations = [layer3_dilations] * len(trunk.layer3)
    _set_dilations(trunk.layer3, layer3_dilations)
    _set_dilations(trunk.layer4, layer4_dilations)
    trunk.maxpool.ceil_mode = ceil_mode_pool
    backbone = DilatedResNet(trunk)
    backbone.timm_variant = variant  # for create_model(..., pretrained_backbone=True)
    return backbone
