"""The weight hub: manifest schema, convert-once-to-safetensors cache, CLI download/convert, ImageNet backbones.

Every download here runs for real against servers on 127.0.0.1 that the tests start.
"""
import copy
import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import cityseg_zoo
from cityseg_zoo import CheckpointError, create_model, load_checkpoint
from cityseg_zoo.cli import main
from cityseg_zoo.cli.hub import weights_table
from cityseg_zoo.hub.download import HashMismatchError, cache_dir, fetch_weights
from cityseg_zoo.hub.manifest import ManifestError, SCHEMA_VERSION, format_manifest, validate_manifest
from cityseg_zoo.hub.weights import converted_path
from cityseg_zoo.specs import WeightSpec
from loopback import FileServer, HubServer
from reference import (manifest_entry, reference_state_dict, save_container, shipped_entry, toy_weight,
                       with_manifest_entries)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fcn_checkpoint() -> tuple[dict, bytes]:
    """OCNet's FCN baseline r101 reference checkpoint (bare state dict), as served bytes."""
    state = reference_state_dict("fcn_ocnet_baseline_r101_original")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return state, buffer.getvalue()


def _serve_fcn(monkeypatch, server, data, **overrides):
    entry = manifest_entry("fcn_r101_loopback", "fcn_r101", "fcn.pth", data,
                           [{"kind": "http", "url": f"{server.url}/fcn.pth"}], layout="ocnet_baseline", **overrides)
    with_manifest_entries(monkeypatch, entry)
    return entry


# --- manifest schema -------------------------------------------------------------------------------------------

def test_shipped_manifest_follows_its_schema():
    layouts = {name: [lay.name for lay in cityseg_zoo.registry.arch_spec(name).layouts]
               for name in cityseg_zoo.list_models()}
    validate_manifest(json.loads((REPO / "weights_manifest.json").read_text()), layouts)


def test_shipped_manifest_is_in_its_canonical_format():
    text = (REPO / "weights_manifest.json").read_text()
    assert format_manifest(json.loads(text)) == text, "run python -m cityseg_zoo.hub.manifest to reformat it"


def test_manifest_does_not_repeat_the_architecture_input():
    entry = shipped_entry("danet_r101_cityscapes")
    entry["input"] = cityseg_zoo.registry.arch_spec("danet_r101").input.as_dict()
    problems = cityseg_zoo.registry.weight_problems(WeightSpec.from_manifest(entry))
    assert problems and "repeats danet_r101's normalisation" in problems[0]
    entry["input"]["channel_order"] = "BGR"   # a real override is allowed, and wins in pretrained_cfg
    assert cityseg_zoo.registry.weight_problems(WeightSpec.from_manifest(entry)) == []


def test_manifest_model_kwargs_must_be_builder_arguments():
    entry = {**shipped_entry("ccnet_r101_cityscapes"), "model_kwargs": {"recurence": 2}}
    problems = cityseg_zoo.registry.weight_problems(WeightSpec.from_manifest(entry))
    assert problems == ["weights['ccnet_r101_cityscapes']: model_kwargs ['recurence'] are not arguments of ccnet_r101"]


@pytest.mark.parametrize("change, message", [
    (lambda e: e.pop("license"), "missing 'license'"),
    (lambda e: e.update(sha256="abc"), "sha256: 'abc' does not match"),
    (lambda e: e["sources"].append({"kind": "ftp", "url": "ftp://x"}), "kind 'ftp' is not one of"),
    (lambda e: e.update(integrity="sha256", sha256=None), "integrity 'sha256' if and only if"),
    (lambda e: e.update(sources=[]), "integrity 'unreleased' if and only if there are no sources"),
    (lambda e: e["eval"].update(mode="sliding"), "eval.mode: 'sliding' is not one of"),
    (lambda e: e.update(input={"channel_order": "RGB", "scale": 1.0, "mean": [1, 2], "std": [1, 1, 1]}),
     "input.mean: 2 items"),
    (lambda e: e.update(colour="red"), "unknown field 'colour'"),
    (lambda e: e.update(architecture="fcn_r102"), "unknown architecture 'fcn_r102'"),
    (lambda e: e.update(layout="mmseg"), "has no layout 'mmseg'"),
])
def test_manifest_schema_rejects_bad_entries(change, message):
    entry = copy.deepcopy(shipped_entry("danet_r101_cityscapes"))
    change(entry)
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace("[", r"\[")):
        validate_manifest({"schema_version": SCHEMA_VERSION, "weights": [entry]}, {"danet_r101": ["danet"]})


