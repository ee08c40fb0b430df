"""The project stands alone, and what it ships is complete.

* The tests read their data from ``tests/data`` only, and ``.ci/run`` runs the README's test command verbatim.
* ``python -m build`` makes an sdist that carries the tests and their data, and a wheel (built from that sdist)
  that holds every module and the weights manifest but no test data.
* The wheel, installed into a fresh virtual environment, runs from a folder outside the source tree. The fresh venv
  sees the current environment's dependencies (torch, timm, ...) through a ``.pth`` line; a directory added that
  way does not get its own ``.pth`` files processed, so an editable install of the current environment stays
  inactive there, and a module or data file missing from the wheel fails the test.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import reference

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cityseg_zoo"
SDIST_TREES = ("cityseg_zoo", "tests", "examples", "benchmarks", "docs")
SDIST_FILES = ("pyproject.toml", "README.md", "LICENSE", "hubconf.py", "weights_manifest.json")
NOT_SHIPPED = {".git", ".venv", "build", "dist", "out", "__pycache__", ".pytest_cache"}


def _not_shipped(name: str) -> bool:
    return name in NOT_SHIPPED or name.endswith((".egg-info", ".pyc"))


def _tree_files(root: Path, *trees: str) -> set[str]:
    """Relative paths of the files under ``root/<tree>``, build and cache outputs left out."""
    found = set()
    for tree in trees:
        for path in (root / tree).rglob("*"):
            rel = path.relative_to(root)
            if path.is_file() and not any(_not_shipped(part) for part in rel.parts):
                found.add(rel.as_posix())
    return found


def _run(cmd: list, cwd: Path, env: dict | None = None, timeout: int = 300) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_test_data_lives_in_the_repository():
    assert reference.DATA.resolve().is_relative_to(REPO)
    keys = reference.reference_key_names()
    goldens = reference.golden_names()
    assert set(goldens) <= set(keys), "every golden output has the key list of its reference checkpoint"
    assert {"gald_r101_original_v2019stem", "timm_resnet101d", "timm_resnet101s"} <= set(keys)
    heads = ("fcn", "pspnet", "deeplabv3", "deeplabv3plus", "danet", "ccnet")
    assert {f"mmseg_{head}_r101" for head in heads} <= set(keys)
    for name in goldens:
        out = reference.golden_output(name)
        assert out.dtype == reference.torch.float32 and out.shape[:2] == (1, 19), name
        assert bool(reference.torch.isfinite(out).all()), name
    assert (reference.DATA / "README.md").is_file(), "the recipe that made the data is kept beside it"


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"^## Run the tests\n.*?^```bash\n(.*?)^```", readme, re.S | re.M)
    assert block, "README has a 'Run the tests' section with a bash block"
    (readme_command,) = [line for line in block.group(1).splitlines() if line.strip()]
    ci = (REPO / ".ci" / "run").read_text()
    (ci_command,) = re.findall(r"^TEST_COMMAND='(.*)'$", ci, re.M)
    assert ci_command == readme_command
    assert re.search(r'^eval "\$TEST_COMMAND"$', ci, re.M), ".ci/run runs that command"


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """``python -m build`` of a copy of the source tree (a build writes ``build/`` and ``*.egg-info`` into it)."""
    tmp = tmp_path_factory.mktemp("dists")
    src = tmp / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=lambda _, names: [n for n in names if _not_shipped(n)])
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp / "dist", src], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("cityseg_zoo-*.whl")
    (sdist,) = (tmp / "dist").glob("cityseg_zoo-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist, "tmp": tmp}


def test_wheel_holds_every_module_and_the_manifest_but_no_test_data(dists):
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        names = set(wheel.namelist())
        shipped_manifest = wheel.read("cityseg_zoo/weights_manifest.json")
        entry_points = next(wheel.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    modules = {p for p in _tree_files(REPO, "cityseg_zoo") if p.endswith(".py")}
    assert len(modules) > 40 and "cityseg_zoo/hub/manifest.py" in modules
    assert sorted(modules - names) == [], "modules missing from the wheel"
    assert shipped_manifest == (PACKAGE / "weights_manifest.json").read_bytes()
    assert all(n.startswith(("cityseg_zoo/", "cityseg_zoo-")) for n in names), sorted(names)
    assert not [n for n in names if n.startswith("tests/") or n.endswith((".npz", ".json.gz"))]
    assert re.search(r"^cityseg-zoo = cityseg_zoo\.cli:main$", entry_points, re.M)


def test_sdist_carries_the_tests_and_their_data(dists):
    with tarfile.open(dists["sdist"]) as sdist:
        names = {m.name.split("/", 1)[1] for m in sdist.getmembers() if m.isfile() and "/" in m.name}
    expected = _tree_files(REPO, *SDIST_TREES) | set(SDIST_FILES)
    assert {"tests/data/golden.npz", "tests/data/reference_keys.json.gz", "tests/data/README.md"} <= expected
    assert sorted(expected - names) == [], "files missing from the sdist"


def test_wheel_runs_from_a_fresh_venv_outside_the_source_tree(dists):
    tmp = dists["tmp"]
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = next(p for p in (bin_dir / "python", bin_dir / "python.exe") if p.exists())
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--no-cache-dir",
          dists["wheel"]], cwd=tmp)
    site_packages = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              cwd=tmp).strip())
    outer = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site_packages / "outer_env_dependencies.pth").write_text("".join(f"{p}\n" for p in outer))

    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    assert not elsewhere.resolve().is_relative_to(REPO)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"

    script = bin_dir / ("cityseg-zoo.exe" if os.name == "nt" else "cityseg-zoo")
    assert script.is_file(), "pip installed the console script"
    listing = _run([script, "list"], cwd=elsewhere, env=env)
    weights = [w["name"] for w in json.loads((PACKAGE / "weights_manifest.json").read_text())["weights"]]
    assert "fcn_r50" in listing and all(w in listing for w in weights), listing

    probe = ("import json, cityseg_zoo, torch; m = cityseg_zoo.create_model('fcn_r50', num_classes=19); "
             "print(json.dumps({'zoo': cityseg_zoo.__file__, 'torch': torch.__file__, "
             "'classes': m.pretrained_cfg['num_classes']}))")
    seen = json.loads(_run([python, "-c", probe], cwd=elsewhere, env=env).strip().splitlines()[-1])
    assert Path(seen["zoo"]).resolve().is_relative_to(site_packages.resolve()), seen
    assert not Path(seen["zoo"]).resolve().is_relative_to(REPO), seen
    assert not Path(seen["torch"]).resolve().is_relative_to(venv.resolve()), "torch comes from the current env"
    assert seen["classes"] == 19
