"""mmsegmentation's Cityscapes models: FCN, PSPNet, DeepLabv3, DeepLabv3+, DANet and CCNet on R-x-D8.

A second weight family (README "Contracts", peers.md §1.3), built as mmsegmentation 1.x builds the
``<method>_r{50,101}-d8_4xb2-80k_cityscapes-512x1024`` configs:

* backbone ``ResNetV1c`` (deep stem 32-32-64, no avg-down), ``strides=(1, 2, 1, 1)``, ``dilations=(1, 1, 2, 4)``,
  ``contract_dilation=True``: timm ``resnet50c``/``resnet101c`` at output stride 8 (layer3 dilations 1, 2, 2, ...,
  layer4 2, 4, 4; max-pool ``ceil_mode=False``). Only the six stem keys are renamed.
* every ``ConvModule`` is conv (no bias) -> BatchNorm (SyncBN at training time) -> ReLU;
* every head ends with ``Dropout2d(0.1)`` -> ``conv_seg`` (1x1, bias), and resizes with ``align_corners=False``;
* auxiliary ``FCNHead`` on layer3: one 3x3 ConvModule 1024 -> 256, no concat, loss weight 0.4.

Module and parameter names follow mmseg (``convs``, ``conv_cat``, ``psp_modules``, ``bottleneck``, ``pam``,
``cca``...), so an mmseg state dict maps onto the zoo by prefix only (``decode_head.`` -> ``head.``,
``auxiliary_head.`` -> ``aux_head.``); DeepLabv3 reuses :class:`~cityseg_zoo.ops.ASPP` and renames its keys.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.resnet import dilated_resnet
from ..data.normalization import MMSEG_RGB
from ..hub.convert import Layout
from ..ops.aspp import ASPP
from ..ops.attention import channel_attention, position_attention
from ..ops.criss_cross import criss_cross_attention
from ..ops.resize import resize
from ..registry import register_model
from ..segmentor import Segmentor
from ..specs import ArchSpec

ALIGN_CORNERS = False  # every mmseg 512x1024 Cityscapes config


# ----------------------------------------------------------------------------------------------- building blocks

class ConvModule(nn.Module):
    """mmcv ``ConvModule`` with a norm: conv (no bias, "same" padding) -> BatchNorm -> ReLU (keys ``conv``, ``bn``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, dilation: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class DepthwiseSeparableConvModule(nn.Module):
    """mmcv ``DepthwiseSeparableConvModule``: depthwise 3x3 ConvModule, then pointwise 1x1 ConvModule.

    Both carry BN + ReLU (mmcv's ``dw_norm_cfg``/``dw_act_cfg`` default to the module's own).
    """

    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1):
        super().__init__()
        self.depthwise_conv = ConvModule(in_ch, in_ch, 3, dilation=dilation, groups=in_ch)
        self.pointwise_conv = ConvModule(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class Scale(nn.Module):
    """mmcv ``Scale``: ``x * scale`` with a 0-d learnable ``scale`` (mmseg initialises it to 0)."""

    def __init__(self, init: float = 0.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class DecodeHead(nn.Module):
    """mmseg ``BaseDecodeHead``: picks ``features[in_index]``; ``cls_seg`` = Dropout2d(0.1) -> conv_seg 1x1."""

    def __init__(self, channels: int, num_classes: int, in_index: int = 3, dropout: float = 0.1):
        super().__init__()
        self.in_index = in_index
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def _transform_inputs(self, inputs: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        # Segmentor hands the auxiliary head its single feature map, the decode head the whole list.
        return inputs if isinstance(inputs, torch.Tensor) else inputs[self.in_index]

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(feat))


# ----------------------------------------------------------------------------------------------- decode heads

class FCNHead(DecodeHead):
    """``num_convs`` 3x3 ConvModules; with ``concat_input``, ``conv_cat`` on ``cat([x, convs(x)])``.

    Decode head: ``FCNHead(2048, 512, num_convs=2, concat_input=True)``; aux head:
    ``FCNHead(1024, 256, num_convs=1, concat_input=False, in_index=2)``.
    """

    def __init__(self, in_ch: int, channels: int, num_classes: int, num_convs: int = 2, concat_input: bool = True,
                 in_index: int = 3):
        super().__init__(channels, num_classes, in_index)
        self.convs = nn.Sequential(ConvModule(in_ch, channels, 3),
                                   *[ConvModule(channels, channels, 3) for _ in range(num_convs - 1)])
        self.conv_cat = ConvModule(in_ch + channels, channels, 3) if concat_input else None

    def forward(self, inputs) -> torch.Tensor:
        x = self._transform_inputs(inputs)
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.cls_seg(out)


class PSPHead(DecodeHead):
    """``bottleneck(cat([x] + [up(ConvModule1x1(pool_s(x))) for s in (1, 2, 3, 6)]))``.

    Differs from :class:`~cityseg_zoo.ops.PyramidPooling` (input first in the concat, ReLU in each stage),
    hence its own module here.
    """

    def __init__(self, in_ch: int, channels: int, num_classes: int, pool_scales=(1, 2, 3, 6)):
        super().__init__(channels, num_classes)
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_ch, channels, 1)) for s in pool_scales)
        self.bottleneck = ConvModule(in_ch + len(pool_scales) * channels, channels, 3)

    def forward(self, inputs) -> torch.Tensor:
        x = self._transform_inputs(inputs)
        pooled = [resize(stage(x), x.shape[-2:], ALIGN_CORNERS) for stage in self.psp_modules]
        return self.cls_seg(self.bottleneck(torch.cat([x] + pooled, dim=1)))


