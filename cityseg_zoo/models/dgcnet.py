"""DGCNet: Dual Graph Convolutional Network (lxtGH/GALD-DGCNet ``DualGCNNet.py``, models.md §2)."""
from __future__ import annotations

import torch
from torch import nn

from ..data.normalization import IMAGENET_RGB
from ..hub.convert import Layout
from ..ops.gcn import DualGCN
from ..ops.norm import conv_bn_act
from ..registry import register_model
from ..segmentor import AuxHead, Segmentor
from ..specs import ArchSpec, Recipe
from .common import SEQUENTIAL_STEM_RULES, deep_stem_resnet


class DualGCNHead(nn.Module):
    """conva -> DualGCN (coordinate- and feature-space graphs) -> convb; bottleneck over ``cat[layer4, convb]``."""

    def __init__(self, in_ch: int, num_classes: int, mid_ch: int = 512, align_corners: bool = True):
        super().__init__()
        self.conva = conv_bn_act(in_ch, mid_ch, 3)
        self.dualgcn = DualGCN(mid_ch, ratio=4, align_corners=align_corners)
        self.convb = conv_bn_act(mid_ch, mid_ch, 3)
        # conv3x3 -> BN -> ReLU -> conv1x1: keys 0, 1, 3 as the reference (no dropout in the main head).
        self.bottleneck = nn.Sequential(*conv_bn_act(in_ch + mid_ch, mid_ch, 3),
                                        nn.Conv2d(mid_ch, num_classes, 1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        context = self.convb(self.dualgcn(self.conva(x)))
        return self.bottleneck(torch.cat([x, context], dim=1))


LXTGH = Layout(
    "lxtgh",
    rules=SEQUENTIAL_STEM_RULES + ((r"^head\.", "head."), (r"^dsn\.", "aux_head.")),
    description="lxtGH/GALD-DGCNet@be7ebfe libs/models/DualGCNNet.py (released r50/r101 weights), bare state dict",
)

SPEC = ArchSpec(reference="lxtGH/GALD-DGCNet@be7ebfe libs/models/DualGCNNet.py::DualSeg_res101",
                paper="Zhang et al., Dual Graph Convolutional Network for Semantic Segmentation, BMVC 2019 (DGCNet)",
                input=IMAGENET_RGB, classifiers=("head.bottleneck.3", "aux_head.3"), layouts=(LXTGH,),
                align_corners=True, head_stride=8,
                recipe=Recipe(0.01, 5e-4, loss="ohem", crop=832, batch_size=8, iterations=60_000,
                              source="lxtGH/GALD-DGCNet exp/train_dualseg_r_101_city_finetrain.sh (models.md §2); "
                                     "r50: 50k"))


def _dgcnet(depth: int, num_classes: int) -> Segmentor:
    backbone = deep_stem_resnet(depth, multi_grid=(1, 2, 4))
    # The reference dsn has no ReLU: conv3x3 (bias) -> BN -> Dropout2d -> conv1x1 (keys 0, 1, 3).
    return Segmentor(backbone, DualGCNHead(2048, num_classes),
                     aux_head=AuxHead(1024, 512, num_classes, act="none", dropout=0.1))


@register_model(SPEC)
def dgcnet_r50(num_classes: int = 19) -> Segmentor:
    """DGCNet (Dual-GCN), dilated ResNet-50 (deep stem, OS8, layer4 dilations 4/8/16); Cityscapes weights released."""
    return _dgcnet(50, num_classes)


@register_model(SPEC)
def dgcnet_r101(num_classes: int = 19) -> Segmentor:
    """DGCNet (Dual-GCN), dilated ResNet-101 (deep stem, OS8, layer4 dilations 4/8/16); Cityscapes weights released."""
    return _dgcnet(101, num_classes)