def test_manifest_rejects_duplicate_names():
    entry = shipped_entry("danet_r101_cityscapes")
    with pytest.raises(ManifestError, match="appears twice"):
        validate_manifest({"schema_version": SCHEMA_VERSION, "weights": [entry, entry]})


def test_readme_weight_table_is_the_manifest():
    assert weights_table() in (REPO / "README.md").read_text()


# --- hashes ------------------------------------------------------------------------------------------------------

def test_documented_hash_prefix_is_checked():
    import hashlib
    data = b"weights" * 1000
    digest = hashlib.sha256(data).hexdigest()
    with FileServer({"toy.pth": data}) as server:
        sources = [{"kind": "http", "url": f"{server.url}/toy.pth"}]
        weight = toy_weight("toy_cityscapes", "toy.pth", data, sources, integrity="sha256_prefix",
                            sha256_prefix=digest[:8], sha256=None, size=None)
        assert fetch_weights(weight, progress=False).read_bytes() == data
        bad = toy_weight("bad_cityscapes", "toy2.pth", data, sources, integrity="sha256_prefix",
                         sha256_prefix="deadbeef", sha256=None, size=None)
        with pytest.raises(HashMismatchError, match="deadbeef"):
            fetch_weights(bad, progress=False)
    assert not (cache_dir() / "weights" / "toy2.pth").exists()


def test_trust_on_first_use_warns_then_pins_the_hash():
    with FileServer({"toy.pth": b"first" * 100}) as server:
        weight = toy_weight("toy_cityscapes", "toy.pth", b"", [{"kind": "http", "url": f"{server.url}/toy.pth"}],
                            integrity="trust_on_first_use", sha256=None, size=None)
        with pytest.warns(UserWarning, match="trusting toy.pth on first use"):
            path = fetch_weights(weight, progress=False)
        path.write_bytes(b"other" * 100)  # the cached file changes behind our back
        server.files["toy.pth"] = b"other" * 100  # and the server now serves other bytes too
        with pytest.warns(UserWarning, match="downloading it again"), pytest.raises(HashMismatchError):
            fetch_weights(weight, progress=False)


# --- convert once, then safetensors ----------------------------------------------------------------------------

def test_legacy_pth_is_converted_once_and_later_loads_never_unpickle(monkeypatch, fcn_checkpoint):
    state, data = fcn_checkpoint
    with FileServer({"fcn.pth": data}) as server:
        _serve_fcn(monkeypatch, server, data)
        first = create_model("fcn_r101_loopback", pretrained=True)
        assert server.requests == ["/fcn.pth"]
    converted = converted_path(cityseg_zoo.registry.weights_manifest()["fcn_r101_loopback"])
    assert converted.is_file() and not (cache_dir() / "weights" / "fcn.pth").exists()

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called on a cached weight")
    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setenv("CITYSEG_ZOO_OFFLINE", "1")  # the server is gone too
    second = create_model("fcn_r101_loopback", pretrained=True)
    assert second.pretrained_cfg["checkpoint"]["path"] == str(converted)
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), key
    assert torch.equal(second.head.classifier.weight, state["layer6.weight"])


def test_tampered_converted_file_is_rebuilt_from_source(monkeypatch, fcn_checkpoint):
    _, data = fcn_checkpoint
    with FileServer({"fcn.pth": data}) as server:
        _serve_fcn(monkeypatch, server, data)
        create_model("fcn_r101_loopback", pretrained=True)
        converted = converted_path(cityseg_zoo.registry.weights_manifest()["fcn_r101_loopback"])
        raw = bytearray(converted.read_bytes())
        raw[-1] ^= 0xFF
        converted.write_bytes(bytes(raw))
        with pytest.warns(UserWarning, match="converting it again"):
            create_model("fcn_r101_loopback", pretrained=True)
        assert server.requests == ["/fcn.pth", "/fcn.pth"]