class ASPPHead(DecodeHead):
    """DeepLabv3: ASPP [image pool, 1x1, d12, d24, d36] (BN + ReLU branches) -> ``bottleneck`` 3x3 ConvModule.

    The ASPP is the zoo's :class:`~cityseg_zoo.ops.ASPP` (same maths and order as mmseg's ``image_pool`` +
    ``aspp_modules``); :data:`_ASPP_RULES` renames mmseg's keys onto it.
    """

    def __init__(self, in_ch: int, channels: int, num_classes: int, dilations=(12, 24, 36)):
        super().__init__(channels, num_classes)
        self.aspp = ASPP(in_ch, channels, dilations, act="relu", align_corners=ALIGN_CORNERS)
        self.bottleneck = ConvModule(self.aspp.out_channels, channels, 3)

    def forward(self, inputs) -> torch.Tensor:
        return self.cls_seg(self.bottleneck(self.aspp(self._transform_inputs(inputs))))


class DepthwiseSeparableASPPHead(DecodeHead):
    """DeepLabv3+: ASPP whose dilated branches are depthwise separable, then the layer1 decoder.

    ``bottleneck`` (plain 3x3 ConvModule 2560 -> 512) on the ASPP concat; upsampled to layer1's size; concat with
    ``c1_bottleneck`` (1x1 256 -> 48) of layer1; ``sep_bottleneck`` = two depthwise-separable 3x3 modules.
    """

    def __init__(self, in_ch: int, channels: int, num_classes: int, c1_in_ch: int = 256, c1_ch: int = 48,
                 dilations=(1, 12, 24, 36)):
        super().__init__(channels, num_classes)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(in_ch, channels, 1))
        self.aspp_modules = nn.ModuleList(
            ConvModule(in_ch, channels, 1) if d == 1 else DepthwiseSeparableConvModule(in_ch, channels, d)
            for d in dilations)
        self.bottleneck = ConvModule((len(dilations) + 1) * channels, channels, 3)
        self.c1_bottleneck = ConvModule(c1_in_ch, c1_ch, 1)
        self.sep_bottleneck = nn.Sequential(DepthwiseSeparableConvModule(channels + c1_ch, channels),
                                            DepthwiseSeparableConvModule(channels, channels))

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x = self._transform_inputs(inputs)
        aspp = [resize(self.image_pool(x), x.shape[-2:], ALIGN_CORNERS)] + [m(x) for m in self.aspp_modules]
        out = self.bottleneck(torch.cat(aspp, dim=1))
        c1 = self.c1_bottleneck(inputs[0])
        out = torch.cat([resize(out, c1.shape[-2:], ALIGN_CORNERS), c1], dim=1)
        return self.cls_seg(self.sep_bottleneck(out))


