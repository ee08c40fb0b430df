"""Mask2Former-Swin computes what transformers' Mask2FormerForUniversalSegmentation computes, loads its checkpoints
strictly (files and folders), and works with what the zoo offers (fine-tuning, save/load, the inference switch,
export, torch.hub).

The reference is transformers itself (a test-only dependency, which needs scipy for its Hungarian matcher): the real
Swin-T structure with random weights, every parameter and buffer moved off its initial value, saved with its own
``save_pretrained``, then loaded through ``create_model``. Errors are ``max |a - b| / max |b|``.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import cityseg_zoo
from cityseg_zoo import CheckpointError, create_model
from cityseg_zoo.backbones.swin import SWIN_CONFIGS, SwinBlock, SwinConfig, SwinTransformer
from cityseg_zoo.models import mask2former as m2f
from cityseg_zoo.models.mask2former_decoders import MaskedAttentionDecoder, MaskedCrossAttention

pytest.importorskip("scipy")   # transformers' Mask2Former imports it (Hungarian matcher)
transformers = pytest.importorskip("transformers")

ODD = (193, 257)   # 1/4: 49x65, 1/32: 7x9; no stage is a multiple of the 7x7 window
TOL = 1e-4


def max_relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every floating-point parameter and buffer away from its initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=g) * 0.05)
    return model.eval()


def swin_config(variant: str = "t", **overrides):
    cfg = SWIN_CONFIGS[variant]
    kwargs = dict(embed_dim=cfg.embed_dim, depths=list(cfg.depths), num_heads=list(cfg.num_heads),
                  window_size=cfg.window_size, drop_path_rate=0.3, out_features=["stage1", "stage2", "stage3", "stage4"])
    return transformers.SwinConfig(**{**kwargs, **overrides})


def hf_mask2former(variant: str = "t", num_labels: int = 19):
    """transformers' Mask2FormerForUniversalSegmentation with a Swin-``variant`` backbone, random and perturbed."""
    config = transformers.Mask2FormerConfig(backbone_config=swin_config(variant), num_labels=num_labels,
                                            decoder_layers=10)
    torch.manual_seed(0)
    fresh = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    model = perturb(copy.deepcopy(fresh))
    initial = dict(fresh.state_dict())
    unchanged = [k for k, v in model.state_dict().items() if v.is_floating_point() and torch.equal(v, initial[k])]
    assert not unchanged, unchanged
    return model


@pytest.fixture(scope="module")
def hf_t(tmp_path_factory):
    """(transformers Swin-T model, its save_pretrained folder)."""
    model = hf_mask2former("t")
    folder = tmp_path_factory.mktemp("hf_m2f_t")
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def zoo_t(hf_t):
    _, folder = hf_t
    return create_model("mask2former_swin_t", pretrained=str(folder / "model.safetensors")).eval()


@pytest.fixture(scope="module")
def hf_outputs(hf_t):
    """transformers' outputs on the odd batch-2 input, with its auxiliary predictions."""
    hf, _ = hf_t
    x = odd_batch()
    with torch.no_grad():
        return x, hf(pixel_values=x, output_auxiliary_logits=True)


def odd_batch(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, *ODD, generator=torch.Generator().manual_seed(seed))


def detectron2_semantic_inference(outputs, size) -> torch.Tensor:
    """detectron2's MaskFormer.semantic_inference on transformers' outputs: mask logits upsampled to the image size
    before the sigmoid, then einsum with the softmaxed classes minus "no object"."""
    masks = F.interpolate(outputs.masks_queries_logits, size=size, mode="bilinear", align_corners=False)
    return torch.einsum("bqc,bqhw->bchw", outputs.class_queries_logits.softmax(-1)[..., :-1], masks.sigmoid())


# ------------------------------------------------------------------------------------------- backbone

def test_swin_backbone_matches_transformers_swin_backbone_on_odd_sizes():
    """The backbone alone, narrow (embed 32), with Swin-B/L's 12x12 window (the full-model parity tests cover Swin-T's
    7x7), on sizes that pad at every level."""
    variant, window = "b", SWIN_CONFIGS["b"].window_size
    config = swin_config(variant, embed_dim=32, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4])
    torch.manual_seed(0)
    hf = perturb(transformers.SwinBackbone(config))
    ours = SwinTransformer(SwinConfig(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4),
                                      window_size=window)).eval()
    mapped = {}   # SwinBackbone's in-memory keys, renamed by the layout's backbone rules
    for key, value in hf.state_dict().items():
        new = m2f.TRANSFORMERS5.rename(f"model.pixel_level_module.encoder.{key}")
        assert new is not False, key
        if new:
            mapped[new.removeprefix("backbone.")] = value
    ours.load_state_dict(mapped, strict=True)
    for size in [ODD, (97, 31)]:
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(size[0]))
        with torch.no_grad():
            got, expected = ours(x), hf(x).feature_maps
        assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in expected]
        assert all(max_relative_error(a, b) <= 1e-5 for a, b in zip(got, expected)), size


