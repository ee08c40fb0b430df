"""examples/finetune.py end to end on a tiny generated 3-class dataset: one CPU process, resume, 2-process DDP."""
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import cityseg_zoo
from cityseg_zoo.hf import from_pretrained, save_pretrained

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "finetune.py"
CLASSES = "road,curb,other"


def load_script():
    spec = importlib.util.spec_from_file_location("finetune_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_dataset(root: Path, n: int = 4, size: int = 64) -> None:
    """Three colour-coded regions per image (the class is learnable from the colour), noise, a few ignored px."""
    rng = np.random.default_rng(0)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        a, b = sorted(rng.integers(size // 5, 4 * size // 5, 2))
        mask[:, a:] = 1
        mask[b:, :] = 2
        image = (colours[mask] + rng.integers(-30, 30, (size, size, 3))).clip(0, 255).astype(np.uint8)
        mask[:2, :2] = 255
        Image.fromarray(image).save(root / "images" / f"frame{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"frame{i}.png")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The dataset and a 19-class "pretrained" fcn_r50 (seeded random weights: no real weights offline)."""
    root = tmp_path_factory.mktemp("finetune")
    make_dataset(root / "data")
    torch.manual_seed(0)
    save_pretrained(cityseg_zoo.create_model("fcn_r50"), root / "pretrained")
    return root


def args_for(workspace: Path, output: Path, steps: int = 4, *extra: str) -> list[str]:
    return ["--model", "fcn_r50", "--pretrained", str(workspace / "pretrained" / "model.safetensors"),
            "--data", str(workspace / "data"), "--num-classes", "3", "--classes", CLASSES,
            "--crop", "32", "--scale-min", "0.75", "--scale-max", "1.25", "--batch-size", "2", "--workers", "0",
            "--steps", str(steps), "--save-every", "2", "--no-progress", "--dump-replicas",
            "--output", str(output), *extra]


def read_log(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def unbroken_run(workspace):
    output = workspace / "unbroken"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "re-initialised for num_classes=3": expected here
        assert load_script().main(args_for(workspace, output)) == 0
    return output


def test_finetuning_lowers_the_loss(unbroken_run):
    log = read_log(unbroken_run)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]


def test_checkpoint_round_trips_bit_exactly(unbroken_run):
    trained = load_file(str(unbroken_run / "replica-rank0.safetensors"))   # the in-memory model at the end
    model = from_pretrained(unbroken_run / "checkpoint-0000004")
    assert model.pretrained_cfg["classes"] == CLASSES.split(",") and model.num_classes == 3
    loaded = model.state_dict()
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)


def test_resume_continues_from_the_saved_step_as_an_unbroken_run(workspace, unbroken_run):
    output = workspace / "resumed"
    output.mkdir()   # a run interrupted right after its step-2 checkpoint
    shutil.copytree(unbroken_run / "checkpoint-0000002", output / "checkpoint-0000002")
    (output / "latest").write_text("checkpoint-0000002\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_script().main(args_for(workspace, output, 4, "--resume", "auto")) == 0
    assert [r["step"] for r in read_log(output)] == [3, 4]
    resumed = load_file(str(output / "replica-rank0.safetensors"))
    unbroken = load_file(str(unbroken_run / "replica-rank0.safetensors"))
    assert all(torch.equal(resumed[k], unbroken[k]) for k in unbroken)


def test_bad_mask_values_stop_the_script_with_a_message(workspace, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(workspace / "data", data)
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(data / "masks" / "frame0.png")
    args = args_for(workspace, tmp_path / "out", 1)
    args[args.index("--data") + 1] = str(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_script().main(args) == 2
    assert "label values [7]" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_ddp_run_ends_with_identical_replicas(workspace, tmp_path):
    output = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(SCRIPT), *args_for(workspace, output, 2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = load_file(str(output / "replica-rank0.safetensors"))
    rank1 = load_file(str(output / "replica-rank1.safetensors"))
    model = from_pretrained(output / "checkpoint-0000002")
    params = [name for name, _ in model.named_parameters()]
    assert all(torch.equal(rank0[k], rank1[k]) for k in params)        # DDP's gradient all-reduce
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)         # and BN statistics after the final broadcast
    assert all(torch.equal(model.state_dict()[k], rank0[k]) for k in rank0)   # rank 0 wrote the checkpoint
    start = load_file(str(workspace / "pretrained" / "model.safetensors"))
    assert not torch.equal(rank0["backbone.conv1.0.weight"], start["backbone.conv1.0.weight"])   # it trained
    assert [r["step"] for r in read_log(output)] == [1, 2]
