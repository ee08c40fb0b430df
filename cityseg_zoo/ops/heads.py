"""Multi-head attention's reshapes: ``[..., N, heads · d]`` <-> ``[..., heads, N, d]``."""
from __future__ import annotations

import torch


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, N, heads · d]`` -> ``[B, heads, N, d]`` (a view)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(out: torch.Tensor) -> torch.Tensor:
    """``[B, heads, N, d]`` (an attention output) -> ``[B, N, heads · d]``.

    Eager: a view, since CPU ``scaled_dot_product_attention`` returns its output laid out as ``[B, N, heads, d]``.
    Under ``torch.export`` the traced reshape is recorded as that view, and the ONNX decomposition of the attention
    then produces another layout that cannot be viewed so; an explicit copy there keeps the graph valid.
    """
    out = out.transpose(1, 2)
    if torch.compiler.is_exporting():
        out = out.clone(memory_format=torch.contiguous_format)
    return out.flatten(2)
