"""Mask2Former's two decoders (Cheng et al., CVPR 2022, §3.2 and Fig. 2): the multi-scale deformable-attention pixel
decoder and the masked-attention transformer decoder.

Pixel decoder (``MSDeformAttnPixelDecoder``): the 1/32, 1/16 and 1/8 backbone maps are projected to ``D`` = 256
channels (1x1 conv + GroupNorm), get a sine position embedding plus a learned level embedding, and go through 6
deformable-attention encoder layers (every token a query; 8 heads, 3 levels, 4 points) over all three levels at
once; an FPN step then adds the 1/4 backbone map (lateral 1x1 conv) to the upsampled 1/8 output and fuses it with a
3x3 conv; a 1x1 conv gives the 1/4 *mask features*. Transformer decoder: 100 learned queries (features and
positions); each of its 9 layers is masked cross-attention to one level (1/32, 1/16, 1/8, round-robin), then
self-attention, then an FFN (post-norm). Before the first layer and after every layer the normed queries predict
class logits (``K+1``, the last one "no object") and mask logits ``mask_embed(q) · mask_features``; the mask,
resized to the next layer's level and thresholded at sigmoid 0.5, is that layer's attention mask (a query whose
mask is empty attends everywhere).

The numerics are transformers' ``Mask2FormerForUniversalSegmentation`` (itself converted from detectron2's
``MSDeformAttnPixelDecoder`` and ``MultiScaleMaskedTransformerDecoder``), tested against it. Module names follow
detectron2 where the two repos differ; ``models/mask2former.py`` maps the transformers keys onto them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.deformable_attention import multi_scale_deformable_attention
from ..ops.heads import merge_heads, split_heads
from ..ops.linear import apply_linear

LEVELS = 3   # the pixel decoder's transformer levels (1/32, 1/16, 1/8) and the decoder's round-robin
FFN_CHUNK_ROWS = 1 << 14   # tokens per step of the inference path's encoder FFN (a 64 MiB hidden block)


def sine_position_embedding(height: int, width: int, num_feats: int, device, dtype,
                            temperature: int = 10000) -> torch.Tensor:
    """DETR's normalised sine embedding of a ``height x width`` grid: ``[1, 2 · num_feats, H, W]`` (y half first).

    The same operations in the same dtype as transformers' ``Mask2FormerSinePositionEmbedding(normalize=True)``.
    """
    scale, eps = 2 * math.pi, 1e-6
    y = torch.arange(1, height + 1, dtype=dtype, device=device)[None, :, None].expand(1, height, width)
    x = torch.arange(1, width + 1, dtype=dtype, device=device)[None, None, :].expand(1, height, width)
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.int64, device=device).to(dtype)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos_x, pos_y = x[..., None] / dim_t, y[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H·W, C]``."""
    return x.flatten(2).transpose(1, 2)


# ----------------------------------------------------------------------------------------------- pixel decoder

