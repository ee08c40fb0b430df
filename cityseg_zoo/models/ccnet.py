"""CCNet: Criss-Cross Network (speedinghzl/CCNet@7a76bff ``networks/ccnet.py::Res_Deeplab``, models.md §5)."""
from __future__ import annotations

import torch
from torch import nn

from ..data.normalization import CAFFE_BGR
from ..hub.convert import Layout
from ..ops.criss_cross import CrissCrossAttention
from ..ops.norm import conv_bn_act
from ..registry import register_model
from ..segmentor import AuxHead, Segmentor
from ..specs import ArchSpec, Recipe
from .common import FLAT_STEM_RULES, deep_stem_resnet


class RCCAModule(nn.Module):
    """Recurrent criss-cross attention: conva -> CCA applied ``recurrence`` times (shared weights) -> convb,
    then the bottleneck classifier over ``cat[layer4, convb]``. Every norm is InPlaceABN + LeakyReLU(0.01).

    ``recurrence`` (R) is not stored in the weights: the released models use R = 2 (and one R = 1).
    """

    def __init__(self, in_ch: int, num_classes: int, mid_ch: int = 512, recurrence: int = 2):
        super().__init__()
        self.recurrence = recurrence
        self.conva = conv_bn_act(in_ch, mid_ch, 3, act="abn")
        self.cca = CrissCrossAttention(mid_ch)
        self.convb = conv_bn_act(mid_ch, mid_ch, 3, act="abn")
        # conv3x3 -> ABN -> Dropout2d(0.1) -> conv1x1: keys 0, 1, 3 as the reference.
        self.bottleneck = nn.Sequential(*conv_bn_act(in_ch + mid_ch, mid_ch, 3, act="abn"),
                                        nn.Dropout2d(0.1), nn.Conv2d(mid_ch, num_classes, 1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        context = self.conva(x)
        for _ in range(self.recurrence):   # R loops give every pixel a path to every other pixel (R >= 2)
            context = self.cca(context)
        context = self.convb(context)
        return self.bottleneck(torch.cat([x, context], dim=1))


CCNET = Layout(
    "ccnet",
    rules=FLAT_STEM_RULES + ((r"^head\.", "head."), (r"^dsn\.", "aux_head.")),
    description="speedinghzl/CCNet@7a76bff networks/ccnet.py::Res_Deeplab, flat stem, InPlaceABN (bare state dict)",
)

SPEC = ArchSpec(reference="speedinghzl/CCNet@7a76bff networks/ccnet.py::Res_Deeplab",
                paper="Huang et al., CCNet: Criss-Cross Attention for Semantic Segmentation, ICCV 2019",
                input=CAFFE_BGR, classifiers=("head.bottleneck.3", "aux_head.3"), layouts=(CCNET,),
                align_corners=True, head_stride=8,
                recipe=Recipe(0.01, 1e-4, loss="ohem", crop=769, batch_size=8, iterations=60_000,
                              source="speedinghzl/CCNet run_local.sh (models.md §5); CE for the R=1/R=2 weights, "
                                     "OHEM for R=2+OHEM"))


def _ccnet(depth: int, num_classes: int, recurrence: int = 2) -> Segmentor:
    if not isinstance(recurrence, int) or recurrence < 1:
        raise ValueError(f"recurrence must be a positive int, got {recurrence!r}")
    backbone = deep_stem_resnet(depth, inplace_abn=True)
    return Segmentor(backbone, RCCAModule(2048, num_classes, recurrence=recurrence),
                     aux_head=AuxHead(1024, 512, num_classes, act="abn", dropout=0.1))


@register_model(SPEC)
def ccnet_r50(num_classes: int = 19, recurrence: int = 2) -> Segmentor:
    """CCNet, dilated ResNet-50 (deep stem, OS8, InPlaceABN), criss-cross attention applied ``recurrence`` times.

    ``recurrence`` (R, default 2) is a property of the forward, not of the weights; it is kept as
    ``model.head.recurrence``. No released Cityscapes weights.
    """
    return _ccnet(50, num_classes, recurrence)


@register_model(SPEC)
def ccnet_r101(num_classes: int = 19, recurrence: int = 2) -> Segmentor:
    """CCNet, dilated ResNet-101 (deep stem, OS8, InPlaceABN), criss-cross attention applied ``recurrence`` times.

    ``recurrence`` (R, default 2) is a property of the forward, not of the weights; it is kept as
    ``model.head.recurrence``. The released models use R = 2 (``ccnet_r101_cityscapes``, ``..._ohem_...``) and
    R = 1 (``ccnet_r101_r1_cityscapes``); the manifest passes the right R.
    """
    return _ccnet(101, num_classes, recurrence)
