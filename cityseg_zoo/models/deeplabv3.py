"""DeepLabv3 (Chen et al., Rethinking Atrous Convolution, arXiv 1706.05587) as in speedinghzl/CCNet (models.md §8).

Dilated deep-stem ResNet (InPlaceABN, layer4 dilation 4/4/4) -> ASPP [image pool, 1x1, d12, d24, d36] ->
1x1 projection -> classifier, with CCNet's layer3 auxiliary head. Every head norm is InPlaceABN + LeakyReLU(0.01).
"""
from __future__ import annotations

import torch
from torch import nn

from ..data.normalization import CAFFE_BGR
from ..hub.convert import Layout
from ..ops.aspp import ASPP
from ..ops.norm import conv_bn_act
from ..registry import register_model
from ..segmentor import AuxHead, Segmentor
from ..specs import ArchSpec
from .common import FLAT_STEM_RULES, deep_stem_resnet


class DeepLabV3Head(nn.Module):
    """ASPP -> conv1x1 (no bias) -> ABN -> Dropout2d(0.1) -> conv1x1 classifier."""

    def __init__(self, in_ch: int, num_classes: int, inner_ch: int = 256, out_ch: int = 512,
                 dilations=(12, 24, 36)):
        super().__init__()
        # LeakyReLU (InPlaceABN's default) rather than the paper's ReLU after every ASPP branch.
        self.aspp = ASPP(in_ch, inner_ch, dilations, act="abn")
        self.bottleneck = nn.Sequential(*conv_bn_act(self.aspp.out_channels, out_ch, 1, act="abn"),
                                        nn.Dropout2d(0.1))
        self.classifier = nn.Conv2d(out_ch, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.bottleneck(self.aspp(features[-1])))


CCNET_REPO_DEEPLABV3 = Layout(
    "ccnet_deeplabv3",
    rules=FLAT_STEM_RULES + (
        (r"^head\.0\.conv1\.", "head.aspp.image_pool."),       # pool -> conv (.1) -> ABN (.2)
        (r"^head\.0\.conv2\.", "head.aspp.branches.0."),
        (r"^head\.0\.conv3\.", "head.aspp.branches.1."),
        (r"^head\.0\.conv4\.", "head.aspp.branches.2."),
        (r"^head\.0\.conv5\.", "head.aspp.branches.3."),
        (r"^head\.0\.bottleneck\.", "head.bottleneck."),
        (r"^head\.1\.", "head.classifier."),
        (r"^dsn\.", "aux_head."),
    ),
    description="speedinghzl/CCNet@7a76bff networks/deeplabv3.py (bare state dict, flat stem, InPlaceABN)",
)

SPEC = ArchSpec(reference="speedinghzl/CCNet@7a76bff networks/deeplabv3.py::Res_Deeplab",
                paper="Chen et al., Rethinking Atrous Convolution for Semantic Image Segmentation, "
                      "arXiv 1706.05587 (2017)",
                input=CAFFE_BGR, classifiers=("head.classifier", "aux_head.3"), layouts=(CCNET_REPO_DEEPLABV3,))


def _deeplabv3(depth: int, num_classes: int) -> Segmentor:
    backbone = deep_stem_resnet(depth, inplace_abn=True)
    return Segmentor(backbone, DeepLabV3Head(2048, num_classes), aux_head=AuxHead(1024, 512, num_classes, act="abn"))


@register_model(SPEC)
def deeplabv3_r50(num_classes: int = 19) -> Segmentor:
    """DeepLabv3, dilated ResNet-50 (deep stem, OS8, InPlaceABN), CCNet-repo variant. No released weights."""
    return _deeplabv3(50, num_classes)


@register_model(SPEC)
def deeplabv3_r101(num_classes: int = 19) -> Segmentor:
    """DeepLabv3, dilated ResNet-101 (deep stem, OS8, InPlaceABN), CCNet-repo variant. No released weights."""
    return _deeplabv3(101, num_classes)
