"""Gated Fully Fusion and the Dense Feature Pyramid (Li et al., GFF-Net, AAAI 2020; models.md §3).

Every pyramid level ``l`` gets a gate ``G_l = sigmoid(w_l * X_l)`` (a 1x1 conv with bias on the level's own input)
and receives every other level, each weighted by *its* gate, where its own gate is low (paper, Eq. 2)::

    X~_l = (1 + G_l) * X_l + (1 - G_l) * sum_{i != l} Resize(G_i * X_i -> size(X_l))

The released code (DecoupleSegNets ``WiderResNetGFFDFPHead``) computes this **sequentially**: levels are updated
in order and a later level reads the already-fused ``X~_i`` of earlier levels (for three levels: ``m2`` first, then
``m5`` with ``m2'``, then the ASPP level with ``m2'`` and ``m5'``). The gates always come from the raw inputs.
Every resize is bilinear with ``align_corners=True``; shrinking a finer level is bilinear down-sampling.

The dense feature pyramid (DFP) then runs top-down: block ``k`` sees the concatenation of every earlier block's
output and the k-th fused level from the top, all at one resolution (DenseNet-style, ASPP-like dilations).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from . import triton_kernels
from .norm import conv_bn_act
from .resize import resize


def gate_fuse_reference(x: torch.Tensor, gate: torch.Tensor, incoming: torch.Tensor) -> torch.Tensor:
    """``X + G·X + (1 − G)·incoming``, written X + G*X, not (1+G)*X, to follow the reference's rounding."""
    return x + gate * x + (1 - gate) * incoming


def gate_fuse_fast(x: torch.Tensor, gate: torch.Tensor, incoming: torch.Tensor) -> torch.Tensor:
    """:func:`gate_fuse_reference` with two full-size allocations instead of five (a fused X + G·X, in-place rest).

    ``incoming`` is overwritten (it is a fresh sum in :func:`gated_fully_fusion`); no gradient flows through.
    """
    out = torch.addcmul(x, gate, x)                          # X + G·X
    return out.add_(incoming.sub_(gate * incoming))           # + (1 − G)·incoming, as incoming − G·incoming


def gate_fuse(x: torch.Tensor, gate: torch.Tensor, incoming: torch.Tensor) -> torch.Tensor:
    """The gate's update of one level: the fused form when no gradient is needed, else the reference."""
    if not isinstance(incoming, torch.Tensor) or (
            torch.is_grad_enabled() and any(t.requires_grad for t in (x, gate, incoming))):
        return gate_fuse_reference(x, gate, incoming)
    if triton_kernels.available(x, gate, incoming):
        return triton_kernels.gate_fuse_triton(x, gate, incoming)   # one pass on CUDA
    return gate_fuse_fast(x, gate, incoming)


def gated_fully_fusion(features: Sequence[torch.Tensor], gates: Sequence[torch.Tensor],
                       sequential: bool = True, align_corners: bool = True) -> list[torch.Tensor]:
    """Fuse every level with every other through gates: ``X~_l = (1+G_l)X_l + (1-G_l) sum_{i!=l} R(G_i X_i)``.

    Args:
        features: ``X_l`` ``[B, C, H_l, W_l]``, all with the same C (sizes may differ).
        gates: ``G_l`` in (0, 1), each the shape of its ``X_l``.
        sequential: ``True`` (the released code): update the levels in order, later levels reading the fused
            ``X~_i`` of earlier ones. ``False``: the paper's simultaneous form, every level reading the raw ``X_i``.
        align_corners: of the bilinear resizes (``True`` in the reference).
    Returns:
        the fused ``X~_l``, in the order of ``features``.
    """
    if len(features) != len(gates):
        raise ValueError(f"{len(features)} features but {len(gates)} gates")
    current = list(features)
    fused = []
    for level, (x, gate) in enumerate(zip(features, gates)):
        size = x.shape[-2:]
        incoming = sum(resize(gates[i] * current[i], size, align_corners)
                       for i in range(len(features)) if i != level)
        out = gate_fuse(x, gate, incoming)
        if sequential:
            current[level] = out
        fused.append(out)
    return fused


class GatedFullyFusion(nn.Module):
    """Gates and channel reductions of GFF, then :func:`gated_fully_fusion`.

    For input level ``l`` with ``in_channels[l]`` channels: ``gates[l]`` = conv1x1(-> channels, **bias**) ->
    sigmoid, computed on the raw input; ``reduce[l]`` = conv1x1(-> channels, no bias) -> BN -> ReLU, giving X_l.
    ``forward`` returns ``(fused, reduced)``: the fused levels and the reduced, un-fused X_l (the DFP reuses the
    un-fused top level).
    """

    benchmark_label = "GFF: fused gate update"

    def __init__(self, in_channels: Sequence[int], channels: int, sequential: bool = True,
                 align_corners: bool = True):
        super().__init__()
        self.gates = nn.ModuleList(nn.Sequential(nn.Conv2d(c, channels, 1), nn.Sigmoid()) for c in in_channels)
        self.reduce = nn.ModuleList(conv_bn_act(c, channels, 1) for c in in_channels)
        self.sequential = sequential
        self.align_corners = align_corners

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        gates = [gate(x) for gate, x in zip(self.gates, features)]
        reduced = [reduce(x) for reduce, x in zip(self.reduce, features)]
        return gated_fully_fusion(reduced, gates, self.sequential, self.align_corners), reduced


class DenseBlock(nn.Sequential):
    """BN -> ReLU -> conv1x1 (**bias**) -> BN -> ReLU -> conv3x3 (dilation d, **bias**); keys norm1/conv1/norm2/conv2.

    The reference's ``drop_out=0``, so there is no dropout.
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, dilation: int):
        super().__init__(OrderedDict([
            ("norm1", nn.BatchNorm2d(in_ch)), ("relu1", nn.ReLU(inplace=True)),
            ("conv1", nn.Conv2d(in_ch, mid_ch, 1)),
            ("norm2", nn.BatchNorm2d(mid_ch)), ("relu2", nn.ReLU(inplace=True)),
            ("conv2", nn.Conv2d(mid_ch, out_ch, 3, padding=dilation, dilation=dilation)),
        ]))


class DenseFeaturePyramid(nn.ModuleList):
    """Top-down dense pyramid over levels of ``channels`` channels, all at one resolution.

    ``D_1 = block_1(L_1)``, ``D_k = block_k(cat[D_1, ..., D_{k-1}, L_k])`` where ``L_1`` is the top (most
    semantic) level. Block k has ``k * channels`` inputs, ``channels`` outputs and dilation ``dilations[k-1]``.
    Blocks are stored as list items ``0, 1, ...``. Returns ``[D_1, ..., D_n]``.
    """

    def __init__(self, channels: int, dilations: Sequence[int] = (3, 6, 9)):
        super().__init__(DenseBlock(channels * (k + 1), channels, channels, d) for k, d in enumerate(dilations))

    def forward(self, levels_top_down: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(levels_top_down) != len(self):
            raise ValueError(f"DFP has {len(self)} blocks but got {len(levels_top_down)} levels")
        outputs: list[torch.Tensor] = []
        for block, level in zip(self, levels_top_down):
            outputs.append(block(torch.cat(outputs + [level], dim=1)))
        return outputs
