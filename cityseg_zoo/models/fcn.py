"""FCN baseline: dilated ResNet + one 3x3 conv + classifier (OCNet.pytorch ``resnet101_baseline``, models.md §10)."""
from __future__ import annotations

import torch
from torch import nn

from ..data.normalization import OCNET_RGB
from ..hub.convert import Layout
from ..ops.norm import conv_bn_act
from ..registry import register_model
from ..segmentor import Segmentor
from ..specs import ArchSpec
from .common import FLAT_STEM_RULES, deep_stem_resnet


class FCNHead(nn.Module):
    """conv3x3 (bias) -> InPlaceABN + LeakyReLU -> Dropout2d(0.05) -> conv1x1 classifier, on layer4."""

    def __init__(self, in_ch: int, num_classes: int, mid_ch: int = 512):
        super().__init__()
        self.conv = conv_bn_act(in_ch, mid_ch, 3, bias=True, act="abn")
        self.dropout = nn.Dropout2d(0.05)
        self.classifier = nn.Conv2d(mid_ch, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(features[-1])))


OCNET_BASELINE = Layout(
    "ocnet_baseline",
    rules=FLAT_STEM_RULES + ((r"^layer5\.", "head.conv."), (r"^layer6\.", "head.classifier.")),
    description="openseg-group/OCNet.pytorch@679a45b network/resnet101_baseline.py (bare state dict)",
)

SPEC = ArchSpec(reference="openseg-group/OCNet.pytorch@679a45b network/resnet101_baseline.py",
                paper="Long et al., Fully Convolutional Networks, CVPR 2015 (dilated baseline of OCNet)",
                input=OCNET_RGB, classifiers=("head.classifier",), layouts=(OCNET_BASELINE,))


def _fcn(depth: int, num_classes: int) -> Segmentor:
    backbone = deep_stem_resnet(depth, inplace_abn=True)
    return Segmentor(backbone, FCNHead(2048, num_classes), aux_head=None)


@register_model(SPEC)
def fcn_r50(num_classes: int = 19) -> Segmentor:
    """FCN baseline, dilated ResNet-50 (deep stem, OS8). No released Cityscapes weights."""
    return _fcn(50, num_classes)


@register_model(SPEC)
def fcn_r101(num_classes: int = 19) -> Segmentor:
    """FCN baseline, dilated ResNet-101 (deep stem, OS8). No released Cityscapes weights."""
    return _fcn(101, num_classes)
