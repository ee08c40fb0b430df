"""GFF-Net: Gated Fully Fusion for Semantic Segmentation (Li et al., AAAI 2020, arXiv 1904.01803; models.md §3).

Pipeline (paper, Fig. 3): a backbone gives a pyramid of features with a context module on top; every level is
fused with every other through gates (GFF, :mod:`cityseg_zoo.ops.gated_fusion`); a dense feature pyramid (DFP)
then runs top-down over the fused levels, and a classifier reads the concatenation.

Two architectures live here:

* ``gffnet_wrn38`` — the only released implementation and checkpoint (lxtGH/DecoupleSegNets
  ``DeepWV3PlusGFFNet``): WideResNet-38 trunk, DeepLabv3+-style ASPP as the context module, GFF over
  [mod2, mod5, ASPP], DFP, classifier at stride 2.
* ``gffnet_r50`` / ``gffnet_r101`` — the paper's ResNet + PPM design, rebuilt here from the paper alone.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from ..backbones.wider_resnet import wider_resnet38_a2
from ..data.normalization import IMAGENET_RGB
from ..hub.convert import Layout
from ..ops.aspp import ASPP
from ..ops.gated_fusion import DenseFeaturePyramid, GatedFullyFusion
from ..ops.norm import conv_bn_act
from ..ops.ppm import PyramidPooling
from ..ops.resize import resize
from ..registry import register_model
from ..segmentor import AuxHead, Segmentor
from ..specs import ArchSpec
from .common import deep_stem_resnet
from .deeplabv3plus import NVIDIA_ASPP_RULES, decoder_convs


class GFFHead(nn.Module):
    """Context module on the top feature -> gated fully fusion -> dense feature pyramid -> classifier.

    Args:
        context: module turning the last backbone feature into the top pyramid level (``context_ch`` channels).
        level_indices: backbone features that join the pyramid below the context level, finest first.
        level_channels: their channel counts.
        channels: width of every reduced level and DFP block (128 in the released head).
        dilations: of the DFP blocks, top-down (one per level, the context level included).
    The output has the size of the finest level.
    """

    def __init__(self, context: nn.Module, context_ch: int, level_indices: Sequence[int],
                 level_channels: Sequence[int], num_classes: int, channels: int = 128,
                 dilations: Sequence[int] = (3, 6, 9)):
        super().__init__()
        if len(dilations) != len(level_indices) + 1:
            raise ValueError(f"need {len(level_indices) + 1} DFP dilations, got {dilations}")
        self.level_indices = tuple(level_indices)
        self.context = context
        self.gff = GatedFullyFusion([*level_channels, context_ch], channels)
        self.dfp = DenseFeaturePyramid(channels, dilations)
        self.cls = decoder_convs((len(dilations) + 1) * channels, num_classes)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        levels = [features[i] for i in self.level_indices] + [self.context(features[-1])]
        fused, reduced = self.gff(levels)
        size = levels[0].shape[-2:]
        pyramid = self.dfp([resize(x, size, align_corners=True) for x in reversed(fused)])  # top-down
        # The released head also concatenates the *un-fused* reduced context, second in order.
        context = resize(reduced[-1], size, align_corners=True)
        return self.cls(torch.cat([pyramid[0], context, *pyramid[1:]], dim=1))


def _aspp_context(in_ch: int) -> nn.Sequential:
    """NVIDIA ASPP [pool, 1x1, d12, d24, d36] -> ``bot_aspp`` conv3x3 (1280 -> 256, no bias, no BN/ReLU)."""
    aspp = ASPP(in_ch, 256, dilations=(12, 24, 36), act="relu")
    return nn.Sequential(OrderedDict([
        ("aspp", aspp), ("bot_aspp", nn.Conv2d(aspp.out_channels, 256, 3, padding=1, bias=False))]))


def _ppm_context(in_ch: int, out_ch: int = 512) -> nn.Sequential:
    """PSPNet's pyramid pooling (lxtGH PSPModule: stages without activation) -> conv3x3-BN-ReLU."""
    ppm = PyramidPooling(in_ch, out_ch, sizes=(1, 2, 3, 6), act="none")
    return nn.Sequential(OrderedDict([("ppm", ppm), ("bottleneck", conv_bn_act(ppm.out_channels, out_ch, 3))]))


_GFF_LEVEL_RULES = tuple(
    (rf"^gff_head\.{ref}{k + 1}\.", f"head.gff.{zoo}.{k}.")
    for ref, zoo in (("gate", "gates"), ("d_in", "reduce")) for k in range(3)
) + tuple((rf"^gff_head\.dense_{d}\.", f"head.dfp.{k}.") for k, d in enumerate((3, 6, 9)))

