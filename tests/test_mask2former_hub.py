"""Mask2Former weights through the zoo's hub: a loopback Hugging Face Hub serves a transformers-layout
``pytorch_model.bin`` with the real Swin-T key set (the v4-era legacy names transformers' ``save_pretrained`` still
writes) under the manifest's own repo id, file name and revision; ``pretrained=True`` downloads, verifies, converts
and loads it, and later runs load it offline from the cache, without unpickling."""
from __future__ import annotations

import copy
import hashlib
import io

import pytest
import torch
from safetensors.torch import load_file

import cityseg_zoo
import cityseg_zoo.factory as factory
from cityseg_zoo import create_model
from cityseg_zoo.hub.weights import converted_path
from loopback import HubServer
from reference import shipped_entry, with_manifest_entries
from test_mask2former import hf_mask2former, max_relative_error
from cityseg_zoo.models.mask2former import semantic_scores

WEIGHT = "mask2former_swin_t_cityscapes"


@pytest.fixture(scope="module")
def hub_checkpoint(tmp_path_factory):
    """(transformers model, the bytes of its pytorch_model.bin in the layout of the facebook Hub files)."""
    hf = hf_mask2former("t")
    folder = tmp_path_factory.mktemp("hf_save")
    hf.save_pretrained(folder)
    state = load_file(str(folder / "model.safetensors"))
    assert "model.pixel_level_module.encoder.encoder.layers.0.blocks.0.attention.self.query.weight" in state
    # The v4-era Hub files also hold the Swin blocks' relative_position_index buffers; the layout drops them.
    state["model.pixel_level_module.encoder.encoder.layers.0.blocks.0.attention.self.relative_position_index"] = \
        torch.zeros(2401, dtype=torch.long)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return hf, buffer.getvalue()


def test_pretrained_true_downloads_verifies_converts_and_then_loads_offline(hub_checkpoint, monkeypatch):
    hf, data = hub_checkpoint
    entry = copy.deepcopy(shipped_entry(WEIGHT))
    entry.update(integrity="sha256", sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    with_manifest_entries(monkeypatch, entry)
    (source,) = entry["sources"]
    assert source == {"kind": "huggingface", "repo_id": "facebook/mask2former-swin-tiny-cityscapes-semantic",
                      "filename": "pytorch_model.bin", "revision": "main"}
    monkeypatch.setattr(factory, "_NOTICES_SHOWN", set())
    with HubServer({(source["repo_id"], source["filename"]): data}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.warns(factory.WeightsTermsNotice, match=f"{WEIGHT}: Meta's Mask2Former Cityscapes weights are "
                                                            "licensed CC BY-NC 4.0"):
            model = create_model(WEIGHT, pretrained=True).eval()
        assert f"GET /{source['repo_id']}/resolve/main/pytorch_model.bin" in hub.requests
    converted = converted_path(cityseg_zoo.registry.weights_manifest()[WEIGHT])
    assert model.pretrained_cfg["checkpoint"] == {"path": str(converted), "layout": "native"}
    assert model.pretrained_cfg["weights"] == WEIGHT and model.pretrained_cfg["reported"]["val_miou"] == 82.1
    x = torch.randn(1, 3, 97, 129, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = hf(pixel_values=x)
        expected = semantic_scores(out.class_queries_logits, out.masks_queries_logits)
        assert max_relative_error(model.forward_logits_lowres(x), expected) <= 1e-4

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")   # the Hub is gone and the process is offline

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called on a cached weight")
    monkeypatch.setattr(torch, "load", no_unpickling)
    again = create_model(WEIGHT, pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_finetuning_from_the_weight_name_reinitialises_only_the_class_predictor(hub_checkpoint, monkeypatch):
    hf, data = hub_checkpoint
    entry = copy.deepcopy(shipped_entry(WEIGHT))
    entry.update(integrity="sha256", sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    with_manifest_entries(monkeypatch, entry)
    (source,) = entry["sources"]
    monkeypatch.setattr(factory, "_NOTICES_SHOWN", set())
    with HubServer({(source["repo_id"], source["filename"]): data}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.warns(UserWarning, match=r"re-initialised for num_classes=3: head\.class_predictor\.bias, "
                                             r"head\.class_predictor\.weight"):
            model = create_model(WEIGHT, pretrained=True, num_classes=3).eval()
        reference = create_model(WEIGHT, pretrained=True).state_dict()
    tuned = model.state_dict()
    assert model.head.class_predictor.out_features == 4          # K classes + the "no object" slot
    assert set(tuned) == set(reference)
    for key, value in reference.items():
        if not key.startswith("head.class_predictor."):
            assert torch.equal(tuned[key], value), key
    with torch.no_grad():
        assert model(torch.randn(1, 3, 65, 97)).shape == (1, 3, 65, 97)
