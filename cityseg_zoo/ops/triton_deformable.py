"""Triton forward kernel of multi-scale deformable attention (see ``deformable_attention.py`` for the equation).

One program per (batch · head, block of queries): it loops over the levels and points, loads the sampling
location and attention weight of each query of the block, and accumulates in fp32 the four bilinear corners'
``[BLOCK_Q, head_dim]`` value rows, zero where a corner falls outside the level's map (grid_sample's zero padding,
align_corners=False). Nothing but the result is written: no ``[B·heads, D, Q, L·P]`` stack of samples.

The backward is not a kernel: :class:`_DeformableAttentionTriton` recomputes the forward through the reference
(``grid_sample``) under ``enable_grad`` and differentiates that, so training costs the reference's memory in the
backward only.

Checked against the reference on CPU under Triton's interpreter (``TRITON_INTERPRET=1``, see
``tests/test_deformable_attention.py``); **not yet run on a GPU**.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # triton is optional: the PyTorch paths are used
    triton = None

BLOCK_Q = 32
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def available(value: Tensor, sampling_locations: Tensor, attention_weights: Tensor) -> bool:
    """True when the kernel should run: Triton imported, eager mode, CUDA tensors of one device and a float dtype."""
    tensors = (value, sampling_locations, attention_weights)
    return (triton is not None and not torch.compiler.is_compiling() and value.is_cuda
            and all(t.device == value.device and t.dtype in DTYPES for t in tensors))


def _launch(value: Tensor, shapes: list[tuple[int, int]], sampling_locations: Tensor,
            attention_weights: Tensor) -> Tensor:
    batch, tokens, heads, head_dim = value.shape
    queries, _, levels, points, _ = sampling_locations.shape[1:]
    value, loc, attn = (t.contiguous() for t in (value, sampling_locations, attention_weights))
    shape_t = torch.tensor(shapes, dtype=torch.int32, device=value.device)
    counts = shape_t[:, 0] * shape_t[:, 1]
    starts = (torch.cumsum(counts, 0) - counts).to(torch.int32)
    out = torch.empty(batch, queries, heads * head_dim, dtype=value.dtype, device=value.device)
    grid = (batch * heads, triton.cdiv(queries, BLOCK_Q))
    _deformable_attention_kernel[grid](value, shape_t, starts, loc, attn, out, tokens, queries, heads, head_dim,
                                       levels, POINTS=points, BLOCK_Q=BLOCK_Q,
                                       BLOCK_D=triton.next_power_of_2(head_dim))
    return out


class _DeformableAttentionTriton(torch.autograd.Function):
    """Forward: the Triton kernel. Backward: the reference's gradient, recomputed under ``enable_grad``."""

    @staticmethod
    def forward(ctx, value, shapes, sampling_locations, attention_weights):
        ctx.shapes = shapes
        ctx.save_for_backward(value, sampling_locations, attention_weights)
        return _launch(value, shapes, sampling_locations, attention_weights)

    @staticmethod
    def backward(ctx, grad_out):
        from .deformable_attention import multi_scale_deformable_attention_reference
        inputs = [t.detach().requires_grad_(needs) for t, needs in
                  zip(ctx.saved_tensors, (ctx.needs_input_grad[0], *ctx.needs_input_grad[2:]))]
        with torch.enable_grad():
            out = multi_scale_deformable_attention_reference(inputs[0], ctx.shapes, inputs[1], inputs[2])
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out) if wanted else ())
        value_grad, loc_grad, attn_grad = (next(grads) if t.requires_grad else None for t in inputs)
        return value_grad, None, loc_grad, attn_grad


def deformable_attention_triton(value: Tensor, spatial_shapes: Sequence[tuple[int, int]] | Tensor,
                                sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """The reference's result from one Triton kernel (fp32 accumulation, stored in ``value``'s dtype).

    Differentiable: the backward recomputes through the reference (see the module docstring).
    """
    if isinstance(spatial_shapes, Tensor):
        spatial_shapes = spatial_shapes.tolist()
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    return _DeformableAttentionTriton.apply(value, shapes, sampling_locations, attention_weights)


if triton is not None:
    @triton.jit
    def _deformable_attention_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, out_ptr,
                                     tokens, queries, heads, head_dim, levels,
                                     POINTS: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
        batch_head = tl.program_id(0)
        b = (batch_head // heads).to(tl.int64)
        m = (batch_head % heads).to(tl.int64)
        q = tl.program_id(1).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        d = tl.arange(0, BLOCK_D)
        q_mask = q < queries
        d_mask = d < head_dim
        # value[b, s, m, :] sits at ((b·S + s)·heads + m)·D; sample (b, q, m, l, p) at ((b·Q + q)·heads + m)·L·P + l·P + p
        sample = ((b * queries + q) * heads + m) * levels * POINTS                         # [BLOCK_Q]
        acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
        for level in range(levels):
            height = tl.load(shapes_ptr + 2 * level)
            width = tl.load(shapes_ptr + 2 * level + 1)
            row0 = b * tokens + tl.load(starts_ptr + level)                                  # token of (b, l, 0, 0)
            for point in tl.static_range(POINTS):
                k = sample + level * POINTS + point
                a = tl.load(attn_ptr + k, mask=q_mask, other=0.0).to(tl.float32)
                lx = tl.load(loc_ptr + 2 * k, mask=q_mask, other=0.0).to(tl.float32)
                ly = tl.load(loc_ptr + 2 * k + 1, mask=q_mask, other=0.0).to(tl.float32)
                # Pixel coordinate (align_corners=False), clamped where every corner is outside anyway, so that
                # far-away locations cannot overflow the integer conversion.
                x = tl.minimum(tl.maximum(lx * width - 0.5, -2.0), width + 1.0)
                y = tl.minimum(tl.maximum(ly * height - 0.5, -2.0), height + 1.0)
                x0f = tl.floor(x)
                y0f = tl.floor(y)
                fx = x - x0f
                fy = y - y0f
                x0 = x0f.to(tl.int32)
                y0 = y0f.to(tl.int32)
                for corner in tl.static_range(4):
                    dy = corner // 2
                    dx = corner % 2
                    xi = x0 + dx
                    yi = y0 + dy
                    wx = fx if dx == 1 else 1.0 - fx
                    wy = fy if dy == 1 else 1.0 - fy
                    inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height) & q_mask
                    token = row0 + (yi * width + xi).to(tl.int64)
                    rows = (token * heads + m) * head_dim                                     # [BLOCK_Q]
                    v = tl.load(value_ptr + rows[:, None] + d[None, :], mask=inside[:, None] & d_mask[None, :],
                                other=0.0).to(tl.float32)
                    acc += (wy * wx * a)[:, None] * v
        out = out_ptr + ((b * queries + q) * heads + m)[:, None] * head_dim + d[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=q_mask[:, None] & d_mask[None, :])
