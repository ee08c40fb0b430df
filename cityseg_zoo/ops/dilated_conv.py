"""Wide dilated 3x3 convolutions in bf16/fp16 on CPU as three GEMMs over shifted rows (ASPP's 12/24/36).

oneDNN's low-precision kernels lose their speed on wide, strongly dilated 3x3 convolutions: ASPP's 2048 -> 256
channel branches on a 64x128 map ran at 130 / 65 / 53 GFLOP/s for dilations 12 / 24 / 36 on one AMX core, against
~600 at dilation 1 (float32 does not degrade). The same convolution, written out::

    y[r, c] = b + Σ_{i, j ∈ {0, 1, 2}} W[:, :, i, j] · x[r + (i − 1)·d, c + (j − 1)·d]      (zero outside the map)

is, for each kernel row ``i``, one GEMM of the input rows ``r + (i − 1)·d`` (a contiguous block of a channels_last
map; rows that fall in the zero padding are skipped) with the three taps ``W[:, :, i, 0..2]`` side by side, then
three shifted additions of its ``C_out``-channel products into a float32 accumulator. That ran at 480-620 GFLOP/s
on the same shapes (4-12x the oneDNN kernel). :class:`DilatedConv2d` takes this path only where it was measured
to win (see :func:`takes_row_gemms`); float32, CUDA and everything else keep ``nn.Conv2d``'s convolution.
"""
from __future__ import annotations

import torch
from torch import nn

_LOW = (torch.bfloat16, torch.float16)
# Measured on one AMX core (bf16, 64x128 map): 2048 -> 256 wins from dilation 4 (442 against 226 GFLOP/s),
# 1024 -> 256 from 12; 512 -> 512 (ResNet layer4, dilations 4-16) stays faster in oneDNN (~950 against 280-410).
MIN_DILATION = 4
MIN_IN_CHANNELS = 1024


def conv3x3_row_gemms(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      dilation: int) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=dilation, dilation=dilation)`` for a 3x3 ``weight`` (groups 1,
    stride 1) as three row GEMMs and nine shifted additions, accumulated in float32; returns ``x``'s dtype,
    channels_last."""
    b, c_in, h, w = x.shape
    c_out = weight.shape[0]
    pixels = x.permute(0, 2, 3, 1)                         # [B, H, W, C_in]: a view of a channels_last map
    out = torch.zeros(b, h, w, c_out, dtype=torch.float32, device=x.device)
    for i in range(3):
        dy = (i - 1) * dilation
        r0, r1 = max(0, -dy), min(h, h - dy)               # output rows whose kernel row i lands on the map
        if r0 >= r1:
            continue
        rows = pixels[:, r0 + dy:r1 + dy].reshape(-1, c_in)                      # [B·rows·W, C_in]
        taps = weight[:, :, i, :].permute(1, 2, 0).reshape(c_in, 3 * c_out)      # [C_in, (j, C_out)]
        products = (rows @ taps).view(b, r1 - r0, w, 3, c_out)
        for j in range(3):
            dx = (j - 1) * dilation
            c0, c1 = max(0, -dx), min(w, w - dx)
            if c0 < c1:
                out[:, r0:r1, c0:c1] += products[:, :, c0 + dx:c1 + dx, j]
    if bias is not None:
        out += bias
    return out.to(x.dtype).permute(0, 3, 1, 2)           # [B, C_out, H, W], channels_last in memory


def takes_row_gemms(conv: nn.Conv2d) -> bool:
    """The shapes where :func:`conv3x3_row_gemms` beat oneDNN's low-precision kernel: 3x3, stride 1, groups 1,
    padding = dilation >= ``MIN_DILATION``, at least ``MIN_IN_CHANNELS`` input channels."""
    d = conv.dilation[0]
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.groups == 1
            and conv.dilation == (d, d) and conv.padding == (d, d) and d >= MIN_DILATION
            and conv.in_channels >= MIN_IN_CHANNELS and conv.padding_mode == "zeros")


class DilatedConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters and state dict) that runs :func:`conv3x3_row_gemms` for bf16/fp16 CPU
    inputs when no gradient is needed. The inference switch turns qualifying convs into it (``__class__``)."""

    benchmark_label = "wide dilated 3x3 convs as row GEMMs (bf16 CPU)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dtype in _LOW and not x.is_cuda and self.weight.dtype == x.dtype
                and not (torch.is_grad_enabled() and self.weight.requires_grad)):
            return conv3x3_row_gemms(x, self.weight, self.bias, self.dilation[0])
        return super().forward(x)


def use_row_gemms(model: nn.Module) -> int:
    """Turn every qualifying ``nn.Conv2d`` of ``model`` into a :class:`DilatedConv2d` in place; returns how many."""
    convs = [m for m in model.modules() if type(m) is nn.Conv2d and takes_row_gemms(m)]
    for conv in convs:
        conv.__class__ = DilatedConv2d
    return len(convs)
