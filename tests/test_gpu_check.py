"""``benchmarks/gpu_check.sh OUT_DIR``: skips in one line without CUDA; its stages, with a stand-in Python."""
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
SKIPPED = "gpu_check: skipped: no CUDA device (torch.cuda.is_available() is False); nothing was run"


def recording_python(tmp_path: Path, cuda: bool) -> tuple[Path, Path]:
    """A stand-in for Python that logs each call; the CUDA probe answers ``cuda``, everything else the real one
    (``cuda=False``) or nothing at all (``cuda=True``: the stages' commands are only recorded)."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "python"
    if cuda:
        body = ('case "$*" in\n'
                '  *list_models*) echo "fcn_r50 danet_r50 ccnet_r50 pspnet_r50 gffnet_wrn38" ;;\n'
                '  *get_device_name*) echo "Fake GPU | torch 0 | CUDA 0" ;;\n'
                "esac\nexit 0\n")
    else:
        body = f'exec "{sys.executable}" "$@"\n'
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >>"{log}"\n{body}')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake, log


def run_script(tmp_path: Path, *args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, check=False)


def test_gpu_check_is_an_executable_strict_bash_script():
    assert os.access(SCRIPT, os.X_OK)
    assert "set -euo pipefail" in SCRIPT.read_text()
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the script runs the whole check")
def test_gpu_check_without_cuda_says_it_skipped_and_runs_nothing(tmp_path):
    fake, log = recording_python(tmp_path, cuda=False)
    out = tmp_path / "out"
    result = run_script(tmp_path, str(out), PYTHON=str(fake))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [SKIPPED] and result.stderr == ""
    calls = log.read_text().splitlines()
    assert len(calls) == 1 and "torch.cuda.is_available()" in calls[0]   # the probe, no pytest, no benchmark
    assert not out.exists()


def test_gpu_check_needs_one_out_dir(tmp_path):
    for args in ((), ("a", "b"), ("--help",)):
        result = run_script(tmp_path, *args)
        assert result.returncode == 2 and "usage:" in result.stderr


def test_gpu_check_stages_with_a_stand_in_cuda_python(tmp_path):
    fake, log = recording_python(tmp_path, cuda=True)
    out = tmp_path / "out"
    result = run_script(tmp_path, str(out), PYTHON=str(fake), CHUNK="2")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = log.read_text().splitlines()
    pytest_calls = [c for c in calls if c.startswith("-m pytest")]
    assert len(pytest_calls) == 1 and "-k cuda" in pytest_calls[0] and "tests/test_cuda.py" in pytest_calls[0]
    bench = [c for c in calls if " benchmark " in f" {c} "]
    assert [c.split("--models ")[1].split(" --sizes")[0] for c in bench] == [
        "fcn_r50 danet_r50", "ccnet_r50 pspnet_r50", "gffnet_wrn38"]            # every model, in chunks
    for i, call in enumerate(bench, 1):
        for flag in ("--device cuda", "--dtype bfloat16", "--sizes 1024x2048", "--modes optimized"):
            assert flag in call, (flag, call)
        assert f"--output {out.resolve()}/benchmark_bf16_1024x2048_part{i}" in call
    summary = (out / "summary.txt").read_text()
    assert "Fake GPU" in summary and "pytest: exit 0" in summary and "done in" in summary and "exit 0" in summary
    assert (out / "pytest.log").exists() and (out / "benchmark_bf16_1024x2048.md").exists()
