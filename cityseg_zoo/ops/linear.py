"""``x · Wᵀ + b`` on CPU through oneDNN's 1x1 convolution instead of the BLAS GEMM.

Why: torch's CPU ``F.linear`` / ``addmm`` / ``mm`` in float32 call MKL's sgemm, which on AMD CPUs runs a generic
code path. Measured on this project's 2-core AMD EPYC (avx512, 2 threads, fp32), for the token GEMMs of Swin and
Mask2Former's pixel decoder: ``[2048, 768] x [768, 2304]`` 190 GFLOP/s with ``addmm`` against 460 through oneDNN;
``[8192, 384] x [384, 1536]`` 167 against 498; ``[32768, 768] x [768, 192]`` 188 against 463; the one shape
where both are slow, ``K = 192``, 130 against 206. oneDNN's convolutions are what the ResNet models already run
on (and what the GEMM ceiling of ``cityseg_zoo.cli.benchmark`` is set by). The product is exactly a 1x1
convolution: a row-major ``[M, K]`` matrix *is* the channels_last (NHWC) memory of a ``[1, K, M, 1]`` image, so
neither the input nor the output is copied. On Intel CPUs, where MKL is fast, oneDNN is as fast.

:func:`linear_reference` is ``F.linear``; :func:`linear` takes the convolution on CPU float32 and falls back to
``F.linear`` everywhere else (CUDA, other dtypes: bf16 ``F.linear`` already runs in oneDNN on CPU). Results
agree to float32 rounding (a different summation order); ``tests/test_ops_fast.py`` checks it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def takes_onednn(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x [..., K]``, ``weight [N, K]``; on CPU float32 as a oneDNN 1x1 conv."""
    if not takes_onednn(x) or x.numel() == 0:
        return F.linear(x, weight, bias)
    k, n = x.shape[-1], weight.shape[0]
    rows = x.reshape(-1, k)
    if rows.stride() != (k, 1):
        rows = rows.contiguous()
    image = rows.view(1, rows.shape[0], 1, k).permute(0, 3, 1, 2)         # [1, K, M, 1], NHWC = the rows
    out = F.conv2d(image, weight.reshape(n, k, 1, 1), bias)               # [1, N, M, 1], channels_last
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], n)              # a view when oneDNN kept NHWC


def apply_linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` through :func:`linear`."""
    return linear(x, module.weight, module.bias)
