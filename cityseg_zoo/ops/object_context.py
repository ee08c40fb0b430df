"""Object context (OCNet, Yuan & Wang, arXiv 1809.00916): self-attention over all positions of a feature map.

For the features ``x`` (after an optional ``scale x scale`` max-pool), with ``q = k = f_key(x)`` and ``v = f_value(x)``:

    a_ij = softmax_j( q_i . k_j / sqrt(d_k) )          (d_k = key channels)
    c_i  = W( sum_j a_ij v_j )

``c`` is the object context of every pixel. ``BaseOC`` fuses it with its input (concat, 1x1 conv); ``ASPOC``
puts it beside the four ASPP-style branches. Names and Sequential indices follow openseg-group/OCNet.pytorch
@679a45b (``oc_module/base_oc_block.py``, ``oc_module/asp_oc_block.py``) so reference checkpoints map one-to-one.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .attention import position_attention
from .norm import conv_bn_act
from .resize import resize


class SelfAttentionBlock(nn.Module):
    """Object context ``c = W(softmax(q k^T / sqrt(d_k)) v)`` on the (optionally max-pooled) input.

    ``f_query`` *is* ``f_key``: OCNet builds the key transform (conv1x1 with bias + InPlaceABN/LeakyReLU) once
    and aliases it as the query transform, so queries and keys are the same tensor. Reference checkpoints
    store the shared module twice (``f_key.*`` and ``f_query.*``); the zoo registers it once, as ``f_key``
    (a state dict with two names for one tensor cannot be saved as safetensors), and the checkpoint layouts
    check the ``f_query.*`` copy equals ``f_key.*`` before dropping it.

    ``scale > 1``: attention runs on ``MaxPool2d(scale)`` of the input (floor mode, so odd sizes lose their
    last row/column) and the context is resized back to the input size (bilinear, align_corners=True) after ``W``.
    """

    benchmark_label = "object context without N×N (chunked on CPU float32, else SDPA)"

    def __init__(self, in_ch: int, key_ch: int, value_ch: int, out_ch: int | None = None, scale: int = 1,
                 align_corners: bool = True):
        super().__init__()
        out_ch = in_ch if out_ch is None else out_ch
        self.scale = scale
        self.key_channels = key_ch
        self.align_corners = align_corners
        self.pool = nn.MaxPool2d(scale) if scale > 1 else nn.Identity()
        self.f_key = conv_bn_act(in_ch, key_ch, 1, bias=True, act="abn")
        self.f_value = nn.Conv2d(in_ch, value_ch, 1)
        self.W = nn.Conv2d(value_ch, out_ch, 1)
        nn.init.zeros_(self.W.weight)  # as the reference: the block starts as "no context"
        nn.init.zeros_(self.W.bias)

    @property
    def f_query(self) -> nn.Module:
        """The query transform: the very same module as ``f_key`` (OCNet's ``self.f_query = self.f_key``)."""
        return self.f_key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = self.pool(x)
        n, _, h, w = x.shape
        # The reference applies the shared module twice; in train mode that updates its running stats twice.
        query = self.f_query(x).flatten(2)                    # [N, d_k, hw]
        key = self.f_key(x).flatten(2)                        # [N, d_k, hw]
        value = self.f_value(x).flatten(2)                    # [N, d_v, hw]
        # a_ij = softmax_j((q_i / sqrt(d_k)) · k_j); the shared dispatcher never builds the hw × hw matrix of
        # a large map (query-chunked on CPU in float32, SDPA kernels on CUDA and in bf16).
        context = position_attention((self.key_channels ** -0.5) * query, key, value).reshape(n, -1, h, w)
        context = self.W(context)
        if self.scale > 1:
            context = resize(context, size, self.align_corners)
        return context


class BaseOC(nn.Module):
    """Base-OC: ``Dropout(ABN(conv1x1(cat[context, x])))``, the context summed over the stages' scales.

    Keys ``stages.i.*`` and ``conv_bn_dropout.{0,1}`` as OCNet's ``BaseOC_Module``.
    """

    def __init__(self, in_ch: int, out_ch: int, key_ch: int, value_ch: int, dropout: float = 0.05,
                 scales: Sequence[int] = (1,)):
        super().__init__()
        self.stages = nn.ModuleList(SelfAttentionBlock(in_ch, key_ch, value_ch, out_ch, s) for s in scales)
        self.conv_bn_dropout = nn.Sequential(*conv_bn_act(out_ch + in_ch, out_ch, 1, bias=True, act="abn"),
                                             nn.Dropout2d(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = sum(stage(x) for stage in self.stages)
        return self.conv_bn_dropout(torch.cat([context, x], dim=1))


class BaseOCContext(nn.Module):
    """The object context alone, projected: ``ABN(conv1x1(context))`` (OCNet's ``BaseOC_Context_Module``).

    No concat with the input and no dropout, although the reference keeps the name ``conv_bn_dropout``.
    """

    def __init__(self, in_ch: int, out_ch: int, key_ch: int, value_ch: int, scales: Sequence[int] = (1,)):
        super().__init__()
        self.stages = nn.ModuleList(SelfAttentionBlock(in_ch, key_ch, value_ch, out_ch, s) for s in scales)
        self.conv_bn_dropout = conv_bn_act(out_ch, out_ch, 1, bias=True, act="abn")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_bn_dropout(sum(stage(x) for stage in self.stages))


class ASPOC(nn.Module):
    """ASP-OC: ``Dropout(ABN(conv1x1(cat[context, 1x1, d1, d2, d3])))``, OCNet's ``ASP_OC_Module``.

    The context branch is conv3x3 (bias) -> ABN -> object context at half resolution (key ``inner/2``);
    ``conv2`` is a 1x1 and ``conv3..5`` dilated 3x3 convs (no bias), each with ABN. Output ``2 * inner`` channels.
    """

    def __init__(self, in_ch: int, inner_ch: int = 256, dilations: Sequence[int] = (12, 24, 36),
                 dropout: float = 0.1):
        super().__init__()
        self.context = nn.Sequential(*conv_bn_act(in_ch, inner_ch, 3, bias=True, act="abn"),
                                     BaseOCContext(inner_ch, inner_ch, inner_ch // 2, inner_ch, scales=(2,)))
        self.conv2 = conv_bn_act(in_ch, inner_ch, 1, act="abn")
        self.conv3 = conv_bn_act(in_ch, inner_ch, 3, dilation=dilations[0], act="abn")
        self.conv4 = conv_bn_act(in_ch, inner_ch, 3, dilation=dilations[1], act="abn")
        self.conv5 = conv_bn_act(in_ch, inner_ch, 3, dilation=dilations[2], act="abn")
        self.conv_bn_dropout = nn.Sequential(*conv_bn_act(5 * inner_ch, 2 * inner_ch, 1, act="abn"),
                                             nn.Dropout2d(dropout))
        self.out_channels = 2 * inner_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.context(x), self.conv2(x), self.conv3(x), self.conv4(x), self.conv5(x)]
        return self.conv_bn_dropout(torch.cat(branches, dim=1))
