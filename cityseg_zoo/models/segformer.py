"""SegFormer-B0 ... B5: Mix Transformer encoder + all-MLP decode head (Xie et al., NeurIPS 2021).

The decode head (the paper's Figure 2, eq. 4) unifies the four stage maps to ``C`` channels with one Linear layer
each, upsamples them to 1/4 of the input (bilinear, ``align_corners=False``), concatenates them (deepest first),
fuses them with a 1x1 conv -> BatchNorm -> ReLU, and classifies with a 1x1 conv. ``model(x)`` upsamples those 1/4
logits to the input size exactly as transformers' ``post_process_semantic_segmentation`` does (bilinear,
``align_corners=False``). Train mode returns ``{"out": logits at input size}`` (no auxiliary head).

Weights: NVIDIA's Cityscapes checkpoints on the Hugging Face Hub (``nvidia/segformer-b*-finetuned-cityscapes-*``),
in the ``transformers`` layout (``segformer.encoder.*``, ``decode_head.*``). They load from the manifest
(``segformer_b0_cityscapes`` ...), from a local file, or from a transformers folder (``config.json`` +
``model.safetensors`` / ``pytorch_model.bin``), whose config is checked against the architecture first.
Numerics are transformers' (see :mod:`cityseg_zoo.backbones.mix_transformer`); the parity tests run its own
``SegformerForSemanticSegmentation``.

Inference switch (:func:`cityseg_zoo.optimize.optimize_for_inference`): BatchNorm is folded into ``linear_fuse``,
and :meth:`SegFormerHead.fuse_for_inference` then composes each stage's Linear with its slice of ``linear_fuse``.
Upsampling is linear and acts per channel, so ``fuse(cat(up(L_i x_i)))`` equals ``Σ up((F_i L_i) x_i)``: the
``4C``-channel concatenation at 1/4 resolution and its ``4C -> C`` conv (a third of SegFormer-B0's FLOPs at
1024x2048) are never built.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.mix_transformer import MIT_CONFIGS, MixTransformer, map_to_tokens, mix_transformer, tokens_to_map
from ..data.normalization import IMAGENET_RGB
from ..errors import CheckpointError
from ..hub.convert import Layout
from ..ops.resize import resize
from ..registry import register_model
from ..segmentor import Segmentor
from ..specs import ArchSpec

ALIGN_CORNERS = False   # transformers' decode head and post-processing, and the paper's mmseg configs
DECODER_DIMS = {"b0": 256, "b1": 256, "b2": 768, "b3": 768, "b4": 768, "b5": 768}


class SegFormerHead(nn.Module):
    """All-MLP decoder: per-stage Linear to ``embed_dim``, upsample to 1/4, concat, fuse, classify."""

    fold_pairs = (("linear_fuse", "bn"),)   # the inference switch folds bn into linear_fuse
    benchmark_label = "all-MLP head: stage Linears composed with the fuse conv (no 4C concat)"

    def __init__(self, in_channels: list[int], embed_dim: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.linear_c = nn.ModuleList(nn.Linear(c, embed_dim) for c in in_channels)
        self.linear_fuse = nn.Conv2d(embed_dim * len(in_channels), embed_dim, 1, bias=False)
        self.bn = nn.BatchNorm2d(embed_dim)
        # transformers uses element-wise Dropout here (the paper's mmseg head: Dropout2d); identity in eval.
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)
        self.embed_dim = embed_dim
        self.fused = False    # set by fuse_for_inference

    def unify(self, i: int, feature: torch.Tensor) -> torch.Tensor:
        """Stage ``i``'s map through its Linear layer, as a ``[B, embed_dim, H_i, W_i]`` map."""
        height, width = feature.shape[-2:]
        return tokens_to_map(self.linear_c[i](map_to_tokens(feature)), height, width)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.fused:
            return self._forward_fused(features)
        size = features[0].shape[-2:]
        unified = [resize(self.unify(i, f), size, ALIGN_CORNERS) for i, f in enumerate(features)]
        fused = F.relu(self.bn(self.linear_fuse(torch.cat(unified[::-1], dim=1))))   # deepest stage first
        return self.classifier(self.dropout(fused))

    def _forward_fused(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        out = self.unify(0, features[0])          # stage 0 is already at 1/4; it carries the summed bias
        for i in range(len(features) - 1, 0, -1):
            out.add_(resize(self.unify(i, features[i]), size, ALIGN_CORNERS))   # eval only: no autograd graph
        return self.classifier(F.relu(out, inplace=True))

    @torch.no_grad()
    def fuse_for_inference(self) -> None:
        """Compose each stage's Linear with its slice of ``linear_fuse`` (and of ``bn``, if not folded yet) into one
        Linear ``C_i -> embed_dim``; drop ``linear_fuse`` and ``bn``. Eval only; exact up to float rounding."""
        if self.fused:
            return
        from ..optimize import norm_scale_shift
        weight = self.linear_fuse.weight.double().flatten(1)                      # [D, 4D]
        bias = torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)
        if self.linear_fuse.bias is not None:                                     # BN folded by fold_batchnorms
            bias += self.linear_fuse.bias.double()
        if isinstance(self.bn, nn.BatchNorm2d):
            scale, shift = (t.double() for t in norm_scale_shift(self.bn))
            weight, bias = weight * scale[:, None], bias * scale + shift
        n, d = len(self.linear_c), self.embed_dim
        for i, linear in enumerate(self.linear_c):
            part = weight[:, (n - 1 - i) * d:(n - i) * d]                         # concat order: deepest first
            linear.weight.copy_((part @ linear.weight.double()).to(linear.weight.dtype))
            composed_bias = part @ linear.bias.double() + (bias if i == 0 else 0)  # constants pass bilinear resizing
            linear.bias.copy_(composed_bias.to(linear.bias.dtype))
        self.linear_fuse, self.bn = None, nn.Identity()
        self.fused = True


