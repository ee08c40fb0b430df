"""DANet's position and channel attention modules (Fu et al., CVPR 2019; models.md §4).

Both follow junfu1115/DANet ``PAM_Module`` / ``CAM_Module`` and keep their parameter names
(``query_conv``, ``key_conv``, ``value_conv``, ``gamma``), so reference checkpoints load as they are.

Position attention over the N = H·W positions of ``x`` (queries q = W_q x, keys k = W_k x, values v = W_v x)::

    E_ij = q_i · k_j                (plain dot product: no 1/sqrt(d) scaling)
    A_ij = exp(E_ij) / Σ_j exp(E_ij)
    y_i  = γ · Σ_j A_ij v_j + x_i

Channel attention over the C channels of ``x`` itself (no convolutions)::

    E   = X Xᵀ                      (C × C, X = x reshaped to C × N)
    E'  = rowmax(E) − E
    A   = softmax(E', last dim)
    y   = γ · A X + x

Low precision (bf16/fp16 inputs, or autocast): the energies E and the softmax are computed in float32 on float32
copies of q and k (of X for the channel attention), and A is cast back to the values' dtype for the weighted sum
(see :mod:`cityseg_zoo.ops.precision`). The SDPA path keeps q, k, v in their dtype: its fused kernels
accumulate the energies and take the softmax in float32 themselves; CPU bf16/fp16 inputs take that path on CPUs with
AMX, the chunked one elsewhere (see :func:`_sdpa_fits`).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .linear import linear, takes_onednn
from .precision import float32_island, upcast

# Above this many positions the N × N attention matrix is not materialised (4096² fp32 = 64 MiB per image):
# a 768 crop has N = 96² = 9216 at 1/8 (340 MiB per image), a 1024x2048 frame N = 32768 (4.3 GiB per image).
EXPLICIT_MAX_POSITIONS = 4096
# Entries of E computed at once by the chunked path (2^24 fp32 = 64 MiB per image).
CHUNK_ENTRIES = 1 << 24


def position_attention_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``out[:, :, i] = Σ_j softmax_j(q_i · k_j) v[:, :, j]``, with the whole N × N matrix, as the reference does.

    Args: ``q``, ``k``: ``[B, Cq, N]``; ``v``: ``[B, Cv, N]``. Returns ``[B, Cv, N]`` in ``v``'s dtype.
    """
    with float32_island(q):
        energy = torch.bmm(upcast(q).transpose(1, 2), upcast(k))   # [B, N, N] float32, E_ij = q_i · k_j
        attention = torch.softmax(energy, dim=-1)                   # normalised over the keys j, in float32
        return torch.bmm(v, attention.to(v.dtype).transpose(1, 2))  # [B, Cv, N]


def position_attention_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               chunk_entries: int = CHUNK_ENTRIES) -> torch.Tensor:
    """Same result as :func:`position_attention_explicit`, never holding more than ``chunk_entries`` of E.

    Each softmax row involves one query only, so splitting the queries into chunks is exact; the memory is
    O(chunk · N) instead of O(N²).
    """
    n = q.shape[-1]
    chunk = max(1, chunk_entries // n)
    q, k = upcast(q), upcast(k)     # once, not per chunk
    if takes_onednn(q):
        return torch.stack([_chunked_onednn(q[i], k[i], v[i], chunk) for i in range(q.shape[0])])
    outputs = [position_attention_explicit(q[:, :, start:start + chunk], k, v) for start in range(0, n, chunk)]
    return torch.cat(outputs, dim=-1)


def _chunked_onednn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int) -> torch.Tensor:
    """One image of :func:`position_attention_chunked` on CPU with both products through :func:`ops.linear.linear`
    (oneDNN: 0.35 s against 0.53 s through MKL for DANet's PAM at 512x1024 on a 2-core AMD EPYC): ``q``, ``k``
    ``[Cq, N]`` float32, ``v`` ``[Cv, N]`` -> ``[Cv, N]``. ``E = qᵀk`` is ``linear(qᵀ, kᵀ)``, ``A v`` is
    ``linear(A, v)``."""
    queries, keys, values = q.t(), k.t().contiguous(), v.contiguous()
    rows = []
    with float32_island(q):
        for start in range(0, queries.shape[0], chunk):
            energy = linear(queries[start:start + chunk], keys)              # [chunk, N] float32
            attention = torch.softmax(energy, dim=-1).to(v.dtype)
            rows.append(linear(attention, values))                          # [chunk, Cv]
    return torch.cat(rows).t()


