"""Normalisation layers of the reference repos, on ordinary BatchNorm parameters.

``ABN`` reproduces mapillary InPlaceABN (as vendored by CCNet and OCNet, models.md §0.3) in eval *and* train:
the scale is ``|weight| + eps`` and an activation is fused after the norm. It has the same four tensors as
InPlaceABN (``weight``, ``bias``, ``running_mean``, ``running_var``) and, like it, no ``num_batches_tracked``,
so a reference state dict loads as it is, with no value rewritten.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


class ABN(nn.BatchNorm2d):
    """BatchNorm with InPlaceABN semantics: ``(x - mean) / sqrt(var + eps) * (|w| + eps) + b``, then activation.

    Args:
        activation: ``"leaky_relu"`` (InPlaceABN's default, slope 0.01) or ``"identity"``
            (the backbones' ``activation='none'``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 activation: str = "leaky_relu", slope: float = 0.01, **kwargs):
        super().__init__(num_features, eps=eps, momentum=momentum, **kwargs)
        if activation not in ("leaky_relu", "identity"):
            raise ValueError(f"unsupported ABN activation {activation!r}")
        self.activation = activation
        self.slope = slope
        # InPlaceABN v0.x has no such buffer; reference checkpoints lack the key.
        self.register_buffer("num_batches_tracked", None)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Skip BatchNorm's upgrade of version-less state dicts, which would insert `num_batches_tracked`.
        nn.Module._load_from_state_dict(self, state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_batch_stats = self.training or self.running_mean is None
        y = F.batch_norm(x, self.running_mean, self.running_var, self.weight.abs() + self.eps, self.bias,
                         use_batch_stats, self.momentum, self.eps)
        if self.activation == "leaky_relu":
            y = F.leaky_relu(y, self.slope, inplace=True)
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation}"


# Backbone norms of InPlaceABN repos: affine with |w| + eps, no activation (an nn.ReLU follows).
ABNIdentity = partial(ABN, activation="identity")


def conv_bn_act(in_ch: int, out_ch: int, kernel_size: int = 3, *, dilation: int = 1, stride: int = 1,
                bias: bool = False, groups: int = 1, act: str = "relu") -> nn.Sequential:
    """``conv -> norm -> activation`` as one ``nn.Sequential``, the keys ``0`` and ``1`` as in the references.

    ``act``: ``"relu"`` (BN + ReLU: keys 0, 1), ``"none"`` (BN only: keys 0, 1),
    ``"abn"`` (InPlaceABN with LeakyReLU(0.01) fused: keys 0, 1).
    """
    padding = dilation * (kernel_size // 2)
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, dilation=dilation,
                     groups=groups, bias=bias)
    if act == "relu":
        return nn.Sequential(conv, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))
    if act == "none":
        return nn.Sequential(conv, nn.BatchNorm2d(out_ch))
    if act == "abn":
        return nn.Sequential(conv, ABN(out_ch))
    raise ValueError(f"unknown act {act!r}")
