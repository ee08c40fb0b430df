"""DeepLabv3+ (Chen et al., ECCV 2018) as in lxtGH/DecoupleSegNets ``DeepR101V3PlusD_m1_deeply`` (models.md §9).

Encoder: dilated deep-stem ResNet (``resnet_d``: ceil-mode pool **off**, layer3 dilation 2 and layer4 dilation 4 in
every block, output stride 8) -> ASPP [image pool, 1x1, d12, d24, d36] -> 1x1 projection (no BN).
Decoder: 1x1 reduction of the layer1 feature to 48 channels, concat with the upsampled encoder output, two 3x3
conv-BN-ReLU and a bias-free classifier, at stride 4. Every resize is bilinear with ``align_corners=True``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..backbones.resnet import dilated_resnet
from ..data.normalization import IMAGENET_RGB
from ..hub.convert import Layout
from ..ops.aspp import ASPP
from ..ops.norm import conv_bn_act
from ..ops.resize import resize
from ..registry import register_model
from ..segmentor import Segmentor
from ..specs import ArchSpec, Recipe

# NVIDIA-style `_AtrousSpatialPyramidPoolingModule` (DecoupleSegNets) onto the zoo ASPP: `img_conv` is the image
# pooling branch (conv, BN), `features.0..3` the 1x1 and dilated branches.
NVIDIA_ASPP_RULES = (
    (r"^aspp\.img_conv\.0\.", "head.aspp.image_pool.1."),
    (r"^aspp\.img_conv\.1\.", "head.aspp.image_pool.2."),
    (r"^aspp\.features\.", "head.aspp.branches."),
)

# DecoupleSegNets wraps the resnet_d stem as `layer0 = Sequential(conv1, bn1, relu, maxpool)`.
RESNET_D_LAYER0_RULES = (
    (r"^layer0\.0\.", "backbone.conv1."),
    (r"^layer0\.1\.", "backbone.bn1."),
    (r"^(layer[1-4])\.", r"backbone.\1."),
)


def decoder_convs(in_ch: int, num_classes: int) -> nn.Sequential:
    """conv3x3-BN-ReLU x2 -> conv1x1 classifier **without bias** (DecoupleSegNets ``final``; keys 0,1,3,4,6)."""
    return nn.Sequential(*conv_bn_act(in_ch, 256, 3), *conv_bn_act(256, 256, 3),
                         nn.Conv2d(256, num_classes, 1, bias=False))


class DeepLabV3PlusHead(nn.Module):
    """ASPP encoder on layer4 + decoder with the layer1 skip; returns logits at stride 4."""

    def __init__(self, num_classes: int, in_ch: int = 2048, low_level_ch: int = 256, skip_ch: int = 48):
        super().__init__()
        self.aspp = ASPP(in_ch, 256, dilations=(12, 24, 36), act="relu")
        self.bot_aspp = nn.Conv2d(self.aspp.out_channels, 256, 1, bias=False)  # no BN/ReLU, as the reference
        self.bot_fine = nn.Conv2d(low_level_ch, skip_ch, 1, bias=False)
        self.final = decoder_convs(skip_ch + 256, num_classes)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low_level, top = features[0], features[-1]
        encoder = resize(self.bot_aspp(self.aspp(top)), low_level.shape[-2:], align_corners=True)
        return self.final(torch.cat([self.bot_fine(low_level), encoder], dim=1))  # order [fine, encoder]


DECOUPLESEGNETS_DLV3PLUS = Layout(
    "decouplesegnets",
    rules=RESNET_D_LAYER0_RULES + NVIDIA_ASPP_RULES + ((r"^(bot_aspp|bot_fine|final)\.", r"head.\1."),),
    description="lxtGH/DecoupleSegNets@bedb8e5 network/deepv3.py::DeepV3Plus (NVIDIA container, module. prefix)",
)

SPEC = ArchSpec(reference="lxtGH/DecoupleSegNets@bedb8e5 network/deepv3.py::DeepR101V3PlusD_m1_deeply",
                paper="Chen et al., Encoder-Decoder with Atrous Separable Convolution (DeepLabv3+), ECCV 2018",
                input=IMAGENET_RGB, classifiers=("head.final.6",), layouts=(DECOUPLESEGNETS_DLV3PLUS,),
                head_stride=4,
                recipe=Recipe(0.01, 1e-4, power=1.0, loss="ohem", crop=832, batch_size=8, scale_range=(0.5, 2.0),
                              source="DecoupleSegNets train_cityscapes_ResNet50_deeplab.sh (models.md §9): 80 epochs; "
                                     "weight decay not recorded in models.md, 1e-4 assumed"))

_VARIANTS = {50: "resnet50s", 101: "resnet101s"}


def _deeplabv3plus(depth: int, num_classes: int) -> Segmentor:
    # resnet_d: layer3 all dilation 2, layer4 all 4, max-pool ceil_mode off (unlike the lxtGH §0.1 models).
    backbone = dilated_resnet(_VARIANTS[depth], 2, (4, 4, 4), ceil_mode_pool=False)
    return Segmentor(backbone, DeepLabV3PlusHead(num_classes), aux_head=None)


@register_model(SPEC)
def deeplabv3plus_r50(num_classes: int = 19) -> Segmentor:
    """DeepLabv3+, dilated ResNet-50 (deep stem, OS8), DecoupleSegNets variant. No weights in the manifest."""
    return _deeplabv3plus(50, num_classes)


@register_model(SPEC)
def deeplabv3plus_r101(num_classes: int = 19) -> Segmentor:
    """DeepLabv3+, dilated ResNet-101 (deep stem, OS8), DecoupleSegNets variant. No weights in the manifest."""
    return _deeplabv3plus(101, num_classes)