# ----------------------------------------------------------------------------------------------- checkpoint layouts

_BLOCK = r"segformer\.encoder\.block\.(\d)\.(\d+)\."
_TRANSFORMERS_RULES = (
    (r"^segformer\.encoder\.patch_embeddings\.(\d)\.proj\.", r"backbone.stages.\1.patch_embed.proj."),
    (r"^segformer\.encoder\.patch_embeddings\.(\d)\.layer_norm\.", r"backbone.stages.\1.patch_embed.norm."),
    (rf"^{_BLOCK}layer_norm_1\.", r"backbone.stages.\1.blocks.\2.norm1."),
    (rf"^{_BLOCK}attention\.self\.query\.", r"backbone.stages.\1.blocks.\2.attn.q."),
    (rf"^{_BLOCK}attention\.self\.key\.", r"backbone.stages.\1.blocks.\2.attn.k."),
    (rf"^{_BLOCK}attention\.self\.value\.", r"backbone.stages.\1.blocks.\2.attn.v."),
    (rf"^{_BLOCK}attention\.self\.sr\.", r"backbone.stages.\1.blocks.\2.attn.sr."),
    (rf"^{_BLOCK}attention\.self\.layer_norm\.", r"backbone.stages.\1.blocks.\2.attn.norm."),
    (rf"^{_BLOCK}attention\.output\.dense\.", r"backbone.stages.\1.blocks.\2.attn.proj."),
    (rf"^{_BLOCK}layer_norm_2\.", r"backbone.stages.\1.blocks.\2.norm2."),
    (rf"^{_BLOCK}mlp\.dense1\.", r"backbone.stages.\1.blocks.\2.mlp.fc1."),
    (rf"^{_BLOCK}mlp\.dwconv\.dwconv\.", r"backbone.stages.\1.blocks.\2.mlp.dwconv."),
    (rf"^{_BLOCK}mlp\.dense2\.", r"backbone.stages.\1.blocks.\2.mlp.fc2."),
    (r"^segformer\.encoder\.layer_norm\.(\d)\.", r"backbone.stages.\1.norm."),
    (r"^decode_head\.linear_c\.(\d)\.proj\.", r"head.linear_c.\1."),
    (r"^decode_head\.linear_fuse\.", "head.linear_fuse."),
    (r"^decode_head\.batch_norm\.", "head.bn."),
    (r"^decode_head\.classifier\.", "head.classifier."),
)
# transformers >= 5 renames the modules in memory (SegformerModel.stages.*, q_proj, ...); its save_pretrained writes
# the layout above again, but a torch.save(model.state_dict()) of a v5 model has these names.
_STAGE = r"segformer\.stages\.(\d)\."
_TRANSFORMERS5_RULES = (
    (rf"^{_STAGE}patch_embeddings\.proj\.", r"backbone.stages.\1.patch_embed.proj."),
    (rf"^{_STAGE}patch_embeddings\.layer_norm\.", r"backbone.stages.\1.patch_embed.norm."),
    (rf"^{_STAGE}blocks\.(\d+)\.layernorm_before\.", r"backbone.stages.\1.blocks.\2.norm1."),
    (rf"^{_STAGE}blocks\.(\d+)\.attention\.q_proj\.", r"backbone.stages.\1.blocks.\2.attn.q."),
    (rf"^{_STAGE}blocks\.(\d+)\.attention\.k_proj\.", r"backbone.stages.\1.blocks.\2.attn.k."),
    (rf"^{_STAGE}blocks\.(\d+)\.attention\.v_proj\.", r"backbone.stages.\1.blocks.\2.attn.v."),
    (rf"^{_STAGE}blocks\.(\d+)\.attention\.sequence_reduction\.sequence_reduction\.",
     r"backbone.stages.\1.blocks.\2.attn.sr."),
    (rf"^{_STAGE}blocks\.(\d+)\.attention\.sequence_reduction\.layer_norm\.", r"backbone.stages.\1.blocks.\2.attn.norm."),
    (rf"^{_STAGE}blocks\.(\d+)\.attention\.o_proj\.", r"backbone.stages.\1.blocks.\2.attn.proj."),
    (rf"^{_STAGE}blocks\.(\d+)\.layernorm_after\.", r"backbone.stages.\1.blocks.\2.norm2."),
    (rf"^{_STAGE}blocks\.(\d+)\.mlp\.fc1\.", r"backbone.stages.\1.blocks.\2.mlp.fc1."),
    (rf"^{_STAGE}blocks\.(\d+)\.mlp\.dwconv\.dwconv\.", r"backbone.stages.\1.blocks.\2.mlp.dwconv."),
    (rf"^{_STAGE}blocks\.(\d+)\.mlp\.fc2\.", r"backbone.stages.\1.blocks.\2.mlp.fc2."),
    (rf"^{_STAGE}layer_norm\.", r"backbone.stages.\1.norm."),
    (r"^decode_head\.linear_projections\.(\d)\.proj\.", r"head.linear_c.\1."),
) + _TRANSFORMERS_RULES[-3:]