# ------------------------------------------------------------------------------------------- parity

def test_mask2former_swin_t_matches_transformers_semantic_logits(hf_outputs, zoo_t):
    x, outputs = hf_outputs
    assert zoo_t.pretrained_cfg["checkpoint"]["layout"] == "transformers"
    with torch.no_grad():
        lowres = zoo_t.forward_logits_lowres(x)
    expected = m2f.semantic_scores(outputs.class_queries_logits, outputs.masks_queries_logits)
    assert lowres.shape == expected.shape == (2, 19, 49, 65)
    assert max_relative_error(lowres, expected) <= TOL


def test_eval_logits_are_detectron2_semantic_inference_of_transformers_outputs(hf_outputs, zoo_t):
    x, outputs = hf_outputs
    with torch.no_grad():
        scores = zoo_t(x)
    expected = detectron2_semantic_inference(outputs, ODD)
    assert scores.shape == expected.shape == (2, 19, *ODD)
    assert max_relative_error(scores, expected) <= TOL
    assert (scores.argmax(1) == expected.argmax(1)).float().mean() >= 0.999   # ties aside, the same label map


def test_every_decoder_layer_prediction_matches_transformers_auxiliary_logits(hf_outputs, zoo_t):
    x, outputs = hf_outputs
    with torch.no_grad():
        out = zoo_t.head(zoo_t.backbone(x))
    predictions = out["aux_outputs"] + [{"pred_logits": out["pred_logits"], "pred_masks": out["pred_masks"]}]
    expected = outputs.auxiliary_logits + [{"class_queries_logits": outputs.class_queries_logits,
                                            "masks_queries_logits": outputs.masks_queries_logits}]
    assert len(predictions) == len(expected) == 10
    for ours, theirs in zip(predictions, expected):
        assert max_relative_error(ours["pred_logits"], theirs["class_queries_logits"]) <= TOL
        assert max_relative_error(ours["pred_masks"], theirs["masks_queries_logits"]) <= TOL


def test_folder_and_in_memory_state_dict_load_the_same_weights(hf_t, zoo_t, tmp_path):
    hf, folder = hf_t
    from_folder = create_model("mask2former_swin_t", pretrained=str(folder))
    torch.save({k: v.clone() for k, v in hf.state_dict().items()}, tmp_path / "m2f_v5.pth")
    from_memory = create_model("mask2former_swin_t", pretrained=str(tmp_path / "m2f_v5.pth"))
    assert from_memory.pretrained_cfg["checkpoint"]["layout"] == "transformers5"
    reference = zoo_t.state_dict()
    for model in (from_folder, from_memory):
        assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------- masked attention

def test_masked_cross_attention_equals_multihead_attention_with_the_reference_mask_rule():
    torch.manual_seed(0)
    ours = MaskedCrossAttention(32, 4)
    with torch.no_grad():
        ours.in_proj_bias.normal_()
    mha = nn.MultiheadAttention(32, 4)
    mha.load_state_dict(ours.state_dict())
    q, kv = torch.randn(2, 7, 32), torch.randn(2, 23, 32)
    mask_logits = torch.randn(2, 7, 5, 5)
    mask_logits[0, 3] = -1.0                                 # an empty mask: this query must attend everywhere
    allowed = MaskedAttentionDecoder.attention_mask(mask_logits, (23, 1))
    assert allowed[0, 0, 3].all() and not allowed[1].all()
    # The reference: blocked = sigmoid < 0.5, fully blocked rows unblocked, repeated per head, seq-first MHA.
    blocked = F.interpolate(mask_logits, size=(23, 1), mode="bilinear", align_corners=False).sigmoid() < 0.5
    blocked = blocked.flatten(2).repeat_interleave(4, dim=0)
    blocked = blocked & (blocked.sum(-1, keepdim=True) != blocked.shape[-1])
    with torch.no_grad():
        expected = mha(q.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1), attn_mask=blocked)[0]
        got = ours(q, kv, kv, allowed)
    assert max_relative_error(got, expected.transpose(0, 1)) <= 1e-5


def test_semantic_inference_in_query_chunks_equals_all_queries_at_once(monkeypatch):
    g = torch.Generator().manual_seed(0)
    classes, masks = torch.randn(2, 13, 6, generator=g), torch.randn(2, 13, 9, 11, generator=g) * 4
    size = (37, 43)
    whole = m2f.semantic_scores(classes, F.interpolate(masks, size=size, mode="bilinear", align_corners=False))
    monkeypatch.setattr(m2f, "INFERENCE_CHUNK_VALUES", 3 * 37 * 43)   # 3 queries per step, a short last step
    assert max_relative_error(m2f.semantic_inference(classes, masks, size), whole) <= 1e-6


