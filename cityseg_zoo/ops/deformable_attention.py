"""Multi-scale deformable attention (Zhu et al., Deformable DETR, ICLR 2021, Eq. 3), the core of Mask2Former's
pixel decoder.

For query q with reference point p̂_q, head m, level l and sampling point k, the paper writes::

    MSDeformAttn(z_q, p̂_q, {x^l}) = Σ_m W_m [ Σ_l Σ_k A_mlqk · W'_m x^l(φ_l(p̂_q) + Δp_mlqk) ]

The linear maps W_m, W'_m and the prediction of A and Δp live in the model; this op is the bracket: given the
per-head values ``W'_m x^l`` of every level, the normalised sampling locations ``φ_l(p̂_q) + Δp_mlqk`` in
[0, 1]² and the attention weights A (softmaxed over the L·K points of a head), it returns, for every query and
head, ``Σ_l Σ_k A_mlqk · x^l_m(loc_mlqk)``: a bilinear sample of level l at ``loc`` (pixel centres at
``(i + 0.5) / W_l``, zero outside the map) — ``grid_sample(bilinear, padding_mode="zeros",
align_corners=False)`` at ``2 · loc − 1``, as Deformable DETR's PyTorch fallback and transformers' Mask2Former
compute it.

Shapes (levels concatenated along S, row-major within a level)::

    value               [B, S, heads, head_dim]      S = Σ_l H_l · W_l
    spatial_shapes      L pairs (H_l, W_l)           a list of int pairs or an int tensor [L, 2]
    sampling_locations  [B, Q, heads, L, P, 2]       (x, y) normalised to [0, 1]; outside -> zero padding
    attention_weights   [B, Q, heads, L, P]
    returns             [B, Q, heads · head_dim]

Three implementations of the same numbers:

- :func:`multi_scale_deformable_attention_reference`: one ``grid_sample`` per level, as transformers does.
  Memory: a ``[B·heads, head_dim, Q, L·P]`` stack of samples, twice (samples and weighted samples).
- :func:`multi_scale_deformable_attention_gather`: the four bilinear corners of every (query, head, level,
  point) become rows of one flat value table, each with weight bilinear × attention (0 outside the map), and one
  ``embedding_bag(mode="sum", per_sample_weights=...)`` call gathers and sums them: one weighted gather-sum for
  all levels and points, no ``[N, L·P·4, head_dim]`` intermediate. Chunked over queries so that its index and
  weight tensors stay bounded. Made of differentiable ops: gradients flow to value, locations and weights
  through ``embedding_bag``'s own backward (no reference recomputation). The CPU fast path.
- ``triton_deformable.deformable_attention_triton``: a Triton kernel for the CUDA forward; its backward
  recomputes through the reference.

:func:`multi_scale_deformable_attention` picks one. Under ``torch.export`` / ONNX export it always takes the
reference (``grid_sample`` exports as ONNX ``GridSample``, opset ≥ 16).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import triton_deformable

# Rows gathered by one embedding_bag call of the gather path (queries · heads · levels · points · 4 corners).
# 2^22 rows: 16 MiB of int32 indices + 16 MiB of fp32 weights, plus a few same-size temporaries.
CHUNK_ROWS = 1 << 22

SpatialShapes = "Sequence[tuple[int, int]] | Tensor"


def _shape_list(spatial_shapes) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(int(h), int(w)) for h, w in spatial_shapes]


def _check(value: Tensor, shapes: list[tuple[int, int]], sampling_locations: Tensor,
           attention_weights: Tensor) -> None:
    if value.dim() != 4 or sampling_locations.dim() != 6 or attention_weights.dim() != 5:
        raise ValueError(f"expected value [B, S, heads, head_dim], sampling_locations [B, Q, heads, L, P, 2] and "
                         f"attention_weights [B, Q, heads, L, P]; got {tuple(value.shape)}, "
                         f"{tuple(sampling_locations.shape)}, {tuple(attention_weights.shape)}")
    b, s, heads, _ = value.shape
    if sum(h * w for h, w in shapes) != s:
        raise ValueError(f"value has S = {s} tokens but spatial_shapes {shapes} sum to {sum(h * w for h, w in shapes)}")
    if (sampling_locations.shape[0] != b or sampling_locations.shape[2] != heads
            or sampling_locations.shape[3] != len(shapes) or sampling_locations.shape[-1] != 2):
        raise ValueError(f"sampling_locations {tuple(sampling_locations.shape)} does not fit value "
                         f"{tuple(value.shape)} with {len(shapes)} levels: expected [{b}, Q, {heads}, {len(shapes)}, P, 2]")
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(f"attention_weights {tuple(attention_weights.shape)} must be sampling_locations' shape "
                         f"without its last axis, {tuple(sampling_locations.shape[:-1])}")


def multi_scale_deformable_attention_reference(value: Tensor, spatial_shapes: Sequence[tuple[int, int]] | Tensor,
                                               sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """``out[b, q, m] = Σ_l Σ_k A[b, q, m, l, k] · bilinear(x^l_m, loc[b, q, m, l, k])``, one ``grid_sample`` per level.

    transformers' ``multi_scale_deformable_attention`` (Mask2Former), the same operations in the same order.
    Shapes as in the module docstring; differentiable in every tensor argument.
    """
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    # Sizes stay as given (no int()): under torch.export with dynamic height/width they are symbolic.
    shapes = spatial_shapes.tolist() if isinstance(spatial_shapes, Tensor) else list(spatial_shapes)
    value_list = value.split([h * w for h, w in shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1                          # [0, 1] -> grid_sample's [-1, 1]
    samples = []
    for level, (h, w) in enumerate(shapes):
        # [B, H_l·W_l, heads, D] -> [B·heads, D, H_l, W_l]
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(batch * heads, head_dim, h, w)
        # [B, Q, heads, P, 2] -> [B·heads, Q, P, 2]
        grid_l = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [B, Q, heads, L, P] -> [B·heads, 1, Q, L·P]
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1).view(batch, heads * head_dim, queries)
    return out.transpose(1, 2).contiguous()


def _padded_table(value: Tensor, shapes: list[tuple[int, int]], dtype: torch.dtype) -> tuple[Tensor, list[int]]:
    """``value`` with every level's map framed by zeros (1 row/column before, 2 after), as ``[B·S'·heads, D]``.

    The frame is grid_sample's zero padding made explicit: a sample whose pixel coordinate is clamped into the
    framed map reads zeros wherever the unframed map has no pixel, so no corner needs a validity mask. Returns
    the table and the first framed token of every level. Differentiable (a copy into a zero tensor).
    """
    batch, _, heads, head_dim = value.shape
    sizes = [(h + 3) * (w + 3) for h, w in shapes]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    table = value.new_zeros(batch, sum(sizes), heads, head_dim, dtype=dtype)
    for (h, w), start, level in zip(shapes, starts, value.split([h * w for h, w in shapes], dim=1)):
        framed = table[:, start:start + (h + 3) * (w + 3)].unflatten(1, (h + 3, w + 3))
        framed[:, 1:h + 1, 1:w + 1] = level.unflatten(1, (h, w))
    return table.view(-1, head_dim), starts


class _Levels:
    """Per-level constants laid out along K = L·P (each level's value repeated P times), for broadcasting."""

    def __init__(self, shapes: list[tuple[int, int]], starts: list[int], points: int, heads: int,
                 device: torch.device, dtype: torch.dtype):
        def along_k(values, dtype):
            return torch.tensor(values, dtype=dtype, device=device).repeat_interleave(points)

        self.height = along_k([h for h, _ in shapes], dtype)
        self.width = along_k([w for _, w in shapes], dtype)
        self.framed_width = along_k([w + 3 for _, w in shapes], dtype)
        self.start_row = along_k([start * heads for start in starts], torch.long)   # level's first row, head 0
        # Table rows of the four corners relative to the top-left one: (0, 0), (0, 1), (1, 0), (1, 1).
        right, down = heads, [(w + 3) * heads for _, w in shapes]
        self.corner_rows = torch.tensor([[0, right, d, d + right] for d in down], dtype=torch.int32,
                                        device=device).t().repeat_interleave(points, dim=1)     # [4, K]


def _gather_chunk(table: Tensor, table_tokens: int, levels: _Levels, loc: Tensor, attn: Tensor,
                  index_dtype: torch.dtype) -> Tensor:
    """One embedding_bag over a query chunk: ``loc`` ``[B, q, heads, K, 2]``, ``attn`` ``[B, q, heads, K]``.

    Returns ``[B·q·heads, head_dim]``. Every bag is the 4·K corners of one (batch, query, head); the corner axis
    sits before K so that the element-wise work runs along contiguous rows.
    """
    batch, _, heads, _ = attn.shape
    # Pixel coordinate in the framed map: loc · size − 0.5 (align_corners=False) + 1 (the frame), clamped to
    # [0, size + 1] so that both neighbours exist; beyond the map both read the frame's zeros.
    x = torch.addcmul(torch.tensor(0.5, dtype=loc.dtype), loc[..., 0], levels.width)
    y = torch.addcmul(torch.tensor(0.5, dtype=loc.dtype), loc[..., 1], levels.height)
    x, y = x.clamp(min=0).minimum(levels.width + 1), y.clamp(min=0).minimum(levels.height + 1)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0                              # differentiable in loc: floor's gradient is 0
    # Row of value[b, s, m] in the table: (b·S' + s)·heads + m, s = start_l + y·(W_l + 3) + x.
    token = torch.addcmul(x0, y0, levels.framed_width).to(index_dtype)         # < S' < 2^24: exact in fp32
    base = (torch.arange(batch, device=loc.device).view(-1, 1, 1) * (table_tokens * heads)
            + torch.arange(heads, device=loc.device).view(1, -1, 1) + levels.start_row)      # [B, heads, K]
    top_left = token * heads + base.to(index_dtype).unsqueeze(1)                # [B, q, heads, K]
    rows = top_left.unsqueeze(-2) + levels.corner_rows.to(index_dtype)          # [B, q, heads, 4, K]
    # Bilinear weights (1 − f, f) of the two neighbours along each axis, as one fused op: a + s · f.
    low_high = torch.tensor([[1.0], [0.0]], dtype=fx.dtype, device=fx.device)
    sign = torch.tensor([[-1.0], [1.0]], dtype=fx.dtype, device=fx.device)
    wx = torch.addcmul(low_high, sign, fx.unsqueeze(-2))                        # [B, q, heads, 2 (x), K]
    wy = torch.addcmul(low_high, sign, fy.unsqueeze(-2)) * attn.unsqueeze(-2)   # [B, q, heads, 2 (y), K]
    weights = wy.unsqueeze(-2) * wx.unsqueeze(-3)                               # [..., 2 (y), 2 (x), K]
    n = rows.shape[0] * rows.shape[1] * heads
    return F.embedding_bag(rows.reshape(n, -1), table, mode="sum",
                           per_sample_weights=weights.reshape(n, -1).to(table.dtype))


def multi_scale_deformable_attention_gather(value: Tensor, spatial_shapes: Sequence[tuple[int, int]] | Tensor,
                                            sampling_locations: Tensor, attention_weights: Tensor,
                                            chunk_rows: int = CHUNK_ROWS) -> Tensor:
    """The reference's numbers as one weighted gather-sum (``embedding_bag``) over the four bilinear corners.

    Any device; differentiable (``embedding_bag``'s backward). fp32 or fp64 arithmetic: bf16/fp16 values are
    gathered from an fp32 table and the result is cast back. Peak extra memory: the zero-framed fp32 table
    (about the size of ``value`` in fp32), the ``[B, Q, heads · head_dim]`` result, and index/weight tensors of
    at most ``chunk_rows`` rows.
    """
    shapes = _shape_list(spatial_shapes)
    _check(value, shapes, sampling_locations, attention_weights)
    batch, _, heads, head_dim = value.shape
    queries, _, levels, points, _ = sampling_locations.shape[1:]
    compute = torch.float64 if value.dtype == torch.float64 else torch.float32
    table, starts = _padded_table(value, shapes, compute)
    table_tokens = table.shape[0] // (batch * heads)
    if max((h + 3) * (w + 3) for h, w in shapes) >= 2 ** 24 and compute == torch.float32:
        compute = torch.float64                          # framed token indices exact in the float arithmetic
    levels_k = _Levels(shapes, starts, points, heads, value.device, compute)
    index_dtype = torch.int32 if table.shape[0] < 2 ** 31 else torch.long
    k = levels * points
    loc = sampling_locations.to(compute).reshape(batch, queries, heads, k, 2)
    attn = attention_weights.to(compute).reshape(batch, queries, heads, k)
    step = max(1, chunk_rows // (batch * heads * k * 4))
    chunks = [_gather_chunk(table, table_tokens, levels_k, loc[:, q:q + step], attn[:, q:q + step], index_dtype)
              .view(batch, -1, heads * head_dim) for q in range(0, queries, step)]
    out = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)
    return out.to(value.dtype)


def multi_scale_deformable_attention(value: Tensor, spatial_shapes: Sequence[tuple[int, int]] | Tensor,
                                     sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """``Σ_l Σ_k A · bilinear(x^l, loc)`` per query and head (Deformable DETR Eq. 3's bracket), on the fastest path.

    - exporting (``torch.export`` / ONNX): the reference, whose ``grid_sample`` exports;
    - CUDA with Triton: the Triton forward kernel (backward recomputes through the reference);
    - CPU: the ``embedding_bag`` gather path (its own autograd);
    - anything else: the reference.

    Shapes as in the module docstring. Returns ``[B, Q, heads · head_dim]`` in ``value``'s dtype.
    """
    if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
        return multi_scale_deformable_attention_reference(value, spatial_shapes, sampling_locations,
                                                          attention_weights)
    if triton_deformable.available(value, sampling_locations, attention_weights):
        return triton_deformable.deformable_attention_triton(value, spatial_shapes, sampling_locations,
                                                             attention_weights)
    if value.device.type == "cpu":
        return multi_scale_deformable_attention_gather(value, spatial_shapes, sampling_locations, attention_weights)
    return multi_scale_deformable_attention_reference(value, spatial_shapes, sampling_locations, attention_weights)
