"""SegFormer-B0 ... B5 compute what transformers' SegformerForSemanticSegmentation computes, load its checkpoints
strictly (files and folders), and work with everything the zoo offers (fine-tuning, save/load, the inference switch,
ONNX, torch.hub).

The reference is transformers itself (a test-only dependency): a model with random weights, every parameter and
buffer perturbed away from its initial value (BatchNorm statistics included), saved with its own
``save_pretrained``, then loaded through ``create_model``.
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import cityseg_zoo
from cityseg_zoo import CheckpointError, create_model
from cityseg_zoo.backbones.mix_transformer import MIT_CONFIGS
from cityseg_zoo.models.segformer import DECODER_DIMS, SegFormerHead
from cityseg_zoo.ops.efficient_attention import (EfficientSelfAttention, efficient_attention,
                                                 efficient_attention_reference)
from reference import relative_error

REPO = Path(__file__).resolve().parents[1]
ODD = (161, 225)       # 1/4 maps 41x57, 1/32 maps 6x8: every stride and the 8x8 key reduction floor unevenly
TOL = 1e-4


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every floating-point parameter and buffer away from its initial value (BN running stats included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
            else:
                tensor.add_(torch.randn(tensor.shape, generator=g) * 0.05)
    return model.eval()


def hf_segformer(variant: str, num_labels: int = 19):
    """transformers' SegformerForSemanticSegmentation of one SegFormer size, random and perturbed."""
    transformers = pytest.importorskip("transformers")
    cfg = MIT_CONFIGS[variant]
    config = transformers.SegformerConfig(num_labels=num_labels, hidden_sizes=list(cfg.hidden_sizes),
                                          depths=list(cfg.depths), decoder_hidden_size=DECODER_DIMS[variant])
    torch.manual_seed(0)
    fresh = transformers.SegformerForSemanticSegmentation(config).eval()
    model = perturb(copy.deepcopy(fresh))
    initial = dict(fresh.state_dict())
    unchanged = [k for k, v in model.state_dict().items() if v.is_floating_point() and torch.equal(v, initial[k])]
    assert not unchanged, unchanged
    return model


@pytest.fixture(scope="module", params=["b0", "b2"])
def hf_checkpoint(request, tmp_path_factory):
    """(variant, transformers model, folder written by its save_pretrained)."""
    model = hf_segformer(request.param)
    folder = tmp_path_factory.mktemp(f"hf_{request.param}")
    model.save_pretrained(folder)
    return request.param, model, folder


@pytest.fixture(scope="module")
def hf_b0(tmp_path_factory):
    model = hf_segformer("b0")
    folder = tmp_path_factory.mktemp("hf_b0_only")
    model.save_pretrained(folder)
    return model, folder


def hf_logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=x).logits


def odd_batch(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, *ODD, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- efficient attention

@pytest.mark.parametrize("b, heads, n, m, d", [(2, 1, 97, 13, 32), (1, 5, 161, 1, 32), (2, 2, 45, 45, 7)])
def test_fused_attention_equals_explicit_softmax(b, heads, n, m, d):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, heads, s, d, generator=g) * 2 for s in (n, m, m))
    assert relative_error(efficient_attention(q, k, v), efficient_attention_reference(q, k, v)) <= 1e-6


@pytest.mark.parametrize("sr_ratio, height, width", [(8, 17, 23), (4, 9, 13), (2, 5, 7), (1, 3, 11)])
def test_spatially_reduced_attention_fast_path_equals_reference(sr_ratio, height, width):
    torch.manual_seed(0)
    attention = perturb(EfficientSelfAttention(64, num_heads=2, sr_ratio=sr_ratio))
    x = torch.randn(2, height * width, 64)
    with torch.no_grad():
        fast = attention(x, height, width)
        attention.use_reference = True
        reference = attention(x, height, width)
    assert fast.shape == (2, height * width, 64)
    assert relative_error(fast, reference) <= 1e-6


# ------------------------------------------------------------------------------------------- parity with transformers

@pytest.mark.parametrize("source", ["file", "folder"])
def test_segformer_matches_transformers_logits(hf_checkpoint, source):
    variant, hf, folder = hf_checkpoint
    pretrained = folder / "model.safetensors" if source == "file" else folder
    model = create_model(f"segformer_{variant}", pretrained=str(pretrained)).eval()
    assert model.pretrained_cfg["checkpoint"]["layout"] == "transformers"
    x = odd_batch()
    with torch.no_grad():
        lowres = model.forward_logits_lowres(x)
    expected = hf_logits(hf, x)
    assert lowres.shape == expected.shape == (2, 19, 41, 57)
    assert relative_error(lowres, expected) <= TOL


