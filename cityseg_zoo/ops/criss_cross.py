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
"""
from __future__ import annotations

import torch
from torch import nn


def criss_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``Σ_{p ∈ Ω(u)} softmax_p(q_u · k_p) v_p`` for every pixel u.

    Args: ``q``, ``k``: ``[B, Cq, H, W]``; ``v``: ``[B, Cv, H, W]``. Returns ``[B, Cv, H, W]``.
    """
    h = q.shape[2]
    energy_col = torch.einsum("bcij,bchj->bijh", q, k)           # u=(i,j) with (h,j): column j, [B, H, W, H]
    energy_row = torch.einsum("bcij,bciw->bijw", q, k)           # u=(i,j) with (i,w): row i, [B, H, W, W]
    # u itself belongs to the row; drop it from the column (h == i) so that it is counted once.
    self_in_col = torch.eye(h, dtype=torch.bool, device=q.device).view(1, h, 1, h)
    energy_col = energy_col.masked_fill(self_in_col, float("-inf"))
    attention = torch.softmax(torch.cat([energy_col, energy_row], dim=-1), dim=-1)   # joint over H + W entries
    att_col, att_row = attention.split([h, attention.shape[-1] - h], dim=-1)
    return torch.einsum("bijh,bchj->bcij", att_col, v) + torch.einsum("bijw,bciw->bcij", att_row, v)


class CrissCrossAttention(nn.Module):
    """CCNet CCA: ``y = γ · criss_cross_attention(q, k, v) + x`` with q, k of ``in_ch // 8`` channels."""

    def __init__(self, in_ch: int):
        super().__init__()
        self.query_conv = nn.Conv2d(in_ch, in_ch // 8, 1)
        self.key_conv = nn.Conv2d(in_ch, in_ch // 8, 1)
        self.value_conv = nn.Conv2d(in_ch, in_ch, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = criss_cross_attention(self.query_conv(x), self.key_conv(x), self.value_conv(x))
        return self.gamma * out + x
