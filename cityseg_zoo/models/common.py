"""Pieces every model file shares: the reference backbones and their key rules."""
from __future__ import annotations

from ..backbones import dilated_resnet
from ..ops.norm import ABNIdentity

# Backbone key rules of the reference checkpoints (models.md §0.1). The zoo keeps timm's names under `backbone.`.
SEQUENTIAL_STEM_RULES = ((r"^(conv1|bn1|layer[1-4])\.", r"backbone.\1."),)
FLAT_STEM_RULES = (
    (r"^conv1\.", "backbone.conv1.0."), (r"^bn1\.", "backbone.conv1.1."),
    (r"^conv2\.", "backbone.conv1.3."), (r"^bn2\.", "backbone.conv1.4."),
    (r"^conv3\.", "backbone.conv1.6."), (r"^bn3\.", "backbone.bn1."),   # `bn1` of the flat stem is BN64
    (r"^(layer[1-4])\.", r"backbone.\1."),
)

DEPTHS = {50: "resnet50s", 101: "resnet101s"}


def deep_stem_resnet(depth: int, multi_grid=(1, 1, 1), inplace_abn: bool = False):
    """The lxtGH / speedinghzl / OCNet dilated ResNet (models.md §0.1).

    64-64-128 deep stem, ceil-mode max-pool, layer3 dilation 2 in every block, layer4 dilation 4 x multi_grid.
    ``inplace_abn``: InPlaceABN norms with identity activation (CCNet, OCNet and CCNet-repo models).
    """
    kwargs = {"norm_layer": ABNIdentity} if inplace_abn else {}
    return dilated_resnet(DEPTHS[depth], layer3_dilations=2, layer4_dilations=[4 * g for g in multi_grid],
                          ceil_mode_pool=True, **kwargs)
