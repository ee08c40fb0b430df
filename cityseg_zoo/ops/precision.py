"""The float32 islands of low-precision inference: where a bf16/fp16 model still computes in float32.

A softmax over dot products is the place where bf16 is not enough: its inputs are energies of magnitude 10-1000
(DANet's channel attention sums over every pixel of the map), bf16 keeps 8 significant bits, so an energy of 300
rounded to bf16 is off by up to 1, which multiplies its attention weight by up to e. The attention ops therefore
compute their energies as float32 GEMMs of float32 copies of q and k (small: ``C / 8`` channels, or one ``C x C``
product), take the softmax in float32, and only then return to the values' dtype for the weighted sum (an ordinary
GEMM, where bf16 inputs with float32 accumulation are fine).

This holds for both ways of running in low precision: a model whose weights were converted
(``optimize_for_inference(dtype=torch.bfloat16)``), and ``torch.autocast`` (``predict(..., amp_dtype=...)``),
whose CPU policy would run the energy GEMM in bf16 and leave the softmax in its input's dtype. For float32 (or
float64) inputs without autocast both helpers are no-ops, so float32 results are exactly those of the plain code.
"""
from __future__ import annotations

import contextlib

import torch

_LOW = (torch.bfloat16, torch.float16)


def float32_island(t: torch.Tensor):
    """A context in which autocast, if it is on for ``t``'s device, is off: ops run in their inputs' dtypes."""
    device = t.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):   # not on "meta"
        return torch.autocast(device, enabled=False)
    return contextlib.nullcontext()


def upcast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if it is bf16/fp16; float32 and float64 tensors are returned as they are."""
    return t.float() if t.dtype in _LOW else t