def _variant_of(config: dict) -> str | None:
    for name, cfg in MIT_CONFIGS.items():
        if list(config.get("hidden_sizes", [])) == list(cfg.hidden_sizes) and \
                list(config.get("depths", [])) == list(cfg.depths):
            return name
    return None


def check_transformers_config(config: dict, model: nn.Module, reinit_classifier: bool = False) -> None:
    """Raise :class:`CheckpointError` when a transformers ``config.json`` describes another network than ``model``
    (another model type, another SegFormer size, another class count)."""
    arch = model.arch_spec.name if model.arch_spec is not None else "this model"
    if config.get("model_type") != "segformer":
        raise CheckpointError(f"the folder's config.json is a {config.get('model_type')!r} model, not SegFormer "
                              f"({arch})")
    mit: MixTransformer = model.backbone
    expected = {"num_encoder_blocks": 4, "hidden_sizes": list(mit.cfg.hidden_sizes), "depths": list(mit.cfg.depths),
                "num_attention_heads": list(mit.cfg.num_heads), "sr_ratios": list(mit.cfg.sr_ratios),
                "patch_sizes": list(mit.cfg.patch_sizes), "strides": list(mit.cfg.strides),
                "mlp_ratios": [mit.cfg.mlp_ratio] * 4, "decoder_hidden_size": model.head.embed_dim,
                "num_channels": 3, "hidden_act": "gelu", "reshape_last_stage": True}
    wrong = {k: config[k] for k, v in expected.items() if k in config and config[k] != v}
    if wrong:
        variant = _variant_of(config)
        hint = (f"it holds SegFormer-{variant.upper()}: use create_model('segformer_{variant}', ...)" if variant
                else "it is not one of SegFormer-B0 ... B5")
        raise CheckpointError(f"the folder's config.json does not describe {arch}: "
                              + ", ".join(f"{k} {v} (expected {expected[k]})" for k, v in wrong.items())
                              + f"; {hint}")
    labels = len(config["id2label"]) if config.get("id2label") else config.get("num_labels")
    num_classes = model.num_classes
    if labels is not None and labels != num_classes and not reinit_classifier:
        raise CheckpointError(f"the folder's config.json has {labels} labels but the model was built for "
                              f"{num_classes} classes: pass num_classes={labels}, or another count to re-initialise "
                              "the classifier")