DECOUPLESEGNETS_GFF = Layout(
    "decouplesegnets",
    rules=((r"^(mod[1-7])\.", r"backbone.\1."),)
    + tuple((p, r.replace("head.aspp.", "head.context.aspp.")) for p, r in NVIDIA_ASPP_RULES)
    + ((r"^bot_aspp\.", "head.context.bot_aspp."),)
    + _GFF_LEVEL_RULES
    + ((r"^gff_head\.cls\.", "head.cls."),),
    description="lxtGH/DecoupleSegNets@bedb8e5 network/gffnets.py::DeepWV3PlusGFFNet (NVIDIA container, "
                "module. prefix)",
)

_PAPER = "Li et al., Gated Fully Fusion for Semantic Segmentation, AAAI 2020 (arXiv 1904.01803)"

WRN38_SPEC = ArchSpec(reference="lxtGH/DecoupleSegNets@bedb8e5 network/gffnets.py::DeepWV3PlusGFFNet",
                      paper=_PAPER, input=IMAGENET_RGB, classifiers=("head.cls.6",),
                      layouts=(DECOUPLESEGNETS_GFF,), head_stride=2)

# No layouts: nothing was released to be compatible with.
RESNET_SPEC = ArchSpec(reference="none: rebuilt from the paper (arXiv 1904.01803); no reference code or weights "
                                 "were released for the ResNet GFF-Net",
                       paper=_PAPER, input=IMAGENET_RGB, classifiers=("head.cls.6", "aux_head.4"), head_stride=4)


def _gffnet_wrn38(num_classes: int) -> Segmentor:
    head = GFFHead(_aspp_context(4096), 256, level_indices=(0, 2), level_channels=(128, 1024),
                   num_classes=num_classes, channels=128, dilations=(3, 6, 9))
    return Segmentor(wider_resnet38_a2(), head, aux_head=None)


@register_model(WRN38_SPEC)
def gffnet_wrn38(num_classes: int = 19) -> Segmentor:
    """GFF-Net, WideResNet-38 (OS8) + ASPP + GFF + DFP: the released DecoupleSegNets model ("GFFNet_Best").

    GFF fuses m2 (mod2, 128 ch, stride 2), m5 (mod5, 1024 ch, stride 8) and the ASPP output (256 ch), each gated
    and reduced to 128 channels; the classifier runs at stride 2. No auxiliary head. ``pretrained_backbone=True``
    is refused (timm has no WiderResNet-38 ImageNet weights).
    """
    return _gffnet_wrn38(num_classes)


def _gffnet_resnet(depth: int, num_classes: int) -> Segmentor:
    backbone = deep_stem_resnet(depth)
    head = GFFHead(_ppm_context(2048), 512, level_indices=(0, 1, 2), level_channels=(256, 512, 1024),
                   num_classes=num_classes, channels=128, dilations=(3, 6, 9, 12))
    return Segmentor(backbone, head, aux_head=AuxHead(1024, 512, num_classes, act="relu"))


_RESNET_DOC = """

    **No reference code and no weights exist for this model**: the authors published only the WideResNet-38
    variant (``gffnet_wrn38``). This is a re-design from the paper's description (dilated ResNet + PPM on top +
    gated fully fusion over the multi-level features + dense feature pyramid); it is not checkpoint-compatible
    with anything and has no key layout. Choices made here, and why:

    * backbone: the lxtGH deep-stem dilated ResNet (models.md §0.1: 64-64-128 stem, ceil-mode pool, layer3
      dilation 2, layer4 dilation 4, output stride 8), the one the authors' other Cityscapes models use; plain BN.
    * pyramid: layer1 (stride 4), layer2, layer3 and the PPM context on layer4 (all stride 8). PPM = lxtGH
      PSPModule stages (pool 1/2/3/6 -> conv1x1 -> BN) + conv3x3(4096 -> 512)-BN-ReLU, without PSPNet's dropout
      since its output is a feature, not a classifier input.
    * GFF: the same op and the same sequential update as the released head (gates on the raw inputs, reductions
      to 128 channels, bilinear align_corners=True), applied finest level first.
    * DFP: the released head's top-down dense blocks (width 128), one more level, dilations 3/6/9/12; the
      classifier reads [D_context, un-fused context, D_3, D_2, D_1] at stride 4 (the released concat order).
    * classifier: the released conv3x3-BN-ReLU x2 -> conv1x1 without bias; aux head on layer3 as in the lxtGH
      repos (conv3x3 1024 -> 512 with bias, BN, ReLU, Dropout2d(0.1), conv1x1), loss weight 0.4.
    """


@register_model(RESNET_SPEC)
def gffnet_r50(num_classes: int = 19) -> Segmentor:
    return _gffnet_resnet(50, num_classes)


@register_model(RESNET_SPEC)
def gffnet_r101(num_classes: int = 19) -> Segmentor:
    return _gffnet_resnet(101, num_classes)


gffnet_r50.__doc__ = "GFF-Net, dilated ResNet-50 + PPM + GFF + DFP, built from the paper (no code, no weights)." \
    + _RESNET_DOC
gffnet_r101.__doc__ = "GFF-Net, dilated ResNet-101 + PPM + GFF + DFP, built from the paper (no code, no weights)." \
    + _RESNET_DOC
