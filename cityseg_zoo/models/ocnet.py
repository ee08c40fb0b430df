"""OCNet (Yuan & Wang, OCNet: Object Context Network for Scene Parsing, arXiv 1809.00916): Base-OC and ASP-OC.

As in openseg-group/OCNet.pytorch (models.md §6): dilated deep-stem ResNet (InPlaceABN, layer4 dilation 4/4/4)
-> conv3x3 (bias) -> ABN -> object context module -> classifier, with a layer3 auxiliary head. The reference
returns ``[aux, main]``; the zoo's output is the main prediction.
"""
from __future__ import annotations

import torch
from torch import nn

from ..data.normalization import OCNET_RGB
from ..hub.convert import Layout
from ..ops.norm import conv_bn_act
from ..ops.object_context import ASPOC, BaseOC
from ..registry import register_model
from ..segmentor import AuxHead, Segmentor
from ..specs import ArchSpec, Recipe
from .common import FLAT_STEM_RULES, deep_stem_resnet


class OCHead(nn.Module):
    """conv3x3 (bias) -> ABN -> object context module (Base-OC or ASP-OC) -> conv1x1 classifier."""

    def __init__(self, context_module: nn.Module, num_classes: int, in_ch: int = 2048, mid_ch: int = 512):
        super().__init__()
        self.context = nn.Sequential(*conv_bn_act(in_ch, mid_ch, 3, bias=True, act="abn"), context_module)
        self.cls = nn.Conv2d(mid_ch, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.cls(self.context(features[-1]))


OCNET = Layout(
    "ocnet",
    rules=FLAT_STEM_RULES + ((r"^context\.", "head.context."), (r"^cls\.", "head.cls."), (r"^dsn\.", "aux_head.")),
    # `f_query` is `f_key` in the reference, so its state dict holds every key-transform tensor twice.
    aliases=((r"^(.*)\.f_query\.", r"\1.f_key."),),
    description="openseg-group/OCNet.pytorch@679a45b network/resnet101_{base,asp}_oc.py (bare state dict)",
)

# ASP-OC max-pools the 1/8 map by 2 before attention, so that map needs sides >= 2: input sides >= 7.
ASP_OC_MIN_INPUT_SIZE = 7

_RECIPE = Recipe(0.01, 5e-4, crop=769, batch_size=8, iterations=40_000,
                 source="openseg-group/OCNet.pytorch (models.md §6); class-balanced CE in the original")
BASE_OC_SPEC = ArchSpec(reference="openseg-group/OCNet.pytorch@679a45b network/resnet101_base_oc.py",
                        paper="Yuan & Wang, OCNet: Object Context Network for Scene Parsing, arXiv 1809.00916 (2018)",
                        input=OCNET_RGB, classifiers=("head.cls", "aux_head.3"), layouts=(OCNET,), recipe=_RECIPE)
ASP_OC_SPEC = ArchSpec(reference="openseg-group/OCNet.pytorch@679a45b network/resnet101_asp_oc.py",
                       paper=BASE_OC_SPEC.paper, input=OCNET_RGB, classifiers=BASE_OC_SPEC.classifiers,
                       layouts=(OCNET,), min_input_size=ASP_OC_MIN_INPUT_SIZE, recipe=_RECIPE)


def _ocnet(depth: int, num_classes: int, variant: str) -> Segmentor:
    backbone = deep_stem_resnet(depth, inplace_abn=True)
    if variant == "base":
        context, dsn_dropout = BaseOC(512, 512, key_ch=256, value_ch=256, dropout=0.05), 0.05
    else:
        context, dsn_dropout = ASPOC(512, 256, dilations=(12, 24, 36)), 0.10
    aux = AuxHead(1024, 512, num_classes, act="abn", dropout=dsn_dropout)
    return Segmentor(backbone, OCHead(context, num_classes), aux_head=aux)


@register_model(BASE_OC_SPEC)
def ocnet_base_r50(num_classes: int = 19) -> Segmentor:
    """OCNet Base-OC, dilated ResNet-50 (deep stem, OS8, InPlaceABN). No released weights in OCNet.pytorch."""
    return _ocnet(50, num_classes, "base")


@register_model(BASE_OC_SPEC)
def ocnet_base_r101(num_classes: int = 19) -> Segmentor:
    """OCNet Base-OC, dilated ResNet-101 (deep stem, OS8, InPlaceABN). No released weights in OCNet.pytorch."""
    return _ocnet(101, num_classes, "base")


@register_model(ASP_OC_SPEC)
def ocnet_asp_r50(num_classes: int = 19) -> Segmentor:
    """OCNet ASP-OC, dilated ResNet-50 (deep stem, OS8, InPlaceABN); input sides >= 7 px. No released weights."""
    return _ocnet(50, num_classes, "asp")


@register_model(ASP_OC_SPEC)
def ocnet_asp_r101(num_classes: int = 19) -> Segmentor:
    """OCNet ASP-OC, dilated ResNet-101 (deep stem, OS8, InPlaceABN); input sides >= 7 px. No released weights."""
    return _ocnet(101, num_classes, "asp")
