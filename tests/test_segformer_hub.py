"""SegFormer weights through the zoo's hub and command line: a loopback Hugging Face Hub serves a transformers-layout
``pytorch_model.bin`` under the manifest's own repo id, file name and pinned revision; ``pretrained=True`` downloads,
verifies, converts and loads it, and later runs load it offline from the cache. Then ``cityseg-zoo list / info /
download / predict / eval / benchmark`` on tiny inputs."""
from __future__ import annotations

import copy
import hashlib
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import cityseg_zoo
import cityseg_zoo.factory as factory
import loopback
from cityseg_zoo import create_model
from cityseg_zoo.cli import main
from cityseg_zoo.hub.weights import converted_path
from loopback import HubServer
from reference import relative_error, shipped_entry, with_manifest_entries
from test_data import write_fake_cityscapes
from test_segformer import hf_segformer, perturb

WEIGHT = "segformer_b0_cityscapes"


@pytest.fixture(scope="module")
def hub_checkpoint(tmp_path_factory):
    """(transformers model, the bytes of its pytorch_model.bin in the layout of the nvidia Hub files)."""
    hf = hf_segformer("b0")
    folder = tmp_path_factory.mktemp("hf_save")
    hf.save_pretrained(folder)           # writes the legacy segformer.encoder.* names, as the Hub files have
    buffer = io.BytesIO()
    torch.save(load_file(str(folder / "model.safetensors")), buffer)
    return hf, buffer.getvalue()


