"""SegFormer's efficient self-attention: every query attends to a spatially reduced set of keys and values.

The paper (Xie et al. 2021, eq. 1-2) shortens the key/value sequence by the reduction ratio ``R`` per side: a
``R x R`` convolution with stride ``R`` on the ``H x W`` token map, then LayerNorm, turning ``N = HW`` keys into
``N / R²``. Attention itself is the usual multi-head ``softmax(Q Kᵀ / √d) V``:

* :func:`efficient_attention_reference` computes it as written, building the ``N x N/R²`` weight matrix per head.
  At 1024x2048 SegFormer-B0's first stage has N = 131072 queries and 2048 keys: 1 GiB of weights in float32.
* :func:`efficient_attention` calls ``torch.nn.functional.scaled_dot_product_attention``, whose CPU (flash) and
  CUDA (flash / memory-efficient) kernels tile the computation and never hold that matrix. Same maths; the tests
  check both agree on odd sizes.

Low precision: the reference computes ``q kᵀ`` and the softmax in float32 on float32 copies of q and k (see
:mod:`cityseg_zoo.ops.precision`); the fused kernels take bf16/fp16 q, k, v and accumulate the scores and the
softmax in float32 themselves (``tests/test_ops_fast.py`` checks it on scores that bf16 could not hold).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .linear import apply_linear
from .precision import float32_island, upcast


def efficient_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q kᵀ / √d) v`` for ``q`` ``[B, heads, N, d]`` and ``k``, ``v`` ``[B, heads, M, d]``."""
    with float32_island(q):
        weights = torch.softmax(upcast(q) @ upcast(k).transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)
        return weights.to(v.dtype) @ v


def efficient_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """:func:`efficient_attention_reference` through PyTorch's fused attention (no ``N x M`` matrix)."""
    return F.scaled_dot_product_attention(q, k, v)


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention over ``[B, N, C]`` tokens with keys/values reduced by ``sr_ratio`` per side.

    Parameter names follow the paper's code (NVlabs/SegFormer ``mix_transformer.py::Attention``: ``q``, ``sr``,
    ``norm``, ``proj``), except that keys and values are two projections ``k`` and ``v``, as in the transformers
    checkpoints, instead of one ``kv``.
    """

    benchmark_label = "efficient attention: SDPA, no N x N/R² matrix"

    def __init__(self, dim: int, num_heads: int, sr_ratio: int = 1):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)   # the spatial reduction
            self.norm = nn.LayerNorm(dim)
        self.use_reference = False   # tests switch to the explicit-softmax reference

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, C]`` -> ``[B, heads, N, C / heads]``."""
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def reduce(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The reduced key/value tokens ``[B, N / R², C]``: ``R x R`` stride-``R`` conv of the token map, LayerNorm."""
        if self.sr_ratio == 1:
            return x
        b, n, c = x.shape
        reduced = self.sr(x.transpose(1, 2).reshape(b, c, height, width))
        return self.norm(reduced.flatten(2).transpose(1, 2))

    def attend(self, x: torch.Tensor, height: int, width: int, fast: bool = False) -> torch.Tensor:
        """The heads' outputs, concatenated: ``[B·N, C]``, before the output projection. ``fast`` (the inference
        path): the projections through :func:`ops.linear.linear` (oneDNN on CPU)."""
        b, n, c = x.shape
        kv = self.reduce(x, height, width)
        attend = efficient_attention_reference if self.use_reference else efficient_attention
        project = apply_linear if fast else (lambda lin, t: lin(t))
        q, k, v = project(self.q, x), project(self.k, kv), project(self.v, kv)
        out = attend(self._heads(q), self._heads(k), self._heads(v))
        return out.transpose(1, 2).reshape(b * n, c)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.proj(self.attend(x, height, width)).view(x.shape)
