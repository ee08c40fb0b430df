"""GALD-Net: Global Aggregation then Local Distribution (lxtGH/GALD-DGCNet ``GALDNet.py``, models.md §1)."""
from __future__ import annotations

import torch
from torch import nn

from ..data.normalization import CAFFE_BGR
from ..hub.convert import Layout
from ..ops.gald import GALDBlock
from ..ops.norm import conv_bn_act
from ..registry import register_model
from ..segmentor import AuxHead, Segmentor
from ..specs import ArchSpec, Recipe
from .common import FLAT_STEM_RULES, SEQUENTIAL_STEM_RULES, deep_stem_resnet


class GALDHead(nn.Module):
    """conva -> GALD block -> convb, then the bottleneck classifier over ``cat[layer4, convb]``."""

    def __init__(self, in_ch: int, num_classes: int, mid_ch: int = 512, align_corners: bool = True):
        super().__init__()
        self.conva = conv_bn_act(in_ch, mid_ch, 3)
        self.a2block = GALDBlock(mid_ch, mid_ch // 2, groups=8, align_corners=align_corners)
        self.convb = conv_bn_act(mid_ch, mid_ch, 3)
        # conv3x3 -> BN -> ReLU -> conv1x1: keys 0, 1, 3 as the reference (no dropout in the main head).
        self.bottleneck = nn.Sequential(*conv_bn_act(in_ch + mid_ch, mid_ch, 3),
                                        nn.Conv2d(mid_ch, num_classes, 1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        context = self.convb(self.a2block(self.conva(x)))
        return self.bottleneck(torch.cat([x, context], dim=1))


_HEAD_RULES = ((r"^head\.", "head."), (r"^dsn\.", "aux_head."))

LXTGH = Layout(
    "lxtgh", rules=SEQUENTIAL_STEM_RULES + _HEAD_RULES,
    description="lxtGH/GALD-DGCNet@be7ebfe libs/models/GALDNet.py, Sequential stem (since 2020-08-26), bare state dict",
)
# Dec-2019 GALDNet (d9a7e22): flat stem names conv1/bn1/conv2/bn2/conv3/bn3; head and dsn keys are the same.
LXTGH_V2019 = Layout(
    "lxtgh_v2019", rules=FLAT_STEM_RULES + _HEAD_RULES,
    description="lxtGH/GALD-DGCNet@d9a7e22 libs/models/GALDNet.py, flat stem (2019-12 .. 2020-08), bare state dict",
)

# Smallest input side: the local attention's three unpadded stride-2 convs need >= 15 px at 1/8 (15 -> 7 -> 3 -> 1).
# An input side n becomes s = ceil(n / 2) after the stem, ceil((s - 1) / 2) + 1 after the ceil-mode max-pool
# (3, 2, 1), and half that (rounded up) after layer2: 111 -> 56 -> 29 -> 15, while 110 -> 55 -> 28 -> 14.
MIN_INPUT_SIZE = 111

SPEC = ArchSpec(reference="lxtGH/GALD-DGCNet@be7ebfe libs/models/GALDNet.py::GALD_res101",
                paper="Li et al., Global Aggregation then Local Distribution in Fully Convolutional Networks, "
                      "BMVC 2019 (GALD-Net)",
                input=CAFFE_BGR, classifiers=("head.bottleneck.3", "aux_head.4"), layouts=(LXTGH, LXTGH_V2019),
                align_corners=True, head_stride=8, min_input_size=MIN_INPUT_SIZE,
                recipe=Recipe(0.01, 5e-4, loss="ohem", crop=769, batch_size=8, iterations=50_000,
                              scale_range=(0.7, 2.1), source="lxtGH/GALD-DGCNet train scripts (models.md §1)"))


def _galdnet(depth: int, num_classes: int) -> Segmentor:
    backbone = deep_stem_resnet(depth, multi_grid=(1, 2, 4))
    return Segmentor(backbone, GALDHead(2048, num_classes),
                     aux_head=AuxHead(1024, 512, num_classes, act="relu", dropout=0.1))


@register_model(SPEC)
def galdnet_r50(num_classes: int = 19) -> Segmentor:
    """GALD-Net, dilated ResNet-50 (deep stem, OS8, layer4 dilations 4/8/16). Inputs need H, W >= 111 px.

    The local-distribution branch shrinks the 1/8 map with three unpadded stride-2 convs, so the 1/8 map must be
    at least 15 px: 111 px is the smallest input side (110 gives 14 at 1/8). Smaller inputs raise InputError.
    No released Cityscapes weights.
    """
    return _galdnet(50, num_classes)


@register_model(SPEC)
def galdnet_r101(num_classes: int = 19) -> Segmentor:
    """GALD-Net, dilated ResNet-101 (deep stem, OS8, layer4 dilations 4/8/16). Inputs need H, W >= 111 px.

    The local-distribution branch shrinks the 1/8 map with three unpadded stride-2 convs, so the 1/8 map must be
    at least 15 px: 111 px is the smallest input side (110 gives 14 at 1/8). Smaller inputs raise InputError.
    No released Cityscapes weights.
    """
    return _galdnet(101, num_classes)
