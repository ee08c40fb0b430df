"""save_pretrained / from_pretrained: a fine-tuned model round-trips through a folder and a (loopback) Hub repo."""
import json

import pytest
import torch

import cityseg_zoo
from cityseg_zoo.errors import CheckpointError, WeightsUnavailableError
from cityseg_zoo.hf import from_pretrained, save_pretrained
from loopback import HubServer

CLASSES = ["road", "curb", "other"]


@pytest.fixture(scope="module")
def finetuned():
    """An fcn_r50 with 3 named classes and non-default BN statistics, as a fine-tuned model would be."""
    torch.manual_seed(0)
    model = cityseg_zoo.create_model("fcn_r50", num_classes=3)
    model.train()(torch.randn(2, 3, 32, 32))   # moves the running statistics away from their init
    model.set_classes(CLASSES)
    model.mark_finetuned("fcn_r50_example")
    return model.eval()


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_pretrained_writes_safetensors_and_a_readable_config(finetuned, tmp_path):
    save_pretrained(finetuned, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == "fcn_r50" and config["num_classes"] == 3 and config["classes"] == CLASSES
    assert config["input"] == json.loads(json.dumps(finetuned.pretrained_cfg["input"]))   # its normalisation


def test_folder_round_trip_is_bit_exact(finetuned, tmp_path):
    save_pretrained(finetuned, tmp_path)
    loaded = from_pretrained(tmp_path)
    assert_same_weights(finetuned, loaded)
    assert not loaded.training and loaded.pretrained_cfg["finetuned_from"] == "fcn_r50_example"
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        assert torch.equal(loaded(x), finetuned(x))


def test_from_pretrained_loads_a_hub_repo_by_name(finetuned, tmp_path, monkeypatch):
    save_pretrained(finetuned, tmp_path)
    files = {("acme/curbs-fcn", name): (tmp_path / name).read_bytes() for name in ("config.json", "model.safetensors")}
    with HubServer(files) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        loaded = from_pretrained("acme/curbs-fcn")
        assert any("model.safetensors" in r for r in hub.requests)
    assert_same_weights(finetuned, loaded)
    assert loaded.pretrained_cfg["classes"] == CLASSES
    assert loaded.pretrained_cfg["checkpoint"]["source"] == "acme/curbs-fcn"


def test_a_missing_hub_repo_names_the_repo_and_file(monkeypatch):
    with HubServer({}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(WeightsUnavailableError, match=r"'config.json' of Hugging Face repo 'acme/nothing'"):
            from_pretrained("acme/nothing")


def test_a_folder_without_weights_is_not_a_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        from_pretrained(tmp_path)


def test_a_weight_file_is_pointed_to_create_model(finetuned, tmp_path):
    save_pretrained(finetuned, tmp_path)
    with pytest.raises(CheckpointError, match="create_model"):
        from_pretrained(tmp_path / "model.safetensors")


def test_model_methods_round_trip_builder_kwargs(tmp_path):
    model = cityseg_zoo.create_model("ccnet_r50", num_classes=3, recurrence=1).eval()
    model.save_pretrained(tmp_path)
    loaded = cityseg_zoo.from_pretrained(tmp_path)
    assert loaded.head.recurrence == 1 and loaded.pretrained_cfg["model_kwargs"] == {"recurrence": 1}
    assert_same_weights(model, loaded)
    assert type(model).from_pretrained(tmp_path).pretrained_cfg["architecture"] == "ccnet_r50"