@pytest.fixture
def served(monkeypatch, hub_checkpoint):
    """A loopback Hub holding the checkpoint at the manifest's repo/revision/file; a test manifest entry with its
    real sha256 and size. Yields (server, manifest source, transformers model)."""
    hf, data = hub_checkpoint
    entry = copy.deepcopy(shipped_entry(WEIGHT))
    entry.update(integrity="sha256", sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    with_manifest_entries(monkeypatch, entry)
    (source,) = entry["sources"]
    monkeypatch.setattr(loopback._HubHandler, "COMMIT", source["revision"])   # the server answers that revision
    monkeypatch.setattr(factory, "_NOTICES_SHOWN", set())
    with HubServer({(source["repo_id"], source["filename"]): data}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub, source, hf


def test_pretrained_true_downloads_verifies_converts_and_then_loads_offline(served, monkeypatch):
    hub, source, hf = served
    with pytest.warns(factory.WeightsTermsNotice,
                      match=f"{WEIGHT}: NVIDIA's SegFormer weights are licensed for non-commercial use"):
        model = create_model(WEIGHT, pretrained=True).eval()
    assert f"GET /{source['repo_id']}/resolve/{source['revision']}/pytorch_model.bin" in hub.requests
    converted = converted_path(cityseg_zoo.registry.weights_manifest()[WEIGHT])
    assert model.pretrained_cfg["checkpoint"] == {"path": str(converted), "layout": "native"}
    x = torch.randn(1, 3, 97, 161)
    with torch.no_grad():
        assert relative_error(model.forward_logits_lowres(x), hf(pixel_values=x).logits) <= 1e-4
    hub.httpd.shutdown()                                  # the Hub is gone ...
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")             # ... and the process is offline

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called on a cached weight")
    monkeypatch.setattr(torch, "load", no_unpickling)
    again = create_model(WEIGHT, pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_finetuning_from_the_weight_name_reinitialises_only_the_classifier(served):
    hub, source, hf = served
    with pytest.warns(UserWarning, match=r"re-initialised for num_classes=3: head\.classifier\.bias, "
                                         r"head\.classifier\.weight"):
        model = create_model(WEIGHT, pretrained=True, num_classes=3).eval()
    assert model.pretrained_cfg["reinitialized"] == ["head.classifier.bias", "head.classifier.weight"]
    assert model.pretrained_cfg["classes"] == ["class_0", "class_1", "class_2"]
    reference = create_model(WEIGHT, pretrained=True).state_dict()
    tuned = model.state_dict()
    assert set(tuned) == set(reference)
    for key, value in reference.items():
        if key.startswith("head.classifier."):
            assert tuned[key].shape[0] == 3, key
        else:
            assert torch.equal(tuned[key], value), key
    with torch.no_grad():
        assert model(torch.randn(1, 3, 65, 97)).shape == (1, 3, 65, 97)


def test_a_file_that_does_not_match_the_manifest_hash_is_refused(served, monkeypatch):
    hub, source, _ = served
    hub.files[(source["repo_id"], source["filename"])] += b"\0"
    with pytest.raises(cityseg_zoo.CheckpointError, match="size .* bytes, manifest says"):
        create_model(WEIGHT, pretrained=True)
    assert not converted_path(cityseg_zoo.registry.weights_manifest()[WEIGHT]).exists()


def test_cli_download_prefetches_the_hub_file_for_offline_use(served, monkeypatch, capsys):
    assert main(["download", WEIGHT, "--quiet"]) == 0
    assert f"{WEIGHT}: {converted_path(cityseg_zoo.registry.weights_manifest()[WEIGHT])}" in capsys.readouterr().out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.warns(UserWarning, match="non-commercial"):
        assert create_model(WEIGHT, pretrained=True).pretrained_cfg["weights"] == WEIGHT


def test_cli_list_and_info_show_the_segformer_weights_and_their_terms(capsys):
    assert main(["list", "segformer_b0*"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^segformer_b0 +segformer_b0_cityscapes, segformer_b0_768x768_cityscapes, "
                     r"segformer_b0_640x1280_cityscapes, segformer_b0_512x1024_cityscapes$", out, re.MULTILINE)
    assert main(["list", "--markdown", "segformer*"]) == 0
    table = capsys.readouterr().out
    assert "| `segformer_b5_cityscapes` | original | Hugging Face | val 82.4 | none published: trust on first use |" \
        in table
    assert main(["info", "segformer_b0_512x1024_cityscapes"]) == 0
    info = capsys.readouterr().out
    assert "hf://nvidia/segformer-b0-finetuned-cityscapes-512-1024/pytorch_model.bin@67a004b" in info
    assert '"scales": [0.5]' in info and "non-commercial" in info
    assert main(["info", "segformer_b3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layouts"] == ["transformers", "transformers5"]


@pytest.fixture(scope="module")
def random_b0(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "segformer_b0_random.safetensors"
    save_file(perturb(create_model("segformer_b0")).state_dict(), str(path))
    return path


def test_cli_predict_and_eval_run_segformer_with_its_weights_protocol(random_b0, tmp_path, capsys):
    root = tmp_path / "cityscapes"
    pairs = write_fake_cityscapes(root, cities=(("aachen", 1), ("bochum", 1)))
    # The 512x1024 weights' protocol: the whole image at scale 0.5 (64x96 -> 32x48, SegFormer's minimum side).
    args = ["--model", "segformer_b0_512x1024_cityscapes", "--weights", str(random_b0)]
    assert main(["predict", str(pairs[0][0]), "--out", str(tmp_path / "pred"), *args]) == 0
    train_ids = np.array(Image.open(tmp_path / "pred" / f"{pairs[0][0].name[:-4]}_trainIds.png"))
    assert train_ids.shape == (64, 96) and train_ids.max() < 19
    assert main(["eval", "--data", str(root), "--split", "val", "--model", "segformer_b0", "--weights",
                 str(random_b0), "--mode", "slide", "--crop", "48", "--stride", "32", "--no-progress",
                 "--json", str(tmp_path / "scores.json")]) == 0
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["images"] == 2 and 0 <= scores["miou"] <= 1
    assert re.search(r"^mIoU +\d+\.\d\d$", capsys.readouterr().out, re.MULTILINE)


def test_cli_benchmark_measures_segformer_eager_and_switched(tmp_path):
    stem = tmp_path / "bench"
    assert main(["benchmark", "--models", "segformer_b0", "--sizes", "64x96", "--modes", "eager", "optimized",
                 "--warmup", "0", "--repeats", "1", "--output", str(stem)]) == 0
    points = json.loads(stem.with_suffix(".json").read_text())
    assert [p["mode"] for p in points] == ["eager", "optimized"] and not any(p["error"] for p in points)
    assert "1 conv+norm folded" in points[1]["fast_paths"]
    assert "| `segformer_b0` | 64x96 | optimized |" in stem.with_suffix(".md").read_text()
