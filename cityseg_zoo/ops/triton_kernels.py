"""Triton kernels for the element-wise chains of GFF and GALD: one read of each input, one write, on CUDA.

On a GPU these chains are memory-bound: the reference's eager form makes five passes over full-size tensors
(``X + G·X + (1 − G)·incoming``) where one suffices. The kernels are used only for contiguous CUDA tensors of one
dense layout (contiguous or channels_last), and only when Triton imports; everything else takes the PyTorch fast paths of the op modules.

Checked against the references on CPU under Triton's interpreter (``TRITON_INTERPRET=1``, see
``tests/test_ops_fast.py``); **not yet run on a GPU**.
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # triton is optional: no kernels, the PyTorch paths are used
    triton = None

BLOCK = 1024


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


def same_dense_layout(*tensors: torch.Tensor) -> bool:
    """One shape, dtype, device and stride, without gaps: element i of each is at the same offset."""
    first = tensors[0]
    return all(isinstance(t, torch.Tensor) and _dense(t) and t.shape == first.shape and t.dtype == first.dtype
               and t.stride() == first.stride() and t.device == first.device for t in tensors)


def available(*tensors: torch.Tensor) -> bool:
    """True when the kernels should run on these tensors: Triton imported, CUDA, one dense layout."""
    return triton is not None and tensors[0].is_cuda and same_dense_layout(*tensors)


if triton is not None:
    @triton.jit
    def _gate_fuse_kernel(x_ptr, gate_ptr, incoming_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
        g = tl.load(gate_ptr + offsets, mask=mask).to(tl.float32)
        incoming = tl.load(incoming_ptr + offsets, mask=mask).to(tl.float32)
        out = x + g * x + (1 - g) * incoming                       # the reference's order of operations
        tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _gald_distribute_kernel(a_ptr, logits_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        a = tl.load(a_ptr + offsets, mask=mask).to(tl.float32)
        m = tl.sigmoid(tl.load(logits_ptr + offsets, mask=mask).to(tl.float32))
        out = (a + a * m) + a                                      # distribute(a) + a
        tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


def gate_fuse_triton(x: torch.Tensor, gate: torch.Tensor, incoming: torch.Tensor) -> torch.Tensor:
    """``X + G·X + (1 − G)·incoming`` in one pass (fp32 arithmetic, stored in the inputs' dtype)."""
    out = torch.empty_like(x)
    n = x.numel()
    _gate_fuse_kernel[(triton.cdiv(n, BLOCK),)](x, gate, incoming, out, n, BLOCK=BLOCK)
    return out


def gald_distribute_triton(a: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """``(a + a·sigmoid(mask_logits)) + a`` in one pass: GALD's local distribution plus the aggregate."""
    out = torch.empty_like(a)
    n = a.numel()
    _gald_distribute_kernel[(triton.cdiv(n, BLOCK),)](a, mask_logits, out, n, BLOCK=BLOCK)
    return out
