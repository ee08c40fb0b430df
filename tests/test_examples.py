"""Every script in ``examples/`` runs end to end on tiny inputs."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import cityseg_zoo
from test_data import write_fake_cityscapes

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
torch.set_num_threads(1)


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "fcn_r50.safetensors"
    save_file(cityseg_zoo.create_model("fcn_r50").state_dict(), str(path))
    return path


@pytest.fixture
def street(tmp_path):
    path = tmp_path / "street.png"
    Image.open(EXAMPLES / "street.png").resize((48, 24)).save(path)
    return path


def test_predict_example_writes_the_three_pngs(street, weights, tmp_path):
    out = tmp_path / "out"
    assert load_example("predict").main([str(street), "--model", "fcn_r50", "--weights", str(weights),
                                         "--out", str(out), "--mode", "slide", "--crop", "16", "--flip"]) == 0
    assert np.array(Image.open(out / "street_trainIds.png")).shape == (24, 48)
    assert np.array(Image.open(out / "street_overlay.png")).shape == (24, 96, 3)
    assert (out / "street_color.png").is_file()


def test_predict_example_without_weights_names_the_problem(street, tmp_path, capsys):
    # GALD-Net weights were never released: the script must say so, not fall back to random weights
    assert load_example("predict").main([str(street), "--model", "galdnet_r50_cityscapes",
                                         "--out", str(tmp_path)]) == 2
    assert "no weights were ever released" in capsys.readouterr().err


def test_torch_hub_example_loads_through_torch_hub(street, weights, capsys):
    assert load_example("torch_hub").main([str(street), "--model", "fcn_r50", "--weights", str(weights)]) == 0
    out = capsys.readouterr().out
    assert "24x48 pixels" in out
    shares = [float(line.split()[-1].rstrip("%")) for line in out.splitlines()[1:]]
    assert len(shares) == 5 and sum(shares) <= 100.05


def test_evaluate_example_prints_the_per_class_table(tmp_path, weights, capsys):
    write_fake_cityscapes(tmp_path, cities=(("ulm", 2),), size=(24, 32))
    assert load_example("evaluate").main(["--data", str(tmp_path), "--model", "fcn_r50",
                                          "--weights", str(weights)]) == 0
    out = capsys.readouterr().out
    assert "bicycle" in out and "mIoU" in out


def test_predict_example_runs_as_a_script(street, tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "predict.py"), str(street), "--model", "fcn_r50",
                             "--random-init", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "UNTRAINED" in result.stderr and (tmp_path / "out" / "street_color.png").is_file()
