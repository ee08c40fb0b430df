"""PSPNet (Zhao et al., Pyramid Scene Parsing Network, CVPR 2017) as in lxtGH/GALD-DGCNet (models.md §7a).

Dilated deep-stem ResNet (flat stem names, plain BatchNorm, layer4 dilation 4/4/4) -> pyramid pooling over
1x1, 2x2, 3x3, 6x6 grids -> 3x3 bottleneck -> classifier, with the GALD-style layer3 auxiliary head.
"""
from __future__ import annotations

import torch
from torch import nn

from ..data.normalization import CAFFE_BGR
from ..hub.convert import Layout
from ..ops.norm import conv_bn_act
from ..ops.ppm import PyramidPooling
from ..registry import register_model
from ..segmentor import AuxHead, Segmentor
from ..specs import ArchSpec
from .common import FLAT_STEM_RULES, deep_stem_resnet


class PSPHead(nn.Module):
    """Pyramid pooling module -> conv3x3 -> BN -> ReLU -> Dropout2d(0.1) -> conv1x1 classifier."""

    def __init__(self, in_ch: int, num_classes: int, stage_ch: int = 512, sizes=(1, 2, 3, 6)):
        super().__init__()
        # Stage norms have no activation in the GALD-repo PSPModule (pool -> conv -> BN).
        self.pyramid_pooling = PyramidPooling(in_ch, stage_ch, sizes, act="none")
        self.bottleneck = nn.Sequential(*conv_bn_act(self.pyramid_pooling.out_channels, stage_ch, 3, act="relu"),
                                        nn.Dropout2d(0.1))
        self.classifier = nn.Conv2d(stage_ch, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.bottleneck(self.pyramid_pooling(features[-1])))


GALD_REPO_PSPNET = Layout(
    "gald_pspnet",
    rules=FLAT_STEM_RULES + (
        (r"^head\.0\.stages\.", "head.pyramid_pooling.stages."),
        (r"^head\.0\.bottleneck\.", "head.bottleneck."),
        (r"^head\.1\.", "head.classifier."),
        (r"^dsn\.", "aux_head."),
    ),
    description="lxtGH/GALD-DGCNet@be7ebfe libs/models/PSPNet.py (bare state dict, flat stem, BatchNorm)",
)

# The GALD repo never trained a PSPNet; its scripts' default input is Caffe-style BGR minus the mean (no --rgb).
SPEC = ArchSpec(reference="lxtGH/GALD-DGCNet@be7ebfe libs/models/PSPNet.py::PSPNet_res101",
                paper="Zhao et al., Pyramid Scene Parsing Network, CVPR 2017",
                input=CAFFE_BGR, classifiers=("head.classifier", "aux_head.4"), layouts=(GALD_REPO_PSPNET,))


def _pspnet(depth: int, num_classes: int) -> Segmentor:
    backbone = deep_stem_resnet(depth)
    return Segmentor(backbone, PSPHead(2048, num_classes), aux_head=AuxHead(1024, 512, num_classes, act="relu"))


@register_model(SPEC)
def pspnet_r50(num_classes: int = 19) -> Segmentor:
    """PSPNet, dilated ResNet-50 (deep stem, OS8), GALD-repo variant. No released Cityscapes weights."""
    return _pspnet(50, num_classes)


@register_model(SPEC)
def pspnet_r101(num_classes: int = 19) -> Segmentor:
    """PSPNet, dilated ResNet-101 (deep stem, OS8), GALD-repo variant. No released Cityscapes weights."""
    return _pspnet(101, num_classes)