def test_cli_download_prefetches_for_offline_use(monkeypatch, fcn_checkpoint, capsys):
    _, data = fcn_checkpoint
    with FileServer({"fcn.pth": data}) as server:
        _serve_fcn(monkeypatch, server, data)
        assert main(["download", "fcn_r101_loopback", "--quiet"]) == 0
    assert str(converted_path(cityseg_zoo.registry.weights_manifest()["fcn_r101_loopback"])) in capsys.readouterr().out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    create_model("fcn_r101_loopback", pretrained=True)


def test_cli_download_reports_each_failure(monkeypatch, capsys):
    monkeypatch.setenv("CITYSEG_ZOO_OFFLINE", "1")
    assert main(["download", "galdnet_r101_cityscapes", "dgcnet_r101_cityscapes", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "no weights were ever released for 'galdnet_r101_cityscapes'" in out
    assert "offline and dgcnet_r101_cityscapes.pth" in out and "drive.google.com" in out


def test_cli_convert_writes_safetensors_that_load_strictly(tmp_path, fcn_checkpoint):
    state, _ = fcn_checkpoint
    source = save_container(state, tmp_path / "ocnet_baseline.pth", "module")
    out = tmp_path / "fcn.safetensors"
    assert main(["convert", str(source), "--arch", "fcn_r101", "--out", str(out)]) == 0
    model = load_checkpoint(create_model("fcn_r101"), out)
    assert model.pretrained_cfg["checkpoint"]["layout"] == "native"
    assert torch.equal(model.head.classifier.weight, state["layer6.weight"])


def test_cli_convert_refuses_a_mismatched_checkpoint(tmp_path, capsys):
    source = tmp_path / "wrong.pth"
    torch.save(reference_state_dict("danet_r101_original"), source)
    assert main(["convert", str(source), "--arch", "fcn_r101", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "does not match fcn_r101" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


# --- ImageNet backbone -----------------------------------------------------------------------------------------

def test_pretrained_backbone_loads_timm_imagenet_weights_from_the_hub(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants
    import timm
    trunk = timm.create_model("resnet50s", num_classes=0)
    torch.nn.init.normal_(trunk.conv1[0].weight)  # distinguishable from a fresh init
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, str(weights))
    with HubServer({("timm/resnet50s.gluon_in1k", "model.safetensors"): weights.read_bytes()}) as hub:
        # what HF_ENDPOINT sets when huggingface_hub is imported
        monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
        model = create_model("fcn_r50", pretrained_backbone=True)
    assert torch.equal(model.backbone.conv1[0].weight, trunk.conv1[0].weight)
    assert torch.equal(model.backbone.layer4[2].conv3.weight, trunk.layer4[2].conv3.weight)
    assert model.pretrained_cfg["backbone_weights"] == "timm/resnet50s.gluon_in1k"


def test_pretrained_backbone_offline_says_what_is_missing(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(cityseg_zoo.WeightsUnavailableError, match="resnet50s"):
        create_model("fcn_r50", pretrained_backbone=True)


# --- every source kind serves every container --------------------------------------------------------------------

@pytest.mark.parametrize("container, kind", [("state_dict", "google_drive"), ("module", "huggingface")])
def test_reference_containers_load_from_every_source_kind(monkeypatch, tmp_path, fcn_checkpoint, container, kind):
    state, _ = fcn_checkpoint
    data = save_container(state, tmp_path / "fcn.pth", container).read_bytes()
    with FileServer({"fcn.pth": data, "FCNID": data}, gdrive_confirm=(kind == "google_drive")) as files, \
            HubServer({("org/fcn", "fcn.pth"): data}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        source = {"http": {"kind": "http", "url": f"{files.url}/fcn.pth"},
                  "google_drive": {"kind": "google_drive", "id": "FCNID", "url": f"{files.url}/uc?id=FCNID"},
                  "huggingface": {"kind": "huggingface", "repo_id": "org/fcn", "filename": "fcn.pth",
                                  "revision": "main"}}[kind]
        with_manifest_entries(monkeypatch, manifest_entry("fcn_r101_loopback", "fcn_r101", "fcn.pth", data,
                                                          [source], layout="ocnet_baseline", container=container))
        model = torch.hub.load(str(REPO), "fcn_r101_loopback", source="local", pretrained=True)
    assert torch.equal(model.head.classifier.weight, state["layer6.weight"])
    assert model.pretrained_cfg["weights"] == "fcn_r101_loopback"