class MultiScaleDeformableAttention(nn.Module):
    """Deformable DETR's MSDeformAttn: each query samples ``points`` locations per head and level around its
    reference point (offsets and softmaxed weights predicted from the query), via
    :func:`~cityseg_zoo.ops.deformable_attention.multi_scale_deformable_attention`."""

    def __init__(self, dim: int, heads: int, levels: int, points: int):
        super().__init__()
        self.heads, self.levels, self.points = heads, levels, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()
        self.inference = False   # set by the encoder layer's fuse_for_inference: projections through ops.linear

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deformable DETR's init: zero offset weights, offsets biased onto a ring of directions per head."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.heads, 1, 1, 2)
        grid = grid.repeat(1, self.levels, self.points, 1) * torch.arange(1, self.points + 1).view(1, 1, -1, 1)
        self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor,
                shapes: list[tuple[int, int]]) -> torch.Tensor:
        """``query [B, Q, D]`` (with position), ``reference_points [B, Q, 2]`` normalised (x, y), ``value [B, S, D]``
        (without position), ``shapes``: the levels' (H, W) -> ``[B, Q, D]``."""
        b, q, _ = query.shape
        value = self.project(self.value_proj, value).view(b, value.shape[1], self.heads, -1)
        offsets = self.project(self.sampling_offsets, query).view(b, q, self.heads, self.levels, self.points, 2)
        weights = self.project(self.attention_weights, query).view(b, q, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(b, q, self.heads, self.levels, self.points)
        # Offsets are in pixels of each level: divide by its (W, H) to move in normalised coordinates.
        normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=offsets.dtype, device=query.device)
        locations = torch.addcdiv(reference_points[:, :, None, None, None, :], offsets,
                                  normalizer[None, None, None, :, None, :])   # ref + offsets / normalizer
        return self.project(self.output_proj, multi_scale_deformable_attention(value, shapes, locations, weights))

    def project(self, lin: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return apply_linear(lin, x) if self.inference and not x.requires_grad else lin(x)


class DeformableEncoderLayer(nn.Module):
    """``x = LN(x + MSDeformAttn(x + pos))``, ``x = LN(x + FFN(x))`` (post-norm, ReLU)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, points: int):
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(dim, heads, LEVELS, points)
        self.self_attn_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)

        self.inference = False   # set by fuse_for_inference

    def forward(self, x: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                shapes: list[tuple[int, int]]) -> torch.Tensor:
        if self.inference and not x.requires_grad:
            return self._forward_inference(x, pos, reference_points, shapes)
        x = self.self_attn_norm(x + self.self_attn(x + pos, reference_points, x, shapes))
        return self.ffn_norm(x + self.fc2(F.relu(self.fc1(x))))

    def _forward_inference(self, x, pos, reference_points, shapes) -> torch.Tensor:
        """The same layer with the residuals added in place and the FFN in row chunks (ReLU in place); every GEMM
        through :func:`ops.linear.linear` (oneDNN on CPU)."""
        b, s, d = x.shape
        x = self.self_attn_norm(self.self_attn(x + pos, reference_points, x, shapes).add_(x))
        stream = x.view(b * s, d)
        for start in range(0, b * s, FFN_CHUNK_ROWS):
            part = stream[start:start + FFN_CHUNK_ROWS]
            hidden = apply_linear(self.fc1, part).relu_()
            part.add_(apply_linear(self.fc2, hidden))
        return self.ffn_norm(x)

    def fuse_for_inference(self) -> None:
        """Switch to the in-place inference path (eval only)."""
        if self.training:
            raise ValueError("fuse_for_inference needs an eval-mode model")
        self.inference = self.self_attn.inference = True


def reference_points(shapes: list[tuple[int, int]], device, dtype) -> torch.Tensor:
    """``[1, S, 2]``: the normalised (x, y) centre of every token of every level (no padding: valid ratio 1)."""
    points = []
    for h, w in shapes:
        ref_y, ref_x = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, dtype=dtype, device=device),
                                      torch.linspace(0.5, w - 0.5, w, dtype=dtype, device=device), indexing="ij")
        points.append(torch.stack((ref_x.reshape(-1) / w, ref_y.reshape(-1) / h), -1))
    return torch.cat(points, 0)[None]


class MSDeformAttnPixelDecoder(nn.Module):
    """Backbone maps ``[1/4, 1/8, 1/16, 1/32]`` -> (1/4 mask features, the 1/32, 1/16, 1/8 encoder outputs)."""

    def __init__(self, in_channels: list[int], dim: int = 256, mask_dim: int = 256, layers: int = 6, heads: int = 8,
                 ffn_dim: int = 1024, points: int = 4):
        super().__init__()
        self.dim = dim
        # One projection per transformer level, coarsest first (the order of the encoder's token sequence).
        self.input_proj = nn.ModuleList(nn.Sequential(nn.Conv2d(c, dim, 1), nn.GroupNorm(32, dim))
                                        for c in in_channels[:0:-1])
        self.level_embed = nn.Parameter(torch.empty(LEVELS, dim))
        self.encoder = nn.ModuleList(DeformableEncoderLayer(dim, heads, ffn_dim, points) for _ in range(layers))
        # FPN step at 1/4 (detectron2's adapter_1 / layer_1).
        self.lateral = nn.Sequential(nn.Conv2d(in_channels[0], dim, 1, bias=False), nn.GroupNorm(32, dim))
        self.output = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.GroupNorm(32, dim), nn.ReLU())
        self.mask_features = nn.Conv2d(dim, mask_dim, 1)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.level_embed)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)
        for conv in (self.lateral[0], self.output[0], self.mask_features):   # detectron2's c2_xavier_fill
            nn.init.kaiming_uniform_(conv.weight, a=1)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def encode(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The deformable encoder over the 1/32, 1/16, 1/8 maps; returns them as ``[B, D, H_l, W_l]``, coarsest first."""
        levels = features[:0:-1]
        projected = [proj(x) for proj, x in zip(self.input_proj, levels)]
        shapes = [(x.shape[-2], x.shape[-1]) for x in projected]
        dtype, device = projected[0].dtype, projected[0].device
        pos = torch.cat([_tokens(sine_position_embedding(h, w, self.dim // 2, device, dtype)) + self.level_embed[i]
                         for i, (h, w) in enumerate(shapes)], 1)
        x = torch.cat([_tokens(p) for p in projected], 1)
        ref = reference_points(shapes, device, dtype)
        for layer in self.encoder:
            x = layer(x, pos, ref, shapes)
        b = x.shape[0]
        # [B, h·w, D] tokens as [B, D, h, w] maps without a copy (channels-last views, like the backbone's maps)
        return [t.unflatten(1, (h, w)).permute(0, 3, 1, 2)
                for t, (h, w) in zip(x.split([h * w for h, w in shapes], 1), shapes)]

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        multi_scale = self.encode(features)
        lateral = self.lateral(features[0])
        up = F.interpolate(multi_scale[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        # eval without autograd: sum in place (at 1/4 of 1024x2048, one 134 MiB map fewer)
        fpn = self.output(lateral.add_(up) if not torch.is_grad_enabled() else lateral + up)
        return self.mask_features(fpn), multi_scale


# ----------------------------------------------------------------------------------------------- transformer decoder

class MaskedCrossAttention(nn.Module):
    """Multi-head cross-attention restricted by a boolean mask (Mask2Former's masked attention, eq. 2).

    Parameters as ``nn.MultiheadAttention``'s (``in_proj_weight`` = [W_q; W_k; W_v], ``out_proj``), the layout of the
    checkpoints; the attention itself is ``scaled_dot_product_attention`` with a boolean ``attn_mask``.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                allowed: torch.Tensor | None) -> torch.Tensor:
        """``query [B, Q, D]``, ``key``/``value [B, S, D]``, ``allowed [B, 1 or heads, Q, S]`` (True: may attend)."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q, k, v = (split_heads(F.linear(t, w, bias), self.heads)
                   for t, w, bias in ((query, w_q, b_q), (key, w_k, b_k), (value, w_v, b_v)))
        return self.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)))


class SelfAttention(nn.Module):
    """Multi-head self-attention of the queries (DETR's: position added to queries and keys, not values)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(proj(t), self.heads)
                   for proj, t in ((self.q_proj, x + pos), (self.k_proj, x + pos), (self.v_proj, x)))
        return self.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class MaskedAttentionDecoderLayer(nn.Module):
    """Masked cross-attention, self-attention, FFN, each ``x = LN(x + f(x))`` (``pre_norm=False``)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int):
        super().__init__()
        self.cross_attn = MaskedCrossAttention(dim, heads)
        self.cross_attn_norm = nn.LayerNorm(dim)
        self.self_attn = SelfAttention(dim, heads)
        self.self_attn_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        for lin in (self.self_attn.q_proj, self.self_attn.k_proj, self.self_attn.v_proj, self.self_attn.out_proj,
                    self.cross_attn.out_proj, self.fc1, self.fc2):   # xavier, as both references
            nn.init.xavier_uniform_(lin.weight)

    def forward(self, x: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor,
                allowed: torch.Tensor) -> torch.Tensor:
        x = self.cross_attn_norm(x + self.cross_attn(x + query_pos, memory + memory_pos, memory, allowed))
        x = self.self_attn_norm(x + self.self_attn(x, query_pos))
        return self.ffn_norm(x + self.fc2(F.relu(self.fc1(x))))


