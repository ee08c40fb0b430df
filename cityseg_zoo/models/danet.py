"""DANet: Dual Attention Network (junfu1115/DANet v0.5.0 ``encoding/models/danet.py``, models.md §4)."""
from __future__ import annotations

import torch
from torch import nn

from ..backbones.resnet import dilated_resnet
from ..data.normalization import IMAGENET_RGB
from ..hub.convert import Layout
from ..ops.attention import ChannelAttention, PositionAttention
from ..ops.norm import conv_bn_act
from ..registry import register_model
from ..segmentor import Segmentor
from ..specs import ArchSpec, Recipe


def _classifier(in_ch: int, num_classes: int) -> nn.Sequential:
    """Dropout2d(0.1) -> conv1x1 (bias); the conv is key ``.1`` as in the reference."""
    return nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(in_ch, num_classes, 1))


class DANetHead(nn.Module):
    """Position and channel attention branches on layer4, summed and classified.

    Eval mode returns the fused logits; train mode returns ``{"out": fused, "pam": ..., "cam": ...}``,
    the three outputs the reference's loss weighs equally.
    """

    def __init__(self, in_ch: int, num_classes: int, mid_ch: int = 512):
        super().__init__()
        # Position attention branch.
        self.conv5a = conv_bn_act(in_ch, mid_ch, 3)
        self.sa = PositionAttention(mid_ch)
        self.conv51 = conv_bn_act(mid_ch, mid_ch, 3)
        # Channel attention branch.
        self.conv5c = conv_bn_act(in_ch, mid_ch, 3)
        self.sc = ChannelAttention()
        self.conv52 = conv_bn_act(mid_ch, mid_ch, 3)
        # Classifiers: position only, channel only, fused (sum).
        self.conv6 = _classifier(mid_ch, num_classes)
        self.conv7 = _classifier(mid_ch, num_classes)
        self.conv8 = _classifier(mid_ch, num_classes)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor | dict[str, torch.Tensor]:
        x = features[-1]
        position = self.conv51(self.sa(self.conv5a(x)))
        channel = self.conv52(self.sc(self.conv5c(x)))
        fused = self.conv8(position + channel)
        if not self.training:
            return fused
        return {"out": fused, "pam": self.conv6(position), "cam": self.conv7(channel)}


DANET = Layout(
    "danet",
    rules=(
        (r"^pretrained\.fc\.", None),              # the ImageNet classifier of the Encoding ResNet, unused
        (r"^pretrained\.", "backbone."),
        (r"^head\.", "head."),
    ),
    # Encoding SyncBN checkpoints of 2018 torch builds may lack these buffers (models.md §0.2).
    optional=(r"num_batches_tracked$",),
    description="junfu1115/DANet@v0.5.0 encoding/models/danet.py ({'state_dict': ...}, no prefix)",
)

SPEC = ArchSpec(reference="junfu1115/DANet@v0.5.0 encoding/models/danet.py",
                paper="Fu et al., Dual Attention Network for Scene Segmentation, CVPR 2019",
                input=IMAGENET_RGB, classifiers=("head.conv6.1", "head.conv7.1", "head.conv8.1"), layouts=(DANET,),
                align_corners=True, head_stride=8,
                recipe=Recipe(0.003, 1e-4, head_lr_mult=10.0, crop=768, batch_size=8,
                              source="junfu1115/DANet (models.md §4): 240 epochs, head at 10x lr"))

# Encoding's dilated ResNet: 7x7 stem, max-pool ceil_mode off, layer3 block 0 at dilation 1 then 2,
# layer4 multi-grid 4/8/16 (`--multi-grid --multi-dilation 4 8 16`).
_LAYER3_BLOCKS = {50: 6, 101: 23}


def _danet(depth: int, num_classes: int) -> Segmentor:
    backbone = dilated_resnet(f"resnet{depth}", [1] + [2] * (_LAYER3_BLOCKS[depth] - 1), (4, 8, 16),
                              ceil_mode_pool=False)
    return Segmentor(backbone, DANetHead(2048, num_classes), aux_head=None)


@register_model(SPEC)
def danet_r50(num_classes: int = 19) -> Segmentor:
    """DANet, dilated ResNet-50 (7x7 stem, OS8, layer4 dilations 4/8/16). No released Cityscapes weights.

    Position attention materialises the (H/8·W/8)² matrix only up to 4096 positions; larger inputs use an
    exact query-chunked computation (``cityseg_zoo.ops.attention``).
    """
    return _danet(50, num_classes)


@register_model(SPEC)
def danet_r101(num_classes: int = 19) -> Segmentor:
    """DANet, dilated ResNet-101 (7x7 stem, OS8, layer4 dilations 4/8/16); weights: DANet101.pth.tar.

    Position attention materialises the (H/8·W/8)² matrix only up to 4096 positions; larger inputs use an
    exact query-chunked computation (``cityseg_zoo.ops.attention``).
    """
    return _danet(101, num_classes)
