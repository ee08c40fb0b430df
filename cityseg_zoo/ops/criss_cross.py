"""Criss-cross attention (Huang et al., CCNet, ICCV 2019; models.md §5).

Parameter names follow speedinghzl/CCNet ``CrissCrossAttention`` (``query_conv``, ``key_conv``, ``value_conv``,
``gamma``). For the pixel u = (i, j), with q = W_q x, k = W_k x, v = W_v x, the attended set Ω(u) is row i
(all W pixels, u itself included) and column j without u (H − 1 pixels), so every pixel counts once::

    d_u,p = q_u · k_p                       p ∈ Ω(u), |Ω(u)| = H + W − 1, plain dot product (no scaling)
    A_u,p = exp(d_u,p) / Σ_p' exp(d_u,p')   one softmax over the whole cross
    y_u   = γ · Σ_p A_u,p v_p + x_u

These are the index rules of the 2018 CUDA kernels ``ca_weight`` / ``ca_map`` that trained the released models;
the 2021 pure-PyTorch version writes the same thing with −inf on the column branch's diagonal, as done here.
Memory is O(B · H · W · (H + W)): energies are computed per row and per column, never over all pixel pairs.

:func:`criss_cross_attention_reference` reads like the equation; :func:`criss_cross_attention_fast` computes the
same thing with batched GEMMs on pixel-major layouts, one shared softmax without concatenating the two energy
maps, and in-place updates (so it runs only where no gradient is needed). :func:`criss_cross_attention` picks.

Low precision (bf16/fp16 inputs, or autocast): both paths compute the energies, their exponentials and the
softmax denominators in float32 on float32 copies of q and k; the weights meet the values in ``v``'s dtype
(see :mod:`cityseg_zoo.ops.precision`).
"""
from __future__ import annotations

import torch
from torch import nn

from .precision import float32_island, upcast


def criss_cross_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``Σ_{p ∈ Ω(u)} softmax_p(q_u · k_p) v_p`` for every pixel u.

    Args: ``q``, ``k``: ``[B, Cq, H, W]``; ``v``: ``[B, Cv, H, W]``. Returns ``[B, Cv, H, W]``.
    """
    h = q.shape[2]
    with float32_island(q):
        q, k = upcast(q), upcast(k)                              # float32 energies and softmax
        energy_col = torch.einsum("bcij,bchj->bijh", q, k)       # u=(i,j) with (h,j): column j, [B, H, W, H]
        energy_row = torch.einsum("bcij,bciw->bijw", q, k)       # u=(i,j) with (i,w): row i, [B, H, W, W]
        # u itself belongs to the row; drop it from the column (h == i) so that it is counted once.
        self_in_col = torch.eye(h, dtype=torch.bool, device=q.device).view(1, h, 1, h)
        energy_col = energy_col.masked_fill(self_in_col, float("-inf"))
        attention = torch.softmax(torch.cat([energy_col, energy_row], dim=-1), dim=-1)   # joint over H + W entries
        att_col, att_row = attention.to(v.dtype).split([h, attention.shape[-1] - h], dim=-1)
        return torch.einsum("bijh,bchj->bcij", att_col, v) + torch.einsum("bijw,bciw->bcij", att_row, v)


def criss_cross_attention_fast(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """:func:`criss_cross_attention_reference` without the concatenated energy map and its copies.

    Rows are a batch of B·H problems of W pixels and columns a batch of B·W problems of H pixels; both
    energies are exponentiated in place against the shared per-pixel maximum, so the softmax denominator is
    their sum. Peak extra memory: the two energy maps (B·H·W·(H + W) entries) and pixel-major copies of q, k, v.
    In-place: call it under ``torch.no_grad()`` (or on tensors that need no gradient).
    """
    b, cq, h, w = q.shape
    cv = v.shape[1]
    with float32_island(q):
        q, k = upcast(q), upcast(k)      # energies, exponentials and denominators in float32
        # Pixel-major layouts (free when the input is channels_last): rows [B·H, W, C], columns [B·W, H, C].
        q_row, k_row, v_row = (t.permute(0, 2, 3, 1).reshape(b * h, w, -1) for t in (q, k, v))
        q_col, k_col, v_col = (t.permute(0, 3, 2, 1).reshape(b * w, h, -1) for t in (q, k, v))
        energy_row = torch.bmm(q_row, k_row.transpose(1, 2)).view(b, h, w, w)     # [B, H, W (u), W (p)]
        energy_col = torch.bmm(q_col, k_col.transpose(1, 2)).view(b, w, h, h)     # [B, W, H (u), H (p)]
        energy_col.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))                # u itself is counted in its row
        # Shared maximum over the whole cross of each pixel u = (i, j), as one softmax over H + W − 1 entries.
        peak = torch.maximum(energy_row.amax(dim=-1), energy_col.amax(dim=-1).transpose(1, 2))   # [B, H, W]
        energy_row.sub_(peak.unsqueeze(-1)).exp_()
        energy_col.sub_(peak.transpose(1, 2).unsqueeze(-1)).exp_()
        denominator = energy_row.sum(dim=-1) + energy_col.sum(dim=-1).transpose(1, 2)             # [B, H, W]
        # The unnormalised weights (in [0, 1]) meet the values in v's dtype; the division stays float32-exact.
        out_row = torch.bmm(energy_row.view(b * h, w, w).to(v.dtype), v_row).view(b, h, w, cv)   # [B, H, W, Cv]
        out_col = torch.bmm(energy_col.view(b * w, h, h).to(v.dtype), v_col).view(b, w, h, cv)   # [B, W, H, Cv]
        out = out_row.add_(out_col.transpose(1, 2)).div_(denominator.unsqueeze(-1))
        return out.permute(0, 3, 1, 2)                                                           # [B, Cv, H, W]


def criss_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``Σ_{p ∈ Ω(u)} softmax_p(q_u · k_p) v_p``: the fast path when no gradient is needed, else the reference.

    Args: ``q``, ``k``: ``[B, Cq, H, W]``; ``v``: ``[B, Cv, H, W]``. Returns ``[B, Cv, H, W]``.
    """
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    return criss_cross_attention_reference(q, k, v) if needs_grad else criss_cross_attention_fast(q, k, v)


class CrissCrossAttention(nn.Module):
    """CCNet CCA: ``y = γ · criss_cross_attention(q, k, v) + x`` with q, k of ``in_ch // 8`` channels."""

    benchmark_label = "criss-cross: row/column GEMMs, shared in-place softmax"

    def __init__(self, in_ch: int):
        super().__init__()
        self.query_conv = nn.Conv2d(in_ch, in_ch // 8, 1)
        self.key_conv = nn.Conv2d(in_ch, in_ch // 8, 1)
        self.value_conv = nn.Conv2d(in_ch, in_ch, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = criss_cross_attention(self.query_conv(x), self.key_conv(x), self.value_conv(x))
        return self.gamma * out + x
