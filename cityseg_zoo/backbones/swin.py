"""Swin Transformer (Liu et al., ICCV 2021), the backbone of Mask2Former's Swin models, in its detectron2 form.

A 4x4 patch embedding, then four stages of Swin blocks at strides 4, 8, 16, 32, with a patch merging between
stages. A block is ``x + W-MSA(LN(x))`` then ``x + MLP(LN(x))``; every second block shifts its windows by half a
window (SW-MSA), with the cyclic shift's attention mask. Attention inside a ``w x w`` window adds a learned
relative position bias ``B[Δy, Δx]`` per head (the paper's eq. 4). The backbone returns every stage's output
*before* its patch merging, each through its own LayerNorm (transformers' ``hidden_states_norms``; detectron2's
``D2SwinTransformer`` ``norm{i}``) as ``[B, C_i, H_i, W_i]`` maps.

Sizes that are not multiples of the patch or window size are handled as the reference does (the original Swin
code, detectron2's ``D2SwinTransformer`` and transformers' ``SwinBackbone`` with ``always_partition=True``): the
image is zero-padded right/bottom to a multiple of 4 before the patch embedding; each block zero-pads its normed
input right/bottom to a multiple of the window, *then* rolls it (the shift), and the pad tokens take part in the
attention (they are not masked); the shift mask is built on the padded size with the value -100; a patch merging
zero-pads odd maps to even. Stage ``i+1`` has ``ceil(H_i / 2)`` rows.

Why not timm's ``SwinTransformer``: timm rolls the map *before* padding it to the window size
(``SwinTransformerBlock._attn``), so on any map that is not a multiple of the window (Cityscapes' 1024x2048 gives
256x512 at stride 4, not a multiple of 7 or 12) its windows, and so its numbers, differ from the reference the
checkpoints were trained with; and its fused ``qkv`` Linear cannot be reached by the zoo's key renaming (the
transformers checkpoints hold ``query`` / ``key`` / ``value`` separately). This file is checked against
transformers' ``SwinBackbone`` on odd sizes (``tests/test_mask2former.py``).

Window attention runs through ``F.scaled_dot_product_attention`` with the relative position bias (plus the shift
mask in shifted blocks) as its float ``attn_mask``; the shift mask of one input size is built once per stage.

Inference path (``SwinBlock.fuse_for_inference``, run by the inference switch): q, k and v are one GEMM on the real
tokens and one zero row per image (a pad token's q/k/v is the bias), every GEMM through :func:`ops.linear.linear`
(oneDNN on CPU, 1.5-2.5x MKL's float32 speed on AMD CPUs); pad, shift and partition become one precomputed gather
(:class:`WindowPlan`), and the reverse one ``index_add_`` of the projected output into the residual stream, run by
run of windows so that the windows' q/k/v exist a few hundred windows at a time; only the last window row and
column (where the shift's regions meet) get a bias + mask tensor, the others the bias broadcast (at Swin-L's stage
1 of a 1024x2048 image: 32 MiB instead of 470 MiB); the MLP runs in row chunks with GELU and the residuals in place.
``tests/test_mask2former.py`` checks it against the reference blocks on odd sizes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from ..export import ExportError
from ..ops.heads import merge_heads, split_heads
from ..ops.linear import apply_linear, linear

MLP_CHUNK_ROWS = 1 << 14   # tokens per step of the inference path's MLP (Swin-L stage 1: a 48 MiB hidden block)
WINDOW_CHUNK_TOKENS = 1 << 15   # window tokens per step of the inference path's attention (Swin-L: 72 MiB of q/k/v)
SHIFT_MASK_VALUE = -100.0   # the reference's value for token pairs of different shift regions (not -inf)
DYNAMIC_EXPORT_ERROR = (
    "Swin's window attention cannot be exported with dynamic height/width: every block zero-pads its map to a "
    "multiple of the window (7 or 12) and rolls it by half a window, and every patch merging rounds odd sizes up, "
    "so the four stages' sizes become nested ceil/mod expressions of H and W that torch.export's shape solver takes "
    "minutes per block to reason about (measured: 12 s for one block, over 5 min for the Swin-T backbone). Export at "
    "a fixed size (dynamic_hw=False), one file per input size.")


@dataclass(frozen=True)
class SwinConfig:
    embed_dim: int
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    window_size: int
    patch_size: int = 4
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.3    # Mask2Former's Cityscapes configs (MODEL.SWIN.DROP_PATH_RATE)

    @property
    def channels(self) -> list[int]:
        return [self.embed_dim * 2 ** i for i in range(len(self.depths))]


# Mask2Former's Cityscapes semantic configs (configs/cityscapes/semantic-segmentation/swin/*.yaml) and the Hub's
# facebook/mask2former-swin-{tiny,small,base-IN21k,large}-cityscapes-semantic config.json backbone_config.
SWIN_CONFIGS = {
    "t": SwinConfig(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "s": SwinConfig(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "b": SwinConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12),
    "l": SwinConfig(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12),
}


def relative_position_index(window: int) -> torch.Tensor:
    """``[w², w²]`` index into the ``(2w-1)²``-row bias table: row ``(Δy + w-1) · (2w-1) + (Δx + w-1)``."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    delta = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return delta[..., 0] * (2 * window - 1) + delta[..., 1]


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``[B, H, W, C]`` (H, W multiples of ``window``) -> ``[B · nW, w², C]``, windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).transpose(2, 3)
    return x.reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[B · nW, w², C]`` -> ``[B, H, W, C]``."""
    c = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, c).transpose(2, 3)
    return x.reshape(-1, height, width, c)


def shift_mask(height: int, width: int, window: int, shift: int, device=None) -> torch.Tensor:
    """``[nW, w², w²]`` additive mask of a shifted block on a padded ``height x width`` map: 0 for token pairs of
    the same cyclic-shift region, -100 otherwise (9 regions: 3 bands per axis, split at ``-window`` and
    ``-shift``)."""
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    row_region = (rows >= height - window).long() + (rows >= height - shift).long()
    col_region = (cols >= width - window).long() + (cols >= width - shift).long()
    region = (row_region[:, None] * 3 + col_region[None, :]).float()
    ids = window_partition(region[None, :, :, None], window).squeeze(-1)            # [nW, w²]
    mask = ids[:, None, :] - ids[:, :, None]
    return mask.masked_fill(mask != 0, SHIFT_MASK_VALUE)


@dataclass
class WindowPlan:
    """Where one block's window tokens come from and go back to, for the inference path (one input size).

    The token table of a ``[B, H·W, C]`` sequence has ``H·W + 1`` rows per image, the last one the pad token (the
    value a zero-padded position takes). ``gather`` lists, window after window, the table row of every window
    token: the pad, the cyclic shift and the window partition of the reference in one index. The windows that no
    shift mask touches come first (``plain`` of them: all in an unshifted block); the last window row and column,
    where the shift's regions meet, follow with their ``mask`` (``[windows - plain, w², w²]``). ``chunks`` splits
    the windows into runs of a bounded size, never across ``plain``: ``(first, end, src, dst)``, where ``src`` are
    the positions of the run's real tokens among its window tokens and ``dst`` their rows in the ``[B · H·W, C]``
    sequence (the reverse partition, shift and crop in one index).
    """

    gather: torch.Tensor
    chunks: list[tuple[int, int, torch.Tensor, torch.Tensor]]
    plain: int
    mask: torch.Tensor | None


def window_plan(batch: int, height: int, width: int, window: int, shift: int, device=None) -> WindowPlan:
    """The :class:`WindowPlan` of a ``height x width`` map (see there)."""
    padded_h, padded_w = -(-height // window) * window, -(-width // window) * window
    rows, cols = padded_h // window, padded_w // window
    # torch.roll(x, -shift) reads x[(i + shift) % n]; positions beyond the map read the pad token (index H·W).
    src_r = (torch.arange(padded_h, device=device) + shift) % padded_h
    src_c = (torch.arange(padded_w, device=device) + shift) % padded_w
    token = torch.where((src_r[:, None] < height) & (src_c[None, :] < width), src_r[:, None] * width + src_c[None, :],
                        height * width)
    windows = token.view(rows, window, cols, window).transpose(1, 2).reshape(rows * cols, window * window)
    mask, n_plain = None, rows * cols
    if shift:
        grid = torch.arange(rows * cols, device=device).view(rows, cols)
        edge = torch.zeros(rows, cols, dtype=torch.bool, device=device)
        edge[-1, :] = True
        edge[:, -1] = True
        windows = windows[torch.cat([grid[~edge], grid[edge]])]
        mask = shift_mask(padded_h, padded_w, window, shift, device)[grid[edge]].repeat(batch, 1, 1)
        n_plain = int((~edge).sum())
    per_image, n = height * width + 1, window * window
    offsets = torch.arange(batch, device=device).view(-1, 1, 1) * per_image
    gather = torch.cat([(windows[:n_plain] + offsets).flatten(), (windows[n_plain:] + offsets).flatten()])
    plain, total = n_plain * batch, gather.numel() // n
    step = max(1, WINDOW_CHUNK_TOKENS // n)
    chunks = []
    for lo, hi in ((0, plain), (plain, total)):
        for first in range(lo, hi, step):
            end = min(first + step, hi)
            rows_ = gather[first * n:end * n]
            real = rows_ % per_image != height * width
            dst = (rows_[real] // per_image) * (height * width) + rows_[real] % per_image
            chunks.append((first, end, real.nonzero().squeeze(1), dst))
    return WindowPlan(gather, chunks, plain, mask)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias per head."""

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads, self.window = num_heads, window
        self.q = nn.Linear(dim, dim)   # separate q/k/v as in the transformers checkpoints (detectron2: fused qkv)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window).flatten(), persistent=False)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        """``[heads, w², w²]``: ``B[Δy, Δx]`` of every token pair of a window."""
        n = self.window * self.window
        return self.relative_position_bias_table[self.relative_position_index].view(n, n, -1).permute(2, 0, 1)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``windows [B · nW, w², C]``; ``mask [nW, w², w²]`` (shifted blocks) -> ``[B · nW, w², C]``."""
        q, k, v = (split_heads(lin(windows), self.num_heads) for lin in (self.q, self.k, self.v))
        bias = self.position_bias().unsqueeze(0)                                    # [1, heads, N, N]
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias + mask.unsqueeze(1)).repeat(windows.shape[0] // nw, 1, 1, 1)   # [B · nW, heads, N, N]
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))))

    def attend_windows(self, windows: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Inference path: ``windows [n, w², 3C]`` (fused q, k, v), ``mask [n, w², w²]`` or ``None`` (the bias
        alone, broadcast) -> ``[n · w², C]`` before ``proj``."""
        n_win, n, _ = windows.shape
        q, k, v = windows.view(n_win, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.position_bias().unsqueeze(0)
        bias = (bias if mask is None else bias + mask.unsqueeze(1)).to(q.dtype)
        return merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=bias)).flatten(0, 1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """``x + W-MSA(LN(x))``, ``x + MLP(LN(x))``; ``shift > 0``: SW-MSA (windows shifted by ``shift``)."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        # The paper and detectron2 drop both branches; transformers' SwinLayer drops the attention branch only.
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.inference = False   # set by fuse_for_inference

    def attend(self, x: torch.Tensor, height: int, width: int, mask: torch.Tensor | None) -> torch.Tensor:
        """The (shifted-)window attention of ``LN(x)``, ``[B, H·W, C]`` -> ``[B, H·W, C]``."""
        b, _, c = x.shape
        w = self.window
        x = self.norm1(x).view(b, height, width, c)
        # Pad after the norm, then shift: the reference's order (the pad tokens are zeros of the normed map).
        x = F.pad(x, (0, 0, 0, -width % w, 0, -height % w))
        padded_h, padded_w = x.shape[1:3]
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(window_partition(x, w), mask if self.shift else None)
        x = window_reverse(windows, w, padded_h, padded_w)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        return x[:, :height, :width].reshape(b, height * width, c)

    def forward(self, x: torch.Tensor, height: int, width: int, mask: torch.Tensor | None = None,
                plan: WindowPlan | None = None) -> torch.Tensor:
        if self.inference and plan is not None:
            return self._forward_inference(x, height, width, plan)
        x = x + self.drop_path(self.attend(x, height, width, mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _forward_inference(self, x: torch.Tensor, height: int, width: int, plan: WindowPlan) -> torch.Tensor:
        """The same block on gathered windows: q/k/v as one GEMM on the real tokens and one zero row per image (a
        pad token's q/k/v is the bias; every GEMM through :func:`ops.linear.linear`, oneDNN on CPU); per run of
        windows, the pad/shift/partition as one gather and, after ``proj``, the reverse as one ``index_add_`` into
        the residual stream; the MLP in row chunks with GELU in place (inference only: nothing
        is recorded for autograd). The only edge windows get the bias + shift mask tensor."""
        b, n, c = x.shape
        stream = x.reshape(b * n, c)
        # Each image's normed tokens and one zero row (the pad token: its q/k/v is the bias), so that one GEMM
        # fills the whole token table.
        normed = stream.new_empty(b, n + 1, c)
        normed[:, :n] = self.norm1(stream).view(b, n, c)
        normed[:, n] = 0
        table = linear(normed.view(-1, c), self.qkv_weight, self.qkv_bias)
        del normed
        tokens, proj = self.window ** 2, self.attn.proj
        stream.add_(proj.bias)
        for first, end, src, dst in plan.chunks:
            windows = table.index_select(0, plan.gather[first * tokens:end * tokens]).view(-1, tokens, 3 * c)
            mask = None if first < plan.plain else plan.mask[first - plan.plain:end - plan.plain]
            attended = self.attn.attend_windows(windows, mask)
            stream.index_add_(0, dst, linear(attended.index_select(0, src), proj.weight))
        del table
        fc1, fc2 = self.mlp.fc1, self.mlp.fc2
        for start in range(0, b * n, MLP_CHUNK_ROWS):
            part = stream[start:start + MLP_CHUNK_ROWS]
            hidden = apply_linear(fc1, self.norm2(part))
            torch.ops.aten.gelu_(hidden)
            part.add_(apply_linear(fc2, hidden))
        return stream.view(b, n, c)

    @torch.no_grad()
    def fuse_for_inference(self) -> None:
        """Switch to the gathered-window inference path (eval only), with q, k, v fused into one Linear."""
        if self.training:
            raise ValueError("fuse_for_inference needs an eval-mode model")
        a = self.attn
        self.register_buffer("qkv_weight", torch.cat([a.q.weight, a.k.weight, a.v.weight]), persistent=False)
        self.register_buffer("qkv_bias", torch.cat([a.q.bias, a.k.bias, a.v.bias]), persistent=False)
        for i, lin in enumerate((a.q, a.k, a.v)):   # views of the fused tensors: the weights are not held twice
            c = lin.out_features
            lin.weight = nn.Parameter(self.qkv_weight[i * c:(i + 1) * c], requires_grad=False)
            lin.bias = nn.Parameter(self.qkv_bias[i * c:(i + 1) * c], requires_grad=False)
        self.inference = True


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> one token: concatenate (zero-padding odd maps to even), LayerNorm, Linear 4C -> 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, _, c = x.shape
        x = F.pad(x.view(b, height, width, c), (0, 0, 0, width % 2, 0, height % 2))
        # Concatenation order (row, col) = (0,0), (1,0), (0,1), (1,1): the reference's x0, x1, x2, x3.
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.flatten(1, 2)))


class SwinStage(nn.Module):
    """``depth`` blocks (every second one shifted), the stage's output norm, and the patch merging after it."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float, drop_paths: list[float],
                 downsample: bool):
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio, drop_paths[i])
            for i in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None
        self._mask_cache: tuple | None = None   # ((padded H, padded W, device), mask) of the last input size
        self._plan_cache: tuple | None = None   # ((B, H, W, device), (plan, shifted plan)): the inference path's

    def shift_mask(self, height: int, width: int, device) -> torch.Tensor:
        key = (-(-height // self.window) * self.window, -(-width // self.window) * self.window, device)
        if self._mask_cache is None or self._mask_cache[0] != key:
            self._mask_cache = (key, shift_mask(key[0], key[1], self.window, self.window // 2, device))
        return self._mask_cache[1]

    def plans(self, batch: int, height: int, width: int, device) -> tuple[WindowPlan, WindowPlan]:
        """The unshifted and shifted blocks' :class:`WindowPlan` (inference path), kept for the last input size."""
        key = (batch, height, width, device)
        if self._plan_cache is None or self._plan_cache[0] != key:
            self._plan_cache = (key, tuple(window_plan(batch, height, width, self.window, shift, device)
                                           for shift in (0, self.window // 2)))
        return self._plan_cache[1]

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if self.blocks[0].inference and not x.requires_grad:
            plans = self.plans(x.shape[0], height, width, x.device)
            for block in self.blocks:
                x = block(x, height, width, plan=plans[1 if block.shift else 0])
            return x
        mask = self.shift_mask(height, width, x.device) if len(self.blocks) > 1 else None
        for block in self.blocks:
            x = block(x, height, width, mask)
        return x


class PatchEmbed(nn.Module):
    """Zero-pad to a multiple of the patch size, ``patch x patch`` conv with that stride, LayerNorm."""

    def __init__(self, in_ch: int, dim: int, patch: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_ch, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = F.pad(x, (0, -x.shape[-1] % self.patch, 0, -x.shape[-2] % self.patch))
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class SwinTransformer(nn.Module):
    """Swin backbone returning the four normed stage maps ``[B, C_i, ceil(H / 2^(i+2)), ...]``, i = 0..3."""

    imagenet_weights_note = ("the Mask2Former Swin backbone's ImageNet weights are not wired to timm (its Swin "
                             "differs numerically on padded sizes); start from the Cityscapes weights instead")

    def __init__(self, cfg: SwinConfig, in_ch: int = 3):
        super().__init__()
        self.cfg = cfg
        total = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]   # linear stochastic depth
        self.patch_embed = PatchEmbed(in_ch, cfg.embed_dim, cfg.patch_size)
        stages, start = [], 0
        for i, depth in enumerate(cfg.depths):
            stages.append(SwinStage(cfg.channels[i], depth, cfg.num_heads[i], cfg.window_size, cfg.mlp_ratio,
                                    rates[start:start + depth], downsample=i < len(cfg.depths) - 1))
            start += depth
        self.stages = nn.ModuleList(stages)
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in cfg.channels)
        self.out_channels = list(cfg.channels)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if torch.compiler.is_exporting() and not all(isinstance(s, int) for s in x.shape[-2:]):
            raise ExportError(DYNAMIC_EXPORT_ERROR)
        x, height, width = self.patch_embed(x)
        features = []
        for stage, norm in zip(self.stages, self.out_norms):
            x = stage(x, height, width)
            features.append(norm(x).view(x.shape[0], height, width, -1).permute(0, 3, 1, 2))
            if stage.downsample is not None:
                x = stage.downsample(x, height, width)
                height, width = (height + 1) // 2, (width + 1) // 2
        return features


def _init_weights(m: nn.Module) -> None:
    """The paper's initialisation: trunc-normal 0.02 Linear weights, zero biases, unit LayerNorm."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def swin_transformer(variant: str) -> SwinTransformer:
    """The Swin backbone of Mask2Former-Swin-``variant`` (``"t"``, ``"s"``, ``"b"``, ``"l"``)."""
    return SwinTransformer(SWIN_CONFIGS[variant])