class MaskedAttentionDecoder(nn.Module):
    """Queries -> per-layer (normed query states, mask logits at 1/4), with masked attention between layers.

    ``forward`` returns the list of normed query states ``[B, Q, D]`` and the list of mask logits
    ``[B, Q, H/4, W/4]``, one per prediction (the learned queries before the first layer, then every layer): the
    class predictor (``Mask2FormerHead``) turns each state into class logits.
    """

    def __init__(self, dim: int = 256, heads: int = 8, ffn_dim: int = 2048, num_queries: int = 100,
                 layers: int = 9, mask_dim: int = 256):
        super().__init__()
        self.heads = heads
        self.query_feat = nn.Embedding(num_queries, dim)     # the queries' content (transformers: queries_features)
        self.query_embed = nn.Embedding(num_queries, dim)    # their positions (transformers: queries_embedder)
        self.level_embed = nn.Embedding(LEVELS, dim)
        self.layers = nn.ModuleList(MaskedAttentionDecoderLayer(dim, heads, ffn_dim) for _ in range(layers))
        self.decoder_norm = nn.LayerNorm(dim)
        self.mask_embed = nn.ModuleList([nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, mask_dim)])
        self.inference = False   # set by fuse_for_inference: only the last prediction, intermediate masks at low res

    def predict_masks(self, states: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        """``mask_embed(q) · mask_features``: ``[B, Q, D]``, ``[B, D, H, W]`` -> ``[B, Q, H, W]``."""
        embed = states
        for i, lin in enumerate(self.mask_embed):
            embed = lin(embed) if i == len(self.mask_embed) - 1 else F.relu(lin(embed))
        return torch.einsum("bqc,bchw->bqhw", embed, mask_features)

    @staticmethod
    def attention_mask(mask_logits: torch.Tensor, size) -> torch.Tensor:
        """``[B, 1, Q, h·w]`` boolean: where the mask, resized to ``size`` (``None``: as it is), has sigmoid >= 0.5
        (True: attend). A query
        whose mask is empty everywhere attends everywhere instead (the reference's rule)."""
        resized = mask_logits if size is None else F.interpolate(mask_logits, size=size, mode="bilinear",
                                                                 align_corners=False)
        allowed = (resized.sigmoid() >= 0.5).flatten(2)              # the reference: blocked = sigmoid < 0.5
        # multiply-free "empty -> everywhere": OR with the row's emptiness (no data-dependent indexing, exports)
        return (allowed | ~allowed.any(-1, keepdim=True)).unsqueeze(1)

    def forward(self, multi_scale: list[torch.Tensor], mask_features: torch.Tensor
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        b = mask_features.shape[0]
        memory, memory_pos, sizes = [], [], []
        for i, feature in enumerate(multi_scale):
            h, w = feature.shape[-2:]
            sizes.append((h, w))
            memory_pos.append(_tokens(sine_position_embedding(h, w, feature.shape[1] // 2, feature.device,
                                                              feature.dtype)))
            memory.append(_tokens(feature) + self.level_embed.weight[i])   # no input projection: D == hidden
        # copies, not expanded views: a view of a parameter made under inference_mode still "requires grad"
        query_pos = self.query_embed.weight.unsqueeze(0).repeat(b, 1, 1)
        x = self.query_feat.weight.unsqueeze(0).repeat(b, 1, 1)
        if self.inference and not mask_features.requires_grad:
            return self._forward_inference(x, query_pos, memory, memory_pos, sizes, mask_features)
        states = [self.decoder_norm(x)]
        masks = [self.predict_masks(states[0], mask_features)]
        for i, layer in enumerate(self.layers):
            level = i % LEVELS
            allowed = self.attention_mask(masks[-1], sizes[level])
            x = layer(x, query_pos, memory[level], memory_pos[level], allowed)
            states.append(self.decoder_norm(x))
            masks.append(self.predict_masks(states[-1], mask_features))
        return states, masks

    def _forward_inference(self, x, query_pos, memory, memory_pos, sizes, mask_features):
        """Only the last prediction, whose masks are at 1/4; every earlier mask is needed only at its next layer's
        level, so it is predicted there directly: resizing is linear per channel, so ``resize(E · F) = E ·
        resize(F)`` and the mask features are resized once per level instead of 9 ``[B, Q, H/4, W/4]`` products
        (the same numbers up to float rounding; a value exactly at the 0.5 threshold could flip)."""
        features_at = [F.interpolate(mask_features, size=size, mode="bilinear", align_corners=False)
                       for size in sizes]
        state = self.decoder_norm(x)
        for i, layer in enumerate(self.layers):
            level = i % LEVELS
            allowed = self.attention_mask(self.predict_masks(state, features_at[level]), None)
            x = layer(x, query_pos, memory[level], memory_pos[level], allowed)
            state = self.decoder_norm(x)
        return [state], [self.predict_masks(state, mask_features)]

    def fuse_for_inference(self) -> None:
        """Switch to the last-prediction-only inference path (eval only; see ``_forward_inference``)."""
        if self.training:
            raise ValueError("fuse_for_inference needs an eval-mode model")
        self.inference = True