def test_eval_logits_are_transformers_post_processed_scores(hf_checkpoint):
    transformers = pytest.importorskip("transformers")
    variant, hf, folder = hf_checkpoint
    model = create_model(f"segformer_{variant}", pretrained=str(folder)).eval()
    x = odd_batch(2)
    with torch.no_grad():
        logits = model(x)
        outputs = hf(pixel_values=x)
    processed = transformers.SegformerImageProcessor().post_process_semantic_segmentation(
        outputs, target_sizes=[ODD] * 2, return_segmentation_scores=True)
    scores = torch.stack([p.segmentation_scores for p in processed])
    assert logits.shape == scores.shape == (2, 19, *ODD)
    assert relative_error(logits, scores) <= TOL
    labels = torch.stack([p.segmentation for p in processed])
    assert (logits.argmax(1) == labels).float().mean() >= 0.999   # ties aside, the same label map


def test_segformer_b5_full_config_matches_transformers(tmp_path):
    hf = hf_segformer("b5")
    hf.save_pretrained(tmp_path)
    model = create_model("segformer_b5", pretrained=str(tmp_path)).eval()
    x = torch.randn(1, 3, 97, 129, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert relative_error(model.forward_logits_lowres(x), hf_logits(hf, x)) <= TOL


def test_transformers5_in_memory_state_dict_loads_too(hf_b0, tmp_path):
    hf, _ = hf_b0
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    assert any(k.startswith("segformer.stages.") for k in state)   # transformers >= 5 module names
    torch.save(state, tmp_path / "segformer_b0_v5.pth")
    model = create_model("segformer_b0", pretrained=str(tmp_path / "segformer_b0_v5.pth")).eval()
    assert model.pretrained_cfg["checkpoint"]["layout"] == "transformers5"
    x = odd_batch(4)[:1]
    with torch.no_grad():
        assert relative_error(model.forward_logits_lowres(x), hf_logits(hf, x)) <= TOL


# ------------------------------------------------------------------------------------------- strict loading

def test_strict_loading_names_missing_and_unexpected_keys(hf_b0, tmp_path):
    _, folder = hf_b0
    state = load_file(str(folder / "model.safetensors"))
    del state["segformer.encoder.block.1.0.attention.self.sr.weight"]
    state["decode_head.extra_conv.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointError) as err:
        create_model("segformer_b0", pretrained=str(tmp_path / "broken.safetensors"))
    message = str(err.value)
    assert "closest is layout 'transformers'" in message
    assert "backbone.stages.1.blocks.0.attn.sr.weight" in message and "decode_head.extra_conv.weight" in message


def test_mis_shaped_key_is_named(hf_b0, tmp_path):
    _, folder = hf_b0
    state = load_file(str(folder / "model.safetensors"))
    state["decode_head.linear_fuse.weight"] = state["decode_head.linear_fuse.weight"][:, :512].contiguous()
    save_file(state, str(tmp_path / "narrow.safetensors"))
    with pytest.raises(CheckpointError, match=r"decode_head\.linear_fuse\.weight: checkpoint \(256, 512, 1, 1\)"):
        create_model("segformer_b0", pretrained=str(tmp_path / "narrow.safetensors"))


def test_folder_of_another_segformer_size_is_refused_by_its_config(hf_b0):
    _, folder = hf_b0
    with pytest.raises(CheckpointError, match=r"does not describe segformer_b2: hidden_sizes \[32, 64, 160, 256\].*"
                                              r"SegFormer-B0: use create_model\('segformer_b0'"):
        create_model("segformer_b2", pretrained=str(folder))


def test_folder_of_another_model_type_is_refused(hf_b0, tmp_path):
    _, folder = hf_b0
    other = tmp_path / "beit"
    other.mkdir()
    (other / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (other / "config.json").write_text(json.dumps({"model_type": "beit"}))
    with pytest.raises(CheckpointError, match="'beit' model, not SegFormer"):
        create_model("segformer_b0", pretrained=str(other))


def test_folder_label_count_must_match_unless_the_classifier_is_reinitialised(tmp_path):
    hf = hf_segformer("b0", num_labels=150)
    hf.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="150 labels but the model was built for 19 classes: pass "
                                              "num_classes=150"):
        create_model("segformer_b0", pretrained=str(tmp_path))
    assert create_model("segformer_b0", pretrained=str(tmp_path), num_classes=150).num_classes == 150


def test_folder_with_pytorch_model_bin_is_read_without_unpickling_code(hf_b0, tmp_path, monkeypatch):
    hf, folder = hf_b0
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    torch.save(load_file(str(folder / "model.safetensors")), tmp_path / "pytorch_model.bin")
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    model = create_model("segformer_b0", pretrained=str(tmp_path)).eval()
    assert calls and all(kw.get("weights_only") is True for kw in calls)
    assert model.pretrained_cfg["checkpoint"]["path"].endswith("pytorch_model.bin")
    x = odd_batch(5)[:1]
    with torch.no_grad():
        assert relative_error(model.forward_logits_lowres(x), hf_logits(hf, x)) <= TOL


def test_folder_prefers_safetensors_over_pytorch_model_bin(hf_b0, tmp_path):
    _, folder = hf_b0
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle")   # would fail if it were read
    model = create_model("segformer_b0", pretrained=str(tmp_path))
    assert model.pretrained_cfg["checkpoint"]["path"] == str(tmp_path / "model.safetensors")


def test_folder_without_weights_says_what_it_looked_for(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="holds no model.safetensors or pytorch_model.bin"):
        create_model("segformer_b0", pretrained=str(tmp_path))


# ------------------------------------------------------------------------------------------- zoo features

def test_model_info_describes_segformer_without_building_weights():
    info = cityseg_zoo.model_info("segformer_b0_cityscapes")
    assert info["architecture"] == "segformer_b0" and 3.6e6 < info["params"] < 3.8e6   # the paper's 3.7 M
    assert cityseg_zoo.model_info("segformer_b5")["params"] == pytest.approx(84.6e6, rel=0.01)
    assert info["layouts"] == ["transformers", "transformers5"]
    assert info["weights"][0] == "segformer_b0_cityscapes"            # the 1024x1024 crops are the default
    assert set(info["weights"]) == {"segformer_b0_cityscapes", "segformer_b0_768x768_cityscapes",
                                    "segformer_b0_640x1280_cityscapes", "segformer_b0_512x1024_cityscapes"}
    cfg = json.loads(json.dumps(info["pretrained_cfg"]))
    assert cfg["input"] == {"channel_order": "RGB", "scale": 255.0, "mean": [0.485, 0.456, 0.406],
                            "std": [0.229, 0.224, 0.225]}
    assert cfg["align_corners"] is False and cfg["head_stride"] == 4
    assert cfg["eval"]["mode"] == "slide" and cfg["eval"]["crop_size"] == [1024, 1024]
    assert cfg["eval"]["stride"] == [768, 768]


def test_pretrained_cfg_carries_the_weights_facts_and_licence_terms():
    model = create_model("segformer_b2_cityscapes")   # architecture of those weights, not loaded
    cfg = model.pretrained_cfg
    assert cfg["weights"] == "segformer_b2_cityscapes" and cfg["architecture"] == "segformer_b2"
    assert cfg["sources"][0] == {"kind": "huggingface", "repo_id": "nvidia/segformer-b2-finetuned-cityscapes-1024-1024",
                                 "filename": "pytorch_model.bin",
                                 "revision": "b0beeb6e8376d9d4160654550df42596134ea567"}
    assert "non-commercial" in cfg["license"] and "non-commercial" in cfg["terms"]
    assert cfg["reported"]["val_miou"] == 81.0 and cfg["num_classes"] == 19 and len(cfg["classes"]) == 19


def test_every_hub_revision_is_a_full_commit_hash_or_says_why_not():
    for name in cityseg_zoo.list_pretrained("segformer*"):
        weight = cityseg_zoo.registry.weights_manifest()[name]
        (source,) = weight.sources
        assert source["repo_id"].startswith("nvidia/segformer-") and source["filename"] == "pytorch_model.bin"
        assert len(source["revision"]) == 40 or "no full commit hash" in weight.note, name


def test_train_mode_returns_logits_at_input_size_and_uses_stochastic_depth():
    torch.manual_seed(0)
    model = create_model("segformer_b0", num_classes=4).train()
    x = torch.randn(2, 3, 65, 97)
    out = model(x)
    assert list(out) == ["out"] and out["out"].shape == (2, 4, 65, 97)
    assert not torch.equal(model(x)["out"], out["out"])   # DropPath (and head dropout) are random in training
    out["out"].sum().backward()
    assert model.backbone.stages[0].blocks[0].attn.sr.weight.grad is not None


def test_too_small_input_is_a_clear_error():
    with pytest.raises(cityseg_zoo.InputError, match="minimum side of 32 px"):
        create_model("segformer_b0").eval()(torch.randn(1, 3, 31, 64))


def test_new_num_classes_reinitialises_only_the_classifier(hf_b0):
    hf, folder = hf_b0
    with pytest.warns(UserWarning, match=r"re-initialised for num_classes=5: head\.classifier\.bias, "
                                         r"head\.classifier\.weight$"):
        model = create_model("segformer_b0", pretrained=str(folder), num_classes=5)
    reference = create_model("segformer_b0", pretrained=str(folder)).state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("head.classifier."):
            assert value.shape[0] == 5
        else:
            assert torch.equal(value, reference[key]), key


def test_save_pretrained_round_trip_is_bit_exact(hf_b0, tmp_path):
    _, folder = hf_b0
    model = create_model("segformer_b0", pretrained=str(folder), num_classes=3)
    model.set_classes(["road", "curb", "other"])
    model.save_pretrained(tmp_path / "saved")
    loaded = cityseg_zoo.from_pretrained(tmp_path / "saved")
    assert loaded.pretrained_cfg["architecture"] == "segformer_b0" and loaded.num_classes == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    # The zoo's own folder loads through create_model too, and only into the same architecture.
    assert create_model("segformer_b0", pretrained=str(tmp_path / "saved"), num_classes=3) is not None
    with pytest.raises(CheckpointError, match="holds a 'segformer_b0' model, not 'segformer_b1'"):
        create_model("segformer_b1", pretrained=str(tmp_path / "saved"), num_classes=3)


@pytest.mark.parametrize("variant", ["b0", "b2"])
def test_inference_switch_keeps_the_logits(variant):
    torch.manual_seed(0)
    model = perturb(create_model(f"segformer_{variant}"))
    x = odd_batch(6)
    with torch.no_grad():
        expected = model(x)
        optimized = copy.deepcopy(model).optimize_for_inference()
        out = optimized(x)
    assert out.shape == expected.shape and relative_error(out, expected) <= 1e-5
    record = optimized.pretrained_cfg["inference_optimized"]
    assert record["folded_norms"] == 1
    assert record["fused_modules"] == {"Block": sum(MIT_CONFIGS[variant].depths), "SegFormerHead": 1}
    assert all(block.inference for stage in optimized.backbone.stages for block in stage.blocks)
    head: SegFormerHead = optimized.head
    assert head.fused and head.linear_fuse is None
    assert not [n for n, m in optimized.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert [lin.weight.shape[1] for lin in head.linear_c] == list(MIT_CONFIGS[variant].hidden_sizes)


def test_head_fusion_alone_equals_the_concatenating_head():
    torch.manual_seed(0)
    head = perturb(SegFormerHead([32, 64, 160, 256], 256, 19))
    features = [torch.randn(1, c, 41 // s + 1, 57 // s + 1) for c, s in ((32, 1), (64, 2), (160, 4), (256, 8))]
    with torch.no_grad():
        expected = head(features)
        head.fuse_for_inference()          # BN not folded beforehand: the head folds it itself
        assert relative_error(head(features), expected) <= 1e-5


@pytest.mark.skipif(not all(__import__("importlib").util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript")),
                    reason="needs the 'export' extra")
def test_onnx_export_with_dynamic_height_and_width(tmp_path):
    import onnxruntime as ort
    from cityseg_zoo.export import to_onnx
    torch.manual_seed(0)
    model = perturb(create_model("segformer_b0"))
    result = to_onnx(model, tmp_path / "segformer_b0.onnx", height=64, width=96, dynamic_hw=True)
    assert result.dynamic_hw and result.max_rel_error <= 1e-4 and len(result.checked_shapes) == 2
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 120, 72)        # a third size, taller than wide
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        assert relative_error(got, model(x)) <= 1e-4


def test_torch_hub_has_every_segformer_name():
    import importlib.util
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = [name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")]
    names = [f"segformer_b{i}" for i in range(6)] + cityseg_zoo.list_pretrained("segformer*")
    assert set(names) <= set(entries)
    model = torch.hub.load(str(REPO), "segformer_b0_512x1024_cityscapes", source="local")
    assert model.pretrained_cfg["weights"] == "segformer_b0_512x1024_cityscapes"
    assert model.pretrained_cfg["eval"]["scales"] == [0.5]


def test_runtime_code_never_imports_transformers():
    import subprocess
    import sys
    code = ("import sys, cityseg_zoo, cityseg_zoo.optimize, cityseg_zoo.export, cityseg_zoo.hf;"
            "m = cityseg_zoo.create_model('segformer_b0'); m.optimize_for_inference();"
            "print('transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "False"