class PAM(nn.Module):
    """mmseg DANet position attention: its ``SelfAttentionBlock`` with plain 1x1 convs and a ``Scale`` gamma.

    ``query_project``/``key_project`` (C -> 64, bias, no norm), ``value_project`` (C -> C), no out projection,
    no 1/sqrt(d) scaling, softmax over keys: exactly :func:`~cityseg_zoo.ops.attention.position_attention`, which
    is reused; only the names and the 64 (``pam_channels``, not C // 8) differ from the paper's PAM.
    """

    def __init__(self, in_ch: int, channels: int = 64):
        super().__init__()
        self.key_project = nn.Conv2d(in_ch, channels, 1)
        self.query_project = nn.Conv2d(in_ch, channels, 1)
        self.value_project = nn.Conv2d(in_ch, in_ch, 1)
        self.gamma = Scale(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query_project(x).flatten(2)
        k = self.key_project(x).flatten(2)
        v = self.value_project(x).flatten(2)
        return self.gamma(position_attention(q, k, v).view(b, c, h, w)) + x


class CAM(nn.Module):
    """mmseg DANet channel attention: ``gamma * softmax(rowmax(E) - E) X + x`` (the zoo's ``channel_attention``)."""

    def __init__(self):
        super().__init__()
        self.gamma = Scale(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma(channel_attention(x)) + x


class DAHead(DecodeHead):
    """DANet: PAM and CAM branches (in-conv 3x3 -> attention -> out-conv 3x3); logits = ``conv_seg(pam + cam)``.

    Train mode also returns ``"pam"``/``"cam"``, each branch through its own ``*_conv_seg`` (loss weight 1.0).
    """

    def __init__(self, in_ch: int, channels: int, num_classes: int, pam_channels: int = 64):
        super().__init__(channels, num_classes)
        self.pam_in_conv = ConvModule(in_ch, channels, 3)
        self.pam = PAM(channels, pam_channels)
        self.pam_out_conv = ConvModule(channels, channels, 3)
        self.pam_conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.cam_in_conv = ConvModule(in_ch, channels, 3)
        self.cam = CAM()
        self.cam_out_conv = ConvModule(channels, channels, 3)
        self.cam_conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, inputs) -> torch.Tensor | dict[str, torch.Tensor]:
        x = self._transform_inputs(inputs)
        pam_feat = self.pam_out_conv(self.pam(self.pam_in_conv(x)))
        cam_feat = self.cam_out_conv(self.cam(self.cam_in_conv(x)))
        out = self.cls_seg(pam_feat + cam_feat)
        if not self.training:
            return out
        return {"out": out, "pam": self.pam_conv_seg(self.dropout(pam_feat)),
                "cam": self.cam_conv_seg(self.dropout(cam_feat))}


class CrissCrossAttention(nn.Module):
    """mmcv ``CrissCrossAttention`` (pure PyTorch since mmcv 1.3.13): ``gamma * cca(q, k, v) + x``.

    Its einsums with ``-inf`` on the column branch's diagonal and one softmax over H + W compute
    :func:`~cityseg_zoo.ops.criss_cross.criss_cross_attention`, reused here; ``gamma`` is a 0-d ``Scale``.
    """

    def __init__(self, in_ch: int):
        super().__init__()
        self.query_conv = nn.Conv2d(in_ch, in_ch // 8, 1)
        self.key_conv = nn.Conv2d(in_ch, in_ch // 8, 1)
        self.value_conv = nn.Conv2d(in_ch, in_ch, 1)
        self.gamma = Scale(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma(criss_cross_attention(self.query_conv(x), self.key_conv(x), self.value_conv(x))) + x


class CCHead(FCNHead):
    """CCNet: ``FCNHead(num_convs=2, concat_input=True)`` with ``recurrence`` criss-cross passes after convs[0]."""

    def __init__(self, in_ch: int, channels: int, num_classes: int, recurrence: int = 2):
        super().__init__(in_ch, channels, num_classes, num_convs=2, concat_input=True)
        self.recurrence = recurrence
        self.cca = CrissCrossAttention(channels)

    def forward(self, inputs) -> torch.Tensor:
        x = self._transform_inputs(inputs)
        out = self.convs[0](x)
        for _ in range(self.recurrence):
            out = self.cca(out)
        out = self.convs[1](out)
        out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.cls_seg(out)


# ----------------------------------------------------------------------------------------------- checkpoint layout

# ResNetV1c stem (conv-bn-relu x3) -> timm's deep stem `conv1` Sequential + `bn1` (peers.md §1.3, verified there).
_STEM_RULES = (
    (r"^backbone\.stem\.0\.", "backbone.conv1.0."), (r"^backbone\.stem\.1\.", "backbone.conv1.1."),
    (r"^backbone\.stem\.3\.", "backbone.conv1.3."), (r"^backbone\.stem\.4\.", "backbone.conv1.4."),
    (r"^backbone\.stem\.6\.", "backbone.conv1.6."), (r"^backbone\.stem\.7\.", "backbone.bn1."),
    (r"^backbone\.(layer[1-4])\.", r"backbone.\1."),
)
_HEAD_RULES = ((r"^decode_head\.", "head."), (r"^auxiliary_head\.", "aux_head."))
# mmseg ASPPHead `image_pool.1` / `aspp_modules.i` ConvModules -> ops.ASPP's conv_bn_act Sequentials.
_ASPP_RULES = (
    (r"^decode_head\.image_pool\.1\.conv\.", "head.aspp.image_pool.1."),
    (r"^decode_head\.image_pool\.1\.bn\.", "head.aspp.image_pool.2."),
    (r"^decode_head\.aspp_modules\.(\d+)\.conv\.", r"head.aspp.branches.\1.0."),
    (r"^decode_head\.aspp_modules\.(\d+)\.bn\.", r"head.aspp.branches.\1.1."),
)


def mmseg_layout(head_rules: tuple = ()) -> Layout:
    """The "mmseg" layout: ``{'meta', 'state_dict'}`` checkpoints with ``backbone.``/``decode_head.``/
    ``auxiliary_head.`` keys (the container is unwrapped by ``hub.checkpoint``)."""
    return Layout(
        "mmseg",
        rules=_STEM_RULES + head_rules + _HEAD_RULES,
        # Not read in eval mode (BatchNorm momentum is set); tolerated in case a converted/stripped file lacks it.
        optional=(r"num_batches_tracked$",),
        description="open-mmlab/mmsegmentation 1.x EncoderDecoder (ResNetV1c backbone, decode + auxiliary head)",
    )


MMSEG = mmseg_layout()
MMSEG_ASPP = mmseg_layout(_ASPP_RULES)


# ----------------------------------------------------------------------------------------------- models

_LAYER3_BLOCKS = {50: 6, 101: 23}
_PAPERS = {
    "fcn": "Long et al., Fully Convolutional Networks for Semantic Segmentation, CVPR 2015",
    "pspnet": "Zhao et al., Pyramid Scene Parsing Network, CVPR 2017",
    "deeplabv3": "Chen et al., Rethinking Atrous Convolution for Semantic Image Segmentation, arXiv 1706.05587",
    "deeplabv3plus": "Chen et al., Encoder-Decoder with Atrous Separable Convolution for Semantic Image "
                     "Segmentation, ECCV 2018",
    "danet": "Fu et al., Dual Attention Network for Scene Segmentation, CVPR 2019",
    "ccnet": "Huang et al., CCNet: Criss-Cross Attention for Semantic Segmentation, ICCV 2019",
}
_HEAD_FILES = {"fcn": "fcn_head.py", "pspnet": "psp_head.py", "deeplabv3": "aspp_head.py",
               "deeplabv3plus": "sep_aspp_head.py", "danet": "da_head.py", "ccnet": "cc_head.py"}


def _spec(method: str, layout: Layout = MMSEG, classifiers: tuple[str, ...] = ()) -> ArchSpec:
    return ArchSpec(
        reference=(f"open-mmlab/mmsegmentation 1.x configs/{method}/{method}_r{{50,101}}-d8_4xb2-80k_cityscapes-"
                   f"512x1024.py; mmseg/models/decode_heads/{_HEAD_FILES[method]}"),
        paper=f"{_PAPERS[method]} (mmsegmentation implementation)", input=MMSEG_RGB,
        classifiers=("head.conv_seg", *classifiers, "aux_head.conv_seg"), layouts=(layout,),
        align_corners=ALIGN_CORNERS, head_stride=8, family="mmseg")


def resnet_v1c(depth: int):
    """mmseg ``ResNetV1c`` D8 = timm ``resnet{depth}c`` at OS8 with contracted dilations, floor-mode max-pool."""
    layer3 = [1] + [2] * (_LAYER3_BLOCKS[depth] - 1)
    return dilated_resnet(f"resnet{depth}c", layer3_dilations=layer3, layer4_dilations=(2, 4, 4),
                          ceil_mode_pool=False)


def _mmseg(depth: int, head: nn.Module, num_classes: int) -> Segmentor:
    aux = FCNHead(1024, 256, num_classes, num_convs=1, concat_input=False, in_index=2)
    return Segmentor(resnet_v1c(depth), head, aux_head=aux, aux_index=2)


@register_model(_spec("fcn"))
def mmseg_fcn_r50(num_classes: int = 19) -> Segmentor:
    """FCN (mmseg FCNHead, 2 convs + concat), ResNetV1c-50-D8; weights: mmseg 512x1024 80k Cityscapes."""
    return _mmseg(50, FCNHead(2048, 512, num_classes), num_classes)


@register_model(_spec("fcn"))
def mmseg_fcn_r101(num_classes: int = 19) -> Segmentor:
    """FCN (mmseg FCNHead, 2 convs + concat), ResNetV1c-101-D8; weights: mmseg 512x1024 80k Cityscapes."""
    return _mmseg(101, FCNHead(2048, 512, num_classes), num_classes)


@register_model(_spec("pspnet"))
def mmseg_pspnet_r50(num_classes: int = 19) -> Segmentor:
    """PSPNet (mmseg PSPHead, pool scales 1/2/3/6), ResNetV1c-50-D8; weights: mmseg 512x1024 80k Cityscapes."""
    return _mmseg(50, PSPHead(2048, 512, num_classes), num_classes)


@register_model(_spec("pspnet"))
def mmseg_pspnet_r101(num_classes: int = 19) -> Segmentor:
    """PSPNet (mmseg PSPHead, pool scales 1/2/3/6), ResNetV1c-101-D8; weights: mmseg 512x1024 80k Cityscapes."""
    return _mmseg(101, PSPHead(2048, 512, num_classes), num_classes)


@register_model(_spec("deeplabv3", MMSEG_ASPP))
def mmseg_deeplabv3_r50(num_classes: int = 19) -> Segmentor:
    """DeepLabv3 (mmseg ASPPHead, dilations 12/24/36), ResNetV1c-50-D8; weights: mmseg 512x1024 80k Cityscapes."""
    return _mmseg(50, ASPPHead(2048, 512, num_classes), num_classes)


@register_model(_spec("deeplabv3", MMSEG_ASPP))
def mmseg_deeplabv3_r101(num_classes: int = 19) -> Segmentor:
    """DeepLabv3 (mmseg ASPPHead, dilations 12/24/36), ResNetV1c-101-D8; weights: mmseg 512x1024 80k Cityscapes."""
    return _mmseg(101, ASPPHead(2048, 512, num_classes), num_classes)


@register_model(_spec("deeplabv3plus"))
def mmseg_deeplabv3plus_r50(num_classes: int = 19) -> Segmentor:
    """DeepLabv3+ (mmseg DepthwiseSeparableASPPHead, layer1 decoder), ResNetV1c-50-D8; mmseg 512x1024 80k."""
    return _mmseg(50, DepthwiseSeparableASPPHead(2048, 512, num_classes), num_classes)


@register_model(_spec("deeplabv3plus"))
def mmseg_deeplabv3plus_r101(num_classes: int = 19) -> Segmentor:
    """DeepLabv3+ (mmseg DepthwiseSeparableASPPHead, layer1 decoder), ResNetV1c-101-D8; mmseg 512x1024 80k."""
    return _mmseg(101, DepthwiseSeparableASPPHead(2048, 512, num_classes), num_classes)


@register_model(_spec("danet", classifiers=("head.pam_conv_seg", "head.cam_conv_seg")))
def mmseg_danet_r50(num_classes: int = 19) -> Segmentor:
    """DANet (mmseg DAHead, PAM 64 channels), ResNetV1c-50-D8; weights: mmseg 512x1024 80k Cityscapes.

    Position attention is exact but chunked above 4096 positions (``cityseg_zoo.ops.attention``).
    """
    return _mmseg(50, DAHead(2048, 512, num_classes), num_classes)


@register_model(_spec("danet", classifiers=("head.pam_conv_seg", "head.cam_conv_seg")))
def mmseg_danet_r101(num_classes: int = 19) -> Segmentor:
    """DANet (mmseg DAHead, PAM 64 channels), ResNetV1c-101-D8; weights: mmseg 512x1024 80k Cityscapes.

    Position attention is exact but chunked above 4096 positions (``cityseg_zoo.ops.attention``).
    """
    return _mmseg(101, DAHead(2048, 512, num_classes), num_classes)


@register_model(_spec("ccnet"))
def mmseg_ccnet_r50(num_classes: int = 19, recurrence: int = 2) -> Segmentor:
    """CCNet (mmseg CCHead, recurrence 2), ResNetV1c-50-D8; weights: mmseg 512x1024 80k Cityscapes."""
    return _mmseg(50, CCHead(2048, 512, num_classes, recurrence), num_classes)


@register_model(_spec("ccnet"))
def mmseg_ccnet_r101(num_classes: int = 19, recurrence: int = 2) -> Segmentor:
    """CCNet (mmseg CCHead, recurrence 2), ResNetV1c-101-D8; weights: mmseg 512x1024 80k Cityscapes."""
    return _mmseg(101, CCHead(2048, 512, num_classes, recurrence), num_classes)
