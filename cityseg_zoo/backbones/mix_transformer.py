"""Mix Transformer (MiT-B0 ... B5), SegFormer's hierarchical encoder (Xie et al., NeurIPS 2021, §3.1).

Four stages, each: an **overlapping patch embedding** (a strided conv, kernel 7 / stride 4 for the first stage and
3 / 2 after, then LayerNorm), a stack of **transformer blocks** (pre-norm efficient self-attention with spatial
reduction ratio 8 / 4 / 2 / 1, then a **Mix-FFN**: Linear -> depth-wise 3x3 conv -> GELU -> Linear, whose conv
leaks the position information that replaces positional encodings), and a final LayerNorm. The stage outputs, at
strides 4, 8, 16 and 32, are returned as ``[B, C_i, H_i, W_i]`` maps.

Numerics are those of ``transformers``' ``SegformerModel`` (whose converted checkpoints the zoo loads): every
LayerNorm has PyTorch's default eps 1e-5 (``layer_norm_eps=1e-6`` of its config is unused; the paper's mmseg code
used 1e-6 in the blocks and stage norms), GELU is the exact erf form, and no dropout is active at inference.

Inference path (:meth:`Block.fuse_for_inference`, run by the inference switch): the same maths with fewer memory
passes. Each residual branch's last Linear accumulates straight into the residual stream (``x.add_(b).addmm_(y, Wᵀ)``
instead of a bias copy, a GEMM into a new tensor and an add), and GELU runs in place on the depth-wise conv's output.
CPU float32 GEMMs of these sizes are fast enough that allocating (and page-faulting) those temporaries is a large part
of a block's time. On CPU float32 every Linear of the path runs through :func:`ops.linear.linear` instead (oneDNN's
1x1 convolution, 1.5-2.5x MKL's sgemm on AMD CPUs), whose product goes to a temporary that is then added.

In bf16/fp16 (the low-precision switch) the residual stream stays float32: each block adds two small branch outputs
to it, and rounding the stream to bf16 at every addition was most of SegFormer-B0's bf16
error (1.1% of the logits after 8 blocks); the branches read a bf16 copy of it and run in bf16.

Tokens stay ``[B, N, C]`` inside a stage. The stage output map is a view of the tokens with channels last in memory
(``reshape(B, H, W, C).permute(0, 3, 1, 2)``), not a contiguous copy: the next patch embedding (a conv) and the
decode head read it in that layout directly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from ..ops.efficient_attention import EfficientSelfAttention
from ..ops.linear import apply_linear, takes_onednn
from ..ops.precision import upcast


@dataclass(frozen=True)
class MiTConfig:
    """One Mix Transformer size (the paper's Table 6; transformers' ``SegformerConfig`` of the nvidia checkpoints)."""
    hidden_sizes: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    patch_sizes: tuple[int, int, int, int] = (7, 3, 3, 3)
    strides: tuple[int, int, int, int] = (4, 2, 2, 2)
    mlp_ratio: int = 4
    drop_path_rate: float = 0.1


MIT_CONFIGS = {
    "b0": MiTConfig(hidden_sizes=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "b1": MiTConfig(hidden_sizes=(64, 128, 320, 512), depths=(2, 2, 2, 2)),
    "b2": MiTConfig(hidden_sizes=(64, 128, 320, 512), depths=(3, 4, 6, 3)),
    "b3": MiTConfig(hidden_sizes=(64, 128, 320, 512), depths=(3, 4, 18, 3)),
    "b4": MiTConfig(hidden_sizes=(64, 128, 320, 512), depths=(3, 8, 27, 3)),
    "b5": MiTConfig(hidden_sizes=(64, 128, 320, 512), depths=(3, 6, 40, 3)),
}


def tokens_to_map(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[B, N, C]`` tokens as a ``[B, C, H, W]`` map (a channels-last view, no copy)."""
    return x.view(x.shape[0], height, width, x.shape[2]).permute(0, 3, 1, 2)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` map as ``[B, H·W, C]`` tokens (free for a channels-last map)."""
    return x.flatten(2).transpose(1, 2)


class OverlapPatchEmbed(nn.Module):
    """Strided conv with ``patch_size // 2`` padding (neighbouring patches overlap), then LayerNorm on the tokens."""

    def __init__(self, in_ch: int, dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, kernel_size=patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(map_to_tokens(x)), height, width


class MixFFN(nn.Module):
    """``fc2(GELU(dwconv3x3(fc1(x))))`` with hidden width ``mlp_ratio · C``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.fc1(x)
        x = map_to_tokens(self.dwconv(tokens_to_map(x, height, width)))
        return self.fc2(F.gelu(x))

    def hidden_inference(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``GELU(dwconv(fc1(x)))`` as ``[B·N, hidden]``, GELU in place (inference only)."""
        hidden = self.dwconv(tokens_to_map(apply_linear(self.fc1, x), height, width))
        torch.ops.aten.gelu_(hidden)
        return map_to_tokens(hidden).reshape(-1, hidden.shape[1])


class Block(nn.Module):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; stochastic depth on both branches when training."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.inference = False   # set by fuse_for_inference

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if self.inference:
            return self._forward_inference(x, height, width)
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))

    def _forward_inference(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        # The residual stream, updated in place: x itself in float32, a float32 copy of a bf16/fp16 x.
        stream = upcast(x).contiguous().view(-1, x.shape[-1])
        tokens = stream.view(x.shape)
        low = self.norm1.weight.dtype     # the branches' dtype (a no-op cast in float32)
        _accumulate(stream, self.attn.attend(self.norm1(tokens.to(low)), height, width, fast=True), self.attn.proj)
        _accumulate(stream, self.mlp.hidden_inference(self.norm2(tokens.to(low)), height, width), self.mlp.fc2)
        return tokens

    def fuse_for_inference(self) -> None:
        """Switch to the in-place inference path (eval only: nothing is recorded for autograd)."""
        if self.training:
            raise ValueError("fuse_for_inference needs an eval-mode model")
        self.inference = True


def _accumulate(stream: torch.Tensor, y: torch.Tensor, lin: nn.Linear) -> None:
    """``stream += lin(y)`` for ``[rows, C]`` ``stream`` and ``[rows, C_in]`` ``y``: in float32 off the CPU as one
    in-place ``addmm_`` (no temporary); on CPU float32 through oneDNN (:func:`ops.linear.linear`) into a temporary
    that is added; in low precision (bf16 weights, or autocast) the GEMM runs in its dtype and is added to the float32
    stream."""
    if y.dtype == stream.dtype == lin.weight.dtype and not takes_onednn(y):
        stream.add_(lin.bias).addmm_(y, lin.weight.t())
    else:   # CPU float32: oneDNN's GEMM into a temporary beats MKL's in place (ops/linear.py)
        stream.add_(apply_linear(lin, y))


class Stage(nn.Module):
    """Patch embedding, blocks, LayerNorm; returns the stage output as a ``[B, C, H, W]`` map."""

    def __init__(self, in_ch: int, dim: int, patch_size: int, stride: int, depth: int, num_heads: int,
                 sr_ratio: int, mlp_ratio: int, drop_paths: list[float]):
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_ch, dim, patch_size, stride)
        self.blocks = nn.ModuleList(Block(dim, num_heads, sr_ratio, mlp_ratio, drop_paths[i]) for i in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, height, width = self.patch_embed(x)
        for block in self.blocks:
            x = block(x, height, width)
        # The inference path's float32 stream meets the norm's dtype (a no-op cast in float32).
        return tokens_to_map(self.norm(x.to(self.norm.weight.dtype)), height, width)


class MixTransformer(nn.Module):
    """MiT encoder returning the four stage maps ``[B, C_i, H/4·2^-i, W/4·2^-i]``, i = 0..3."""

    imagenet_weights_note = ("the Mix Transformer has no timm ImageNet weights (its ImageNet-1k encoders are the "
                             "Hub's nvidia/mit-b0 ... mit-b5)")

    def __init__(self, cfg: MiTConfig, in_ch: int = 3):
        super().__init__()
        total = sum(cfg.depths)
        # Stochastic depth grows linearly from 0 to drop_path_rate over all blocks (timm / transformers rule).
        rates = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, start = [], 0
        for i, depth in enumerate(cfg.depths):
            stages.append(Stage(in_ch if i == 0 else cfg.hidden_sizes[i - 1], cfg.hidden_sizes[i], cfg.patch_sizes[i],
                                cfg.strides[i], depth, cfg.num_heads[i], cfg.sr_ratios[i], cfg.mlp_ratio,
                                rates[start:start + depth]))
            start += depth
        self.stages = nn.ModuleList(stages)
        self.cfg = cfg
        self.out_channels = list(cfg.hidden_sizes)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def _init_weights(m: nn.Module) -> None:
    """The paper's initialisation (trunc-normal 0.02 Linear, fan-out normal conv, unit LayerNorm)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
        nn.init.zeros_(m.bias)


def mix_transformer(variant: str) -> MixTransformer:
    """The encoder of SegFormer-``variant`` (``"b0"`` ... ``"b5"``)."""
    return MixTransformer(MIT_CONFIGS[variant])