def position_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Same result through ``scaled_dot_product_attention`` (FlashAttention / memory-efficient kernels on CUDA).

    Those kernels need one head size for q, k and v, while here q, k have ``Cq`` channels and v has ``Cv``.
    The value channels are split into ``Cv / Cq`` heads of ``Cq`` channels that all share the one q and k:
    softmax(q kᵀ) does not depend on the head, so each head is an exact slice of the output. ``scale=1``:
    DANet does not divide by sqrt(d). Requires ``Cv`` divisible by ``Cq`` (DANet: 512 = 8 × 64).
    """
    b, cq, n = q.shape
    cv = v.shape[1]
    if cv % cq:
        raise ValueError(f"value channels {cv} must be a multiple of query channels {cq} for the SDPA path")
    heads = cv // cq
    q_heads = q.transpose(1, 2).unsqueeze(1).expand(b, heads, n, cq).contiguous()   # [B, heads, N, Cq]
    k_heads = k.transpose(1, 2).unsqueeze(1).expand(b, heads, n, cq).contiguous()
    # The fused kernels want the head dimension contiguous (last-dim stride 1).
    v_heads = v.reshape(b, heads, cq, n).transpose(2, 3).contiguous()                # [B, heads, N, Cq]
    out = F.scaled_dot_product_attention(q_heads, k_heads, v_heads, scale=1.0)       # [B, heads, N, Cq]
    return out.transpose(2, 3).reshape(b, cv, n)


def _sdpa_fits(q: torch.Tensor, v: torch.Tensor) -> bool:
    # CPU float32: the chunked GEMMs win on a 2-core CPU. CPU bf16/fp16: with AMX the fused kernel wins (0.55 s
    # against 0.7-0.9 s for DANet's PAM at 512x1024, one AMX core); without it (AVX-512 bf16 only, a 2-core AMD
    # EPYC) the chunked path does (0.32 s against 0.74 s). The fused kernel takes its softmax in float32 internally.
    if v.shape[1] % q.shape[1]:
        return False
    return q.is_cuda or (q.dtype in (torch.bfloat16, torch.float16) and _cpu_has_amx())


@functools.cache
def _cpu_has_amx() -> bool:
    # torch's own probe (it also enables the AMX tiles for this process, as oneDNN does on first use); a torch
    # without it is taken as "no AMX".
    probe = getattr(getattr(torch._C, "_cpu", None), "_init_amx", None)
    return bool(probe()) if probe is not None else False


def position_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       memory_light: bool | None = None) -> torch.Tensor:
    """Position attention, dispatched by device and size; every path gives the same result.

    ``memory_light=None`` (automatic): on CUDA, and for bf16/fp16 inputs on AMX CPUs, :func:`position_attention_sdpa`
    (fused kernels, no N × N matrix); for float32 on CPU the explicit matrix up to ``EXPLICIT_MAX_POSITIONS``
    positions and the query-chunked computation above (there the chunked GEMMs beat SDPA's CPU kernel, which
    must repeat q·k for every head; in bf16 the kernel's blocked float32 softmax wins).
    ``True``: never the N × N matrix; ``False``: always the explicit reference.
    """
    if memory_light is False:
        return position_attention_explicit(q, k, v)
    if _sdpa_fits(q, v):
        return position_attention_sdpa(q, k, v)
    if memory_light is None:
        memory_light = q.shape[-1] > EXPLICIT_MAX_POSITIONS
    return position_attention_chunked(q, k, v) if memory_light else position_attention_explicit(q, k, v)


class PositionAttention(nn.Module):
    """DANet PAM: ``y = γ · Σ_j softmax_j(q_i · k_j) v_j + x`` with q, k of ``in_ch // 8`` channels.

    ``memory_light``: ``None`` (automatic, by the number of positions), ``True`` or ``False``.
    """

    benchmark_label = "position attention without N×N (chunked through oneDNN on CPU, SDPA on CUDA and AMX bf16)"

    def __init__(self, in_ch: int, memory_light: bool | None = None):
        super().__init__()
        self.query_conv = nn.Conv2d(in_ch, in_ch // 8, 1)
        self.key_conv = nn.Conv2d(in_ch, in_ch // 8, 1)
        self.value_conv = nn.Conv2d(in_ch, in_ch, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.memory_light = memory_light

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query_conv(x).flatten(2)
        k = self.key_conv(x).flatten(2)
        v = self.value_conv(x).flatten(2)
        out = position_attention(q, k, v, self.memory_light).reshape(b, c, h, w)
        return self.gamma * out + x


def channel_attention(x: torch.Tensor) -> torch.Tensor:
    """``softmax(rowmax(E) − E) X`` with ``E = X Xᵀ`` over the channels of ``x`` ``[B, C, H, W]``."""
    b, c, h, w = x.shape
    feats = x.reshape(b, c, -1)                                   # X: [B, C, N]
    with float32_island(x):
        wide = upcast(feats)
        energy = torch.bmm(wide, wide.transpose(1, 2))            # E = X Xᵀ: [B, C, C], float32
        # rowmax(E) − E as the reference writes it; softmax is shift-invariant, so this is softmax(−E).
        energy_new = energy.max(dim=-1, keepdim=True)[0].expand_as(energy) - energy
        attention = torch.softmax(energy_new, dim=-1)
        return torch.bmm(attention.to(feats.dtype), feats).view(b, c, h, w)


class ChannelAttention(nn.Module):
    """DANet CAM: ``y = γ · softmax(rowmax(E) − E) X + x``, ``E = X Xᵀ``; no convolutions, only ``gamma``."""

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * channel_attention(x) + x