# ------------------------------------------------------------------------------------------- strict loading

def test_strict_loading_names_missing_and_unexpected_keys(hf_t, tmp_path):
    _, folder = hf_t
    state = load_file(str(folder / "model.safetensors"))
    del state["model.pixel_level_module.decoder.encoder.layers.2.self_attn.value_proj.weight"]
    state["model.transformer_module.decoder.extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointError) as err:
        create_model("mask2former_swin_t", pretrained=str(tmp_path / "broken.safetensors"))
    message = str(err.value)
    assert "closest is layout 'transformers'" in message
    assert "head.pixel_decoder.encoder.2.self_attn.value_proj.weight" in message
    assert "model.transformer_module.decoder.extra.weight" in message


def test_folder_of_another_swin_size_is_refused_by_its_config(hf_t):
    _, folder = hf_t
    with pytest.raises(CheckpointError, match=r"does not describe mask2former_swin_s: backbone_config\.depths "
                                              r"\[2, 2, 6, 2\].*Swin-T: use create_model\('mask2former_swin_t'"):
        create_model("mask2former_swin_s", pretrained=str(folder))


def test_folder_of_another_model_type_is_refused(hf_t, tmp_path):
    _, folder = hf_t
    (tmp_path / "model.safetensors").symlink_to(folder / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "maskformer"}))
    with pytest.raises(CheckpointError, match="'maskformer' model, not Mask2Former"):
        create_model("mask2former_swin_t", pretrained=str(tmp_path))


def test_new_class_count_reinitialises_only_the_class_predictor(hf_t, zoo_t):
    _, folder = hf_t
    with pytest.warns(UserWarning, match=r"re-initialised for num_classes=3: head\.class_predictor\.bias, "
                                         r"head\.class_predictor\.weight$"):
        model = create_model("mask2former_swin_t_cityscapes", pretrained=str(folder / "model.safetensors"),
                             num_classes=3)
    assert model.num_classes == 3 and model.head.class_predictor.out_features == 4   # + "no object"
    assert model.pretrained_cfg["reinitialized"] == ["head.class_predictor.bias", "head.class_predictor.weight"]
    reference = zoo_t.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("head.class_predictor."):
            assert torch.equal(value, reference[key]), key
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 96)).shape == (1, 3, 64, 96)
    with pytest.raises(CheckpointError, match="has 19 labels but the model was built for 3 classes"):
        cityseg_zoo.load_checkpoint(create_model("mask2former_swin_t", num_classes=3), folder)


# ------------------------------------------------------------------------------------------- zoo features

def test_train_mode_returns_the_detectron2_prediction_dict():
    torch.manual_seed(0)
    model = create_model("mask2former_swin_t", num_classes=4).train()
    out = model(torch.randn(2, 3, 64, 96))
    assert set(out) == {"pred_logits", "pred_masks", "aux_outputs"}
    assert out["pred_logits"].shape == (2, 100, 5) and out["pred_masks"].shape == (2, 100, 16, 24)
    assert len(out["aux_outputs"]) == 9
    assert all(a["pred_logits"].shape == (2, 100, 5) and a["pred_masks"].shape == (2, 100, 16, 24)
               for a in out["aux_outputs"])
    (out["pred_masks"].mean() + sum(a["pred_logits"].mean() for a in out["aux_outputs"])).backward()
    assert model.backbone.stages[0].blocks[0].attn.q.weight.grad is not None


def test_model_info_describes_mask2former_without_building_weights():
    info = cityseg_zoo.model_info("mask2former_swin_t_cityscapes")
    assert info["architecture"] == "mask2former_swin_t" and info["layouts"] == ["transformers", "transformers5"]
    cfg = json.loads(json.dumps(info["pretrained_cfg"]))
    assert cfg["input"] == {"channel_order": "RGB", "scale": 1.0, "mean": [123.675, 116.28, 103.53],
                            "std": [58.395, 57.12, 57.375]}
    assert cfg["align_corners"] is False and cfg["head_stride"] == 4 and cfg["classifier_extra_outputs"] == 1
    assert cfg["eval"]["mode"] == "whole" and cfg["reported"]["val_miou"] == 82.1
    assert "non-commercial" in cfg["license"].lower() and cfg["num_classes"] == 19
    # transformers' parameter count minus what the zoo does not hold (SwinModel's unused final LayerNorm)
    hf = transformers.Mask2FormerForUniversalSegmentation(transformers.Mask2FormerConfig(
        backbone_config=swin_config("t"), num_labels=19, decoder_layers=10))
    unused = sum(p.numel() for n, p in hf.named_parameters() if ".swin.layernorm." in n)
    assert info["params"] == sum(p.numel() for p in hf.parameters()) - unused
    assert {w: cityseg_zoo.model_info(w)["params"] > info["params"]
            for w in ("mask2former_swin_s", "mask2former_swin_b", "mask2former_swin_l")} == dict.fromkeys(
        ("mask2former_swin_s", "mask2former_swin_b", "mask2former_swin_l"), True)