TRANSFORMERS = Layout(
    "transformers",
    rules=_TRANSFORMERS_RULES,
    optional=(r"num_batches_tracked$",),    # not read in eval mode; tolerated if a stripped file lacks it
    check_config=check_transformers_config,
    description="huggingface/transformers SegformerForSemanticSegmentation (the nvidia/segformer-* Hub files, and "
                "save_pretrained of every transformers version)",
)
TRANSFORMERS5 = Layout(
    "transformers5", rules=_TRANSFORMERS5_RULES, optional=(r"num_batches_tracked$",),
    check_config=check_transformers_config,
    description="huggingface/transformers >= 5 SegformerForSemanticSegmentation.state_dict() (in-memory names)",
)


# ----------------------------------------------------------------------------------------------- models

SPEC = ArchSpec(
    reference="huggingface/transformers v5.24.0 src/transformers/models/segformer/modeling_segformer.py::"
              "SegformerForSemanticSegmentation (weights converted from NVlabs/SegFormer@073b02d)",
    paper="Xie et al., SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers, "
          "NeurIPS 2021",
    input=IMAGENET_RGB, classifiers=("head.classifier",), layouts=(TRANSFORMERS, TRANSFORMERS5),
    align_corners=ALIGN_CORNERS, head_stride=4, min_input_size=32,      # 32: the 8x8 stride-8 key reduction
    family="original",
    # No Recipe: the paper trains with AdamW (lr 6e-5, weight decay 0.01, head x10, poly power 1, 160k iterations,
    # 1024 crops, batch 8), which the zoo's SGD-only Recipe cannot state.
    recipe=None)
def _segformer(variant: str, num_classes: int) -> Segmentor:
    backbone = mix_transformer(variant)
    head = SegFormerHead(backbone.out_channels, DECODER_DIMS[variant], num_classes)
    return Segmentor(backbone, head)


@register_model(SPEC)
def segformer_b0(num_classes: int = 19) -> Segmentor:
    """SegFormer-B0 (MiT-B0, 3.7 M parameters, decoder width 256); weights: nvidia Cityscapes, 4 crop sizes."""
    return _segformer("b0", num_classes)


@register_model(SPEC)
def segformer_b1(num_classes: int = 19) -> Segmentor:
    """SegFormer-B1 (MiT-B1, decoder width 256); weights: nvidia Cityscapes 1024x1024."""
    return _segformer("b1", num_classes)


@register_model(SPEC)
def segformer_b2(num_classes: int = 19) -> Segmentor:
    """SegFormer-B2 (MiT-B2, decoder width 768); weights: nvidia Cityscapes 1024x1024."""
    return _segformer("b2", num_classes)


@register_model(SPEC)
def segformer_b3(num_classes: int = 19) -> Segmentor:
    """SegFormer-B3 (MiT-B3, decoder width 768); weights: nvidia Cityscapes 1024x1024."""
    return _segformer("b3", num_classes)


@register_model(SPEC)
def segformer_b4(num_classes: int = 19) -> Segmentor:
    """SegFormer-B4 (MiT-B4, decoder width 768); weights: nvidia Cityscapes 1024x1024."""
    return _segformer("b4", num_classes)


@register_model(SPEC)
def segformer_b5(num_classes: int = 19) -> Segmentor:
    """SegFormer-B5 (MiT-B5, decoder width 768); weights: nvidia Cityscapes 1024x1024."""
    return _segformer("b5", num_classes)
