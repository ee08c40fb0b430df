"""Mask2Former with a Swin backbone, semantic segmentation (Cheng et al., Masked-attention Mask Transformer for
Universal Image Segmentation, CVPR 2022).

Swin backbone (:mod:`cityseg_zoo.backbones.swin`) -> multi-scale deformable-attention pixel decoder -> masked-
attention transformer decoder with 100 queries (:mod:`cityseg_zoo.models.mask2former_decoders`) -> per query,
class logits over ``K + 1`` classes (the last one "no object") and a mask at 1/4 of the input.

Forward contract (the zoo's, :mod:`cityseg_zoo.segmentor`):

* ``model.forward_logits_lowres(x)``: semantic scores at 1/4 resolution, ``einsum(softmax(class)[..., :-1],
  sigmoid(mask))`` of the last decoder layer: ``[B, K, ceil(H/4), ceil(W/4)]``.
* eval ``model(x)``: detectron2's ``semantic_inference`` at the input size: the mask logits are upsampled to
  ``H x W`` (bilinear, ``align_corners=False``) *before* the sigmoid, then the same einsum, computed a few queries
  at a time so that ``100 x H x W`` masks are never held at once. Scores, not log-probabilities (each is a sum of
  ``Q`` products in [0, 1]); their argmax is the prediction. detectron2 additionally zero-pads the image to a
  multiple of 32 before the network; transformers (the parity reference here) and this model do not, which only
  matters for sizes that are not multiples of 32 (Cityscapes' 1024x2048 is).
* train ``model(x)``: what the set-prediction loss reads, as detectron2's ``MultiScaleMaskedTransformerDecoder``
  returns it: ``{"pred_logits": [B, Q, K+1], "pred_masks": [B, Q, H/4, W/4], "aux_outputs": [{"pred_logits",
  "pred_masks"}, ...]}``, the aux list holding the 9 earlier predictions (the learned queries, then decoder layers
  1-8) for deep supervision. The Hungarian-matching loss itself (mask/dice/class costs on sampled points) is NOT
  part of the zoo: train with detectron2's or transformers' ``Mask2FormerLoss`` on these outputs.

Weights: Meta's Cityscapes checkpoints on the Hugging Face Hub (``facebook/mask2former-swin-*-cityscapes-semantic``),
in the ``transformers`` layout (``model.pixel_level_module.encoder.*``, ``model.pixel_level_module.decoder.*``,
``model.transformer_module.*``, ``class_predictor.*``); from the manifest, a local file, or a transformers folder
whose ``config.json`` is checked against the architecture first. ``num_classes=K'`` re-initialises only the class
predictor (``K' + 1`` outputs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.swin import SWIN_CONFIGS, SwinTransformer, swin_transformer
from ..data.normalization import DETECTRON2_RGB
from ..errors import CheckpointError
from ..hub.convert import Layout
from ..registry import register_model
from ..segmentor import Segmentor
from ..specs import ArchSpec
from .mask2former_decoders import MaskedAttentionDecoder, MSDeformAttnPixelDecoder

ALIGN_CORNERS = False   # detectron2's and transformers' upsampling of the mask logits
# The Hub checkpoints' Mask2FormerConfig (every Cityscapes semantic one): decoder_layers=10 counts the prediction
# from the learned queries, so 9 decoder layers.
HEAD = dict(dim=256, mask_dim=256, heads=8, encoder_layers=6, encoder_ffn=1024, points=4, num_queries=100,
            decoder_layers=9, decoder_ffn=2048)
INFERENCE_CHUNK_VALUES = 1 << 24   # upsampled mask values per step of the input-size semantic inference (64 MiB)
EXPORT_QUERY_CHUNK = 10   # queries per step of the input-size semantic inference when exporting (no size branch)


class Mask2FormerHead(nn.Module):
    """Pixel decoder + masked-attention transformer decoder + class predictor.

    Returns detectron2's prediction dict (see the module docstring); ``pred_masks`` at the mask features'
    resolution (1/4)."""

    def __init__(self, in_channels: list[int], num_classes: int, config: dict | None = None):
        super().__init__()
        h = {**HEAD, **(config or {})}   # config: overrides of HEAD (smaller test heads); the Hub checkpoints: HEAD
        self.pixel_decoder = MSDeformAttnPixelDecoder(in_channels, h["dim"], h["mask_dim"], h["encoder_layers"],
                                                      h["heads"], h["encoder_ffn"], h["points"])
        self.decoder = MaskedAttentionDecoder(h["dim"], h["heads"], h["decoder_ffn"], h["num_queries"],
                                              h["decoder_layers"], h["mask_dim"])
        self.class_predictor = nn.Linear(h["dim"], num_classes + 1)   # + 1: "no object"

    def forward(self, features: list[torch.Tensor]) -> dict:
        """The prediction dict; after the inference switch (``decoder.inference``) ``aux_outputs`` is empty."""
        mask_features, multi_scale = self.pixel_decoder(features)
        states, masks = self.decoder(multi_scale, mask_features)
        predictions = [{"pred_logits": self.class_predictor(s), "pred_masks": m} for s, m in zip(states, masks)]
        return {**predictions[-1], "aux_outputs": predictions[:-1]}


def semantic_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """``einsum("bqc,bqhw->bchw", softmax(class)[..., :-1], sigmoid(mask))``: ``[B, Q, K+1]``, ``[B, Q, h, w]`` ->
    ``[B, K, h, w]``."""
    return torch.einsum("bqc,bqhw->bchw", class_logits.softmax(-1)[..., :-1], mask_logits.sigmoid())


def semantic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor, size) -> torch.Tensor:
    """detectron2's ``semantic_inference`` at ``size``: ``semantic_scores`` of the mask logits upsampled to ``size``
    (bilinear, ``align_corners=False``) before the sigmoid. Exactly that, accumulated over chunks of queries so that
    the upsampled masks of only a few queries exist at a time (at 1024x2048: 8 queries, 64 MiB, instead of 800 MiB).
    """
    b, q, _ = class_logits.shape
    height, width = size
    probs = class_logits.softmax(-1)[..., :-1].transpose(1, 2)             # [B, K, Q]
    if torch.compiler.is_exporting():
        step = EXPORT_QUERY_CHUNK                                          # symbolic sizes: no size-dependent loop
    else:
        step = max(1, min(q, INFERENCE_CHUNK_VALUES // max(1, height * width)))
    out = None
    for start in range(0, q, step):
        up = F.interpolate(mask_logits[:, start:start + step], size=size, mode="bilinear",
                           align_corners=ALIGN_CORNERS).sigmoid()
        part = torch.bmm(probs[:, :, start:start + step], up.flatten(2))    # [B, K, H·W]
        out = part if out is None else out + part
    return out.view(b, -1, height, width)


class Mask2Former(Segmentor):
    """Swin backbone + :class:`Mask2FormerHead`, with the semantic-inference forward contract of the module
    docstring."""

    def forward_logits_lowres(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        out = self.head(self.backbone(self._network_input(x)))
        return semantic_scores(out["pred_logits"].float(), out["pred_masks"].float()).to(x.dtype)

    def forward(self, x: torch.Tensor):
        self._check_input(x)
        out = self.head(self.backbone(self._network_input(x)))
        if self.training:
            return out
        return semantic_inference(out["pred_logits"].float(), out["pred_masks"].float(), x.shape[-2:]).to(x.dtype)


# ----------------------------------------------------------------------------------------------- checkpoint layouts

_ENC = r"model\.pixel_level_module\.encoder\."
_BLOCK = rf"{_ENC}encoder\.layers\.(\d)\.blocks\.(\d+)\."
_DEC = r"model\.pixel_level_module\.decoder\."
_TM = r"model\.transformer_module\."
_ZOO_BLOCK = r"backbone.stages.\1.blocks.\2."

_HEAD_RULES = (
    (rf"^{_DEC}input_projections\.(\d)\.", r"head.pixel_decoder.input_proj.\1."),
    (rf"^{_DEC}level_embed$", "head.pixel_decoder.level_embed"),
    (rf"^{_DEC}encoder\.layers\.(\d)\.self_attn\.", r"head.pixel_decoder.encoder.\1.self_attn."),
    (rf"^{_DEC}encoder\.layers\.(\d)\.self_attn_layer_norm\.", r"head.pixel_decoder.encoder.\1.self_attn_norm."),
    (rf"^{_DEC}encoder\.layers\.(\d)\.(fc1|fc2)\.", r"head.pixel_decoder.encoder.\1.\2."),
    (rf"^{_DEC}encoder\.layers\.(\d)\.final_layer_norm\.", r"head.pixel_decoder.encoder.\1.ffn_norm."),
    (rf"^{_DEC}adapter_1\.", "head.pixel_decoder.lateral."),
    (rf"^{_DEC}layer_1\.", "head.pixel_decoder.output."),
    (rf"^{_DEC}mask_projection\.", "head.pixel_decoder.mask_features."),
    (rf"^{_TM}queries_features\.", "head.decoder.query_feat."),
    (rf"^{_TM}queries_embedder\.", "head.decoder.query_embed."),
    (rf"^{_TM}level_embed\.", "head.decoder.level_embed."),
    (rf"^{_TM}decoder\.layers\.(\d)\.(cross_attn|self_attn)_layer_norm\.", r"head.decoder.layers.\1.\2_norm."),
    (rf"^{_TM}decoder\.layers\.(\d)\.(cross_attn|self_attn|fc1|fc2)\.", r"head.decoder.layers.\1.\2."),
    (rf"^{_TM}decoder\.layers\.(\d)\.final_layer_norm\.", r"head.decoder.layers.\1.ffn_norm."),
    (rf"^{_TM}decoder\.layernorm\.", "head.decoder.decoder_norm."),
    (rf"^{_TM}decoder\.mask_predictor\.mask_embedder\.(\d)\.0\.", r"head.decoder.mask_embed.\1."),
    (r"^class_predictor\.", "head.class_predictor."),
    (r"^criterion\.empty_weight$", None),   # the loss's class weights (a buffer of Mask2FormerLoss), not the model's
)
_OUT_NORM_RULES = tuple((rf"^{_ENC}hidden_states_norms\.stage{i + 1}\.", f"backbone.out_norms.{i}.") for i in range(4))

_TRANSFORMERS_RULES = (
    (rf"^{_ENC}embeddings\.patch_embeddings\.projection\.", "backbone.patch_embed.proj."),
    (rf"^{_ENC}embeddings\.norm\.", "backbone.patch_embed.norm."),
    (rf"^{_BLOCK}layernorm_before\.", _ZOO_BLOCK + "norm1."),
    (rf"^{_BLOCK}attention\.self\.query\.", _ZOO_BLOCK + "attn.q."),
    (rf"^{_BLOCK}attention\.self\.key\.", _ZOO_BLOCK + "attn.k."),
    (rf"^{_BLOCK}attention\.self\.value\.", _ZOO_BLOCK + "attn.v."),
    (rf"^{_BLOCK}attention\.self\.relative_position_bias_table$", _ZOO_BLOCK + "attn.relative_position_bias_table"),
    (rf"^{_BLOCK}attention\.self\.relative_position_index$", None),   # a constant of the window size (v4 files)
    (rf"^{_BLOCK}attention\.output\.dense\.", _ZOO_BLOCK + "attn.proj."),
    (rf"^{_BLOCK}layernorm_after\.", _ZOO_BLOCK + "norm2."),
    (rf"^{_BLOCK}intermediate\.dense\.", _ZOO_BLOCK + "mlp.fc1."),
    (rf"^{_BLOCK}output\.dense\.", _ZOO_BLOCK + "mlp.fc2."),
    (rf"^{_ENC}encoder\.layers\.(\d)\.downsample\.", r"backbone.stages.\1.downsample."),
    # transformers >= 5 also writes SwinModel's final LayerNorm, which its SwinBackbone never applies.
    (rf"^{_ENC}swin\.layernorm\.", None),
) + _OUT_NORM_RULES + _HEAD_RULES

# transformers >= 5 in memory (a torch.save of model.state_dict()): SwinBackbone wraps a SwinModel (``swin.``) with
# q_proj / o_proj / mlp names; its save_pretrained writes the layout above.
_BLOCK5 = rf"{_ENC}swin\.encoder\.layers\.(\d)\.blocks\.(\d+)\."
_TRANSFORMERS5_RULES = (
    (rf"^{_ENC}swin\.embeddings\.patch_embeddings\.projection\.", "backbone.patch_embed.proj."),
    (rf"^{_ENC}swin\.embeddings\.norm\.", "backbone.patch_embed.norm."),
    (rf"^{_BLOCK5}layernorm_before\.", _ZOO_BLOCK + "norm1."),
    (rf"^{_BLOCK5}attention\.(q|k|v)_proj\.", _ZOO_BLOCK + r"attn.\3."),
    (rf"^{_BLOCK5}attention\.o_proj\.", _ZOO_BLOCK + "attn.proj."),
    (rf"^{_BLOCK5}attention\.relative_position_bias\.relative_position_bias_table$",
     _ZOO_BLOCK + "attn.relative_position_bias_table"),
    (rf"^{_BLOCK5}layernorm_after\.", _ZOO_BLOCK + "norm2."),
    (rf"^{_BLOCK5}mlp\.(fc1|fc2)\.", _ZOO_BLOCK + r"mlp.\3."),
    (rf"^{_ENC}swin\.encoder\.layers\.(\d)\.downsample\.", r"backbone.stages.\1.downsample."),
    (rf"^{_ENC}swin\.layernorm\.", None),
) + _OUT_NORM_RULES + _HEAD_RULES


def _variant_of(backbone: dict) -> str | None:
    for name, cfg in SWIN_CONFIGS.items():
        if (backbone.get("embed_dim") == cfg.embed_dim and list(backbone.get("depths", [])) == list(cfg.depths)
                and backbone.get("window_size") == cfg.window_size):
            return name
    return None


def check_transformers_config(config: dict, model: nn.Module, reinit_classifier: bool = False) -> None:
    """Raise :class:`CheckpointError` when a transformers ``config.json`` describes another network than ``model``
    (another model type, another Swin size, another decoder, another class count)."""
    arch = model.arch_spec.name if model.arch_spec is not None else "this model"
    if config.get("model_type") != "mask2former":
        raise CheckpointError(f"the folder's config.json is a {config.get('model_type')!r} model, not Mask2Former "
                              f"({arch})")
    swin: SwinTransformer = model.backbone
    backbone = config.get("backbone_config") or {}
    expected_backbone = {"model_type": "swin", "embed_dim": swin.cfg.embed_dim, "depths": list(swin.cfg.depths),
                         "num_heads": list(swin.cfg.num_heads), "window_size": swin.cfg.window_size,
                         "patch_size": swin.cfg.patch_size, "mlp_ratio": swin.cfg.mlp_ratio, "num_channels": 3,
                         "hidden_act": "gelu", "qkv_bias": True, "use_absolute_embeddings": False}
    h = HEAD
    expected = {"feature_size": h["dim"], "mask_feature_size": h["mask_dim"], "hidden_dim": h["dim"],
                "num_attention_heads": h["heads"], "encoder_layers": h["encoder_layers"],
                "encoder_feedforward_dim": h["encoder_ffn"], "decoder_layers": h["decoder_layers"] + 1,
                "dim_feedforward": h["decoder_ffn"], "num_queries": h["num_queries"], "pre_norm": False,
                "enforce_input_projection": False, "common_stride": 4, "activation_function": "relu",
                "feature_strides": [4, 8, 16, 32]}
    wrong = [f"backbone_config.{k} {backbone[k]} (expected {v})" for k, v in expected_backbone.items()
             if k in backbone and backbone[k] != v]
    wrong += [f"{k} {config[k]} (expected {v})" for k, v in expected.items()
              if k in config and (list(config[k]) if isinstance(config[k], (list, tuple)) else config[k]) != v]
    if wrong:
        variant = _variant_of(backbone)
        hint = (f"its backbone is Swin-{variant.upper()}: use create_model('mask2former_swin_{variant}', ...)"
                if variant and variant != arch.removeprefix("mask2former_swin_") else
                "it is not one of the zoo's Mask2Former-Swin-T/S/B/L Cityscapes configurations")
        raise CheckpointError(f"the folder's config.json does not describe {arch}: " + ", ".join(wrong) + f"; {hint}")
    labels = len(config["id2label"]) if config.get("id2label") else config.get("num_labels")
    if labels is not None and labels != model.num_classes and not reinit_classifier:
        raise CheckpointError(f"the folder's config.json has {labels} labels but the model was built for "
                              f"{model.num_classes} classes: pass num_classes={labels}, or another count to "
                              "re-initialise the class predictor")


TRANSFORMERS = Layout(
    "transformers", rules=_TRANSFORMERS_RULES, check_config=check_transformers_config,
    description="huggingface/transformers Mask2FormerForUniversalSegmentation with a Swin backbone (the "
                "facebook/mask2former-swin-* Hub files, and save_pretrained of every transformers version)")
TRANSFORMERS5 = Layout(
    "transformers5", rules=_TRANSFORMERS5_RULES, check_config=check_transformers_config,
    description="huggingface/transformers >= 5 Mask2FormerForUniversalSegmentation.state_dict() (in-memory names)")


# ----------------------------------------------------------------------------------------------- models

SPEC = ArchSpec(
    reference="huggingface/transformers v5.24.0 src/transformers/models/mask2former/modeling_mask2former.py::"
              "Mask2FormerForUniversalSegmentation (converted from facebookresearch/Mask2Former's detectron2 checkpoints)",
    paper="Cheng et al., Masked-attention Mask Transformer for Universal Image Segmentation, CVPR 2022",
    input=DETECTRON2_RGB, classifiers=("head.class_predictor",), classifier_extra_outputs=1,
    layouts=(TRANSFORMERS, TRANSFORMERS5), align_corners=ALIGN_CORNERS, head_stride=4,
    min_input_size=32,          # one token at 1/32
    family="original",
    # No Recipe: the paper trains with AdamW (lr 1e-4, weight decay 0.05, backbone x0.1, poly, 90k iterations,
    # 512x1024 crops, batch 16) and the Hungarian-matching loss, which the zoo's SGD/CE Recipe cannot state.
    recipe=None)


def _mask2former(variant: str, num_classes: int) -> Mask2Former:
    backbone = swin_transformer(variant)
    return Mask2Former(backbone, Mask2FormerHead(backbone.out_channels, num_classes))


@register_model(SPEC)
def mask2former_swin_t(num_classes: int = 19) -> Mask2Former:
    """Mask2Former, Swin-T backbone (ImageNet-1k), 100 queries; weights: Meta's Cityscapes semantic (82.1 val)."""
    return _mask2former("t", num_classes)


@register_model(SPEC)
def mask2former_swin_s(num_classes: int = 19) -> Mask2Former:
    """Mask2Former, Swin-S backbone (ImageNet-1k), 100 queries; weights: Meta's Cityscapes semantic (82.6 val)."""
    return _mask2former("s", num_classes)


@register_model(SPEC)
def mask2former_swin_b(num_classes: int = 19) -> Mask2Former:
    """Mask2Former, Swin-B backbone (ImageNet-21k, window 12), 100 queries; weights: Meta's Cityscapes semantic."""
    return _mask2former("b", num_classes)


@register_model(SPEC)
def mask2former_swin_l(num_classes: int = 19) -> Mask2Former:
    """Mask2Former, Swin-L backbone (ImageNet-21k, window 12), 100 queries; weights: Meta's Cityscapes semantic."""
    return _mask2former("l", num_classes)