def test_cli_info_shows_the_weights_terms_and_source(capsys):
    from cityseg_zoo.cli import main
    assert main(["info", "mask2former_swin_l_cityscapes"]) == 0
    out = capsys.readouterr().out
    assert "hf://facebook/mask2former-swin-large-cityscapes-semantic/model.safetensors@20ef8af" in out
    assert "non-commercial" in out.lower() and "Cheng et al." in out


def test_save_pretrained_round_trip_is_bit_exact(zoo_t, tmp_path):
    model = copy.deepcopy(zoo_t)
    model.save_pretrained(tmp_path / "saved")
    loaded = cityseg_zoo.from_pretrained(tmp_path / "saved")
    assert loaded.pretrained_cfg["architecture"] == "mask2former_swin_t" and loaded.num_classes == 19
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_inference_switch_keeps_the_logits(zoo_t):
    """Rounding-level changes (fused q/k/v, in-place residuals) pass through 9 thresholded attention masks, which
    can move a mask value across 0.5: the tolerance is a few 1e-5, the label map the same."""
    x = odd_batch(6)[:1]
    with torch.no_grad():
        expected = zoo_t(x)
        optimized = copy.deepcopy(zoo_t).optimize_for_inference()
        out = optimized(x)
    assert out.shape == expected.shape and max_relative_error(out, expected) <= 5e-5
    assert (out.argmax(1) == expected.argmax(1)).float().mean() >= 0.999
    record = optimized.pretrained_cfg["inference_optimized"]
    assert record["fused_modules"] == {"SwinBlock": 12, "DeformableEncoderLayer": 6, "MaskedAttentionDecoder": 1}
    assert all(block.inference for stage in optimized.backbone.stages for block in stage.blocks)


def test_swin_inference_path_equals_the_reference_blocks_on_odd_sizes():
    """Gathered windows (pad, shift and partition as one index; only the edge windows masked) = the reference."""
    torch.manual_seed(0)
    reference = perturb(SwinTransformer(SwinConfig(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4),
                                                   window_size=12)))
    fused = copy.deepcopy(reference)
    for block in fused.modules():
        if isinstance(block, SwinBlock):
            block.fuse_for_inference()
    for size in [ODD, (97, 31)]:
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(size[1]))
        with torch.no_grad():
            assert all(max_relative_error(a, b) <= 1e-5 for a, b in zip(fused(x), reference(x))), size


@pytest.mark.skipif(not all(__import__("importlib").util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript")),
                    reason="needs the 'export' extra")
def test_onnx_export_at_a_fixed_size_matches_and_dynamic_sizes_raise_export_error(tmp_path):
    from cityseg_zoo.export import ExportError, to_onnx
    # A small model of the same code: the ONNX conversion time grows with the graph (Swin-T's takes minutes here).
    torch.manual_seed(0)
    backbone = SwinTransformer(SwinConfig(embed_dim=32, depths=(2, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=7))
    model = m2f.Mask2Former(backbone, m2f.Mask2FormerHead(backbone.out_channels, 19, dict(
        dim=64, mask_dim=64, heads=2, encoder_layers=1, encoder_ffn=64, decoder_layers=3, decoder_ffn=64,
        num_queries=10)))
    model.arch_spec = cityseg_zoo.registry.arch_spec("mask2former_swin_t")
    perturb(model)
    with pytest.raises(ExportError, match="Swin's window attention cannot be exported with dynamic height/width"):
        to_onnx(model, tmp_path / "dynamic.onnx", height=64, width=96, dynamic_hw=True)
    with pytest.warns(UserWarning, match="Exporting at the fixed size 64x96"):
        result = to_onnx(model, tmp_path / "m2f.onnx", height=64, width=96)   # dynamic_hw=None: falls back
    assert not result.dynamic_hw and result.max_rel_error <= 1e-4 and result.checked_shapes == [(1, 3, 64, 96)]


def test_torch_hub_has_every_mask2former_name():
    import importlib.util
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("hubconf_under_test", repo / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    names = [f"mask2former_swin_{v}" for v in "tsbl"] + cityseg_zoo.list_pretrained("mask2former*")
    assert len(names) == 8 and all(callable(getattr(hubconf, n, None)) for n in names)
