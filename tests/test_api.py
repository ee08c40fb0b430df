"""The public API: names, suggestions, errors a user can act on, torch.hub, pretrained_cfg."""
import json
from pathlib import Path

import pytest
import torch

import cityseg_zoo
from cityseg_zoo import (CheckpointError, InputError, UnknownModelError, WeightsUnavailableError, create_model,
                         list_models, list_pretrained, model_info)
from reference import reference_state_dict, save_container

REPO = Path(__file__).resolve().parents[1]


def test_unknown_name_suggests_close_match():
    with pytest.raises(UnknownModelError, match=r"unknown model 'fcn_r110'; did you mean 'fcn_r101'"):
        create_model("fcn_r110")
    with pytest.raises(ValueError):  # UnknownModelError is a ValueError, as timm/torchvision users expect
        create_model("no_such_model_at_all")


def test_list_models_filters_with_pattern():
    assert "fcn_r101" in list_models()
    assert list_models("fcn_*") == ["fcn_r101", "fcn_r50"]
    assert all(n.endswith("_cityscapes") for n in list_pretrained())


def test_packaged_manifest_is_the_top_level_manifest():
    top = json.loads((REPO / "weights_manifest.json").read_text())
    packaged = json.loads((REPO / "cityseg_zoo" / "weights_manifest.json").read_text())
    assert top == packaged


def test_model_info_reports_params_and_conventions():
    info = model_info("fcn_r101")
    assert info["params"] == sum(p.numel() for p in create_model("fcn_r101").parameters())
    cfg = info["pretrained_cfg"]
    assert cfg["input"]["channel_order"] == "RGB" and cfg["align_corners"] is True
    assert cfg["classes"][0] == "road" and len(cfg["palette"]) == 19


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "floating-point"),
    (torch.zeros(1, 4, 64, 64), "3 input channels, got 4"),
    (torch.zeros(3, 64, 64), "4-D tensor"),
    ("image.png", "torch.Tensor"),
])
def test_model_rejects_bad_input_with_specific_message(bad, message):
    model = create_model("fcn_r50").eval()
    with pytest.raises(InputError, match=message):
        model(bad)


def test_reference_checkpoint_loads_from_every_container(tmp_path):
    state = reference_state_dict("fcn_ocnet_baseline_r101_original")
    outputs = []
    for container in ("bare", "state_dict", "module"):
        path = save_container(state, tmp_path / f"{container}.pth", container)
        model = create_model("fcn_r101", pretrained=str(path)).eval()
        assert model.pretrained_cfg["checkpoint"]["layout"] == "ocnet_baseline"
        outputs.append(model.head.classifier.weight)
    assert all(torch.equal(outputs[0], o) for o in outputs)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = reference_state_dict("fcn_ocnet_baseline_r101_original")
    del state["layer6.bias"]
    state["layer7.weight"] = torch.zeros(1)
    path = save_container(state, tmp_path / "bad.pth", "bare")
    with pytest.raises(CheckpointError) as err:
        create_model("fcn_r101", pretrained=str(path))
    assert "head.classifier.bias" in str(err.value) and "layer7.weight" in str(err.value)


def test_shape_mismatch_is_named(tmp_path):
    state = reference_state_dict("fcn_ocnet_baseline_r101_original")
    path = save_container(state, tmp_path / "r101.pth", "bare")
    with pytest.raises(CheckpointError, match="layer3"):
        create_model("fcn_r50", pretrained=str(path))  # r101 checkpoint into r50: layer3.6+ unexpected


def test_native_safetensors_round_trip(tmp_path):
    from safetensors.torch import save_file
    model = create_model("fcn_r50").eval()
    save_file(model.state_dict(), str(tmp_path / "fcn.safetensors"))
    again = create_model("fcn_r50", pretrained=str(tmp_path / "fcn.safetensors")).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert again.pretrained_cfg["checkpoint"]["layout"] == "native"


def test_new_num_classes_keeps_all_but_the_classifier(tmp_path):
    from safetensors.torch import save_file
    model = create_model("fcn_r50")
    save_file(model.state_dict(), str(tmp_path / "fcn.safetensors"))
    with pytest.warns(UserWarning, match="head.classifier.weight"):
        tuned = create_model("fcn_r50", pretrained=str(tmp_path / "fcn.safetensors"), num_classes=3)
    assert tuned.head.classifier.out_channels == 3
    assert torch.equal(tuned.head.conv[0].weight, model.head.conv[0].weight)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        create_model("fcn_r50", pretrained=str(path))
    with pytest.raises(CheckpointError, match="not found"):
        create_model("fcn_r50", pretrained=str(tmp_path / "absent.pth"))


def test_safetensors_are_read_one_tensor_at_a_time_and_load_exactly(tmp_path):
    from safetensors.torch import save_file

    from cityseg_zoo.hub.checkpoint import StoredTensor, open_state_dict
    torch.manual_seed(0)
    source = create_model("fcn_r50", num_classes=5)
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "fcn.safetensors"))
    lazy = open_state_dict(tmp_path / "fcn.safetensors")
    assert set(lazy) == set(state) and all(isinstance(v, StoredTensor) for v in lazy.values())
    assert lazy["head.classifier.weight"].shape == state["head.classifier.weight"].shape
    loaded = create_model("fcn_r50", num_classes=5, pretrained=str(tmp_path / "fcn.safetensors")).state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "fcn.safetensors"
    save_file(create_model("fcn_r50").state_dict(), str(path))
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="fcn.safetensors"):
        create_model("fcn_r50", pretrained=str(path))


def test_pickle_that_runs_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (exec, ("import pathlib; pathlib.Path('PWNED').touch()",))
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Exploit()}, path)
    with pytest.raises(CheckpointError):
        create_model("fcn_r50", pretrained=str(path))
    assert not Path("PWNED").exists()


def test_unreleased_weights_say_so():
    with pytest.raises(WeightsUnavailableError, match="released code only"):
        create_model("galdnet_r101_cityscapes", pretrained=True)
    with pytest.raises(WeightsUnavailableError, match="no pretrained weights"):
        create_model("fcn_r101", pretrained=True)


def test_offline_missing_weights_name_the_file_and_source(monkeypatch, tmp_path):
    monkeypatch.setenv("CITYSEG_ZOO_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("CITYSEG_ZOO_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match=r"DANet101\.pth\.tar.*drive\.google\.com"):
        create_model("danet_r101_cityscapes", pretrained=True)


def test_weights_dir_is_searched(monkeypatch, tmp_path):
    from reference import reference_state_dict as ref
    save_container(ref("danet_r101_original"), tmp_path / "DANet101.pth.tar", "state_dict")
    monkeypatch.setenv("CITYSEG_ZOO_WEIGHTS_DIR", str(tmp_path))
    with pytest.warns(UserWarning, match="no published hash"):
        model = create_model("danet_r101_cityscapes", pretrained=True)
    assert model.pretrained_cfg["weights"] == "danet_r101_cityscapes"
    assert model.pretrained_cfg["input"]["channel_order"] == "RGB"


def test_torch_hub_local_loads_every_name():
    import importlib.util
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    for name in list_models() + list_pretrained():
        assert callable(getattr(hubconf, name)) and getattr(hubconf, name).__doc__
    model = torch.hub.load(str(REPO), "fcn_r50", source="local", num_classes=5)
    assert model.head.classifier.out_channels == 5
    assert "FCN" in hubconf.fcn_r101.__doc__
