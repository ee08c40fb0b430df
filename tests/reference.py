"""Rebuild the reference repos' checkpoints and outputs from ``tests/data`` (recipe: ``tests/data/README.md``).

Every weight is a deterministic function of (reference key, shape), so a checkpoint in the reference layout can be
rebuilt from the key list alone, saved in that repo's container, and loaded through ``create_model``.
"""
from __future__ import annotations

import functools
import gzip
import json
import math
import zlib
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parent / "data"
GOLDEN = DATA / "golden.npz"                    # {name: float32 logits of the reference code}
KEYS = DATA / "reference_keys.json.gz"          # {name: {state_dict key: shape}}, keys in state_dict order


@functools.lru_cache(maxsize=None)
def _all_reference_keys() -> dict[str, dict[str, list[int]]]:
    return json.loads(gzip.decompress(KEYS.read_bytes()))


def reference_key_names() -> list[str]:
    """Names of every reference key layout held in ``tests/data``."""
    return sorted(_all_reference_keys())


def golden_names() -> list[str]:
    """Names of every golden output held in ``tests/data``."""
    with np.load(GOLDEN) as golden:
        return sorted(golden.files)


def fill_value(key: str, shape, dtype=torch.float32) -> torch.Tensor:
    """The deterministic weight rule of the recipe (``tests/data/README.md``), verbatim."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    shape = tuple(shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    if key.endswith("running_mean"):
        return torch.randn(shape, generator=g) * 0.1
    if key.endswith("running_var"):
        return torch.rand(shape, generator=g) * 1.0 + 0.5
    if key.endswith("bias"):
        return torch.randn(shape, generator=g) * 0.01
    if key.endswith("weight") and len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        return torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in) * 0.5
    if key.endswith("weight") and len(shape) == 1:
        return torch.rand(shape, generator=g) * 0.5 + 0.5
    return torch.randn(shape, generator=g) * 0.1


def reference_keys(name: str) -> dict[str, list[int]]:
    """``{key: shape}`` of a reference checkpoint layout, in its ``state_dict`` order (a fresh copy)."""
    keys = _all_reference_keys()
    if name not in keys:
        raise KeyError(f"no reference keys {name!r} in {KEYS}; have {sorted(keys)}")
    return {key: list(shape) for key, shape in keys[name].items()}


def reference_state_dict(name: str, aliases: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """The reference checkpoint of ``reference_keys(name)`` with deterministic values.

    ``aliases``: ``{alias_substring: original_substring}`` for shared modules (OCNet ``f_query`` = ``f_key``):
    an alias key holds the same tensor as its original, as in the reference's state dict.
    """
    aliases = aliases or {}
    state = {}
    for key, shape in reference_keys(name).items():
        twin = next((key.replace(a, o) for a, o in aliases.items() if a in key), None)
        state[key] = state[twin].clone() if twin is not None else fill_value(key, shape)
    return state


def save_container(state: dict[str, torch.Tensor], path: Path, container: str) -> Path:
    """Save as a reference repo did: ``bare``, ``state_dict`` ({'state_dict': sd, ...}), or ``module``
    ({'state_dict': {'module.' + k: v}, ...}, DecoupleSegNets / NVIDIA style)."""
    if container == "bare":
        obj = state
    elif container == "state_dict":
        obj = {"epoch": 240, "state_dict": state, "best_pred": 0.0}
    elif container == "module":
        obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 1, "mean_iu": 0.0}
    else:
        raise ValueError(container)
    torch.save(obj, path)
    return path


def golden_input() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(1, 3, 128, 256)


def golden_output(name: str) -> torch.Tensor:
    """The reference code's float32 logits for ``golden_input()``."""
    with np.load(GOLDEN) as golden:
        if name not in golden.files:
            raise KeyError(f"no golden output {name!r} in {GOLDEN}; have {sorted(golden.files)}")
        return torch.from_numpy(golden[name])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def check_golden(arch: str, golden: str, container: str, tmp_path: Path, output: str = "lowres",
                 aliases: dict[str, str] | None = None, keys: str | None = None, **model_kwargs) -> float:
    """Build the reference checkpoint, load it through ``create_model`` and return the relative error.

    ``output``: ``"lowres"`` compares ``forward_logits_lowres`` (references that return 1/8 logits),
    ``"forward"`` compares ``model(x)`` (references that upsample inside the model).
    """
    import cityseg_zoo
    path = save_container(reference_state_dict(keys or f"{golden}", aliases), tmp_path / f"{golden}.pth", container)
    model = cityseg_zoo.create_model(arch, pretrained=str(path), **model_kwargs).eval()
    with torch.no_grad():
        x = golden_input()
        out = model.forward_logits_lowres(x) if output == "lowres" else model(x)
    expected = golden_output(golden)
    assert out.shape == expected.shape, f"{arch}: shape {tuple(out.shape)} vs golden {tuple(expected.shape)}"
    return relative_error(out, expected)


def manifest_entry(name: str, architecture: str, filename: str, data: bytes, sources: list[dict],
                   layout: str, **overrides) -> dict:
    """A schema-valid weight entry for a checkpoint a test serves (full sha256 and size of ``data``)."""
    import hashlib
    entry = {"name": name, "architecture": architecture, "family": "original", "num_classes": 19,
             "classes": "cityscapes_trainids", "filename": filename, "format": "pth", "container": "bare",
             "layout": layout, "sources": sources, "integrity": "sha256",
             "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
             "eval": {"mode": "whole", "crop_size": None, "stride": None, "scales": [1.0], "flip": False},
             "reported": {}, "license": "test", "citation": "test"}
    entry.update(overrides)
    return entry


def toy_weight(name: str, filename: str, data: bytes, sources: list[dict], **overrides):
    """A :class:`WeightSpec` of a served file, for the download layer's tests (full sha256 and size by default)."""
    from cityseg_zoo.specs import WeightSpec
    return WeightSpec.from_manifest(manifest_entry(name, "fcn_r50", filename, data, sources, "ocnet_baseline",
                                                   **overrides))


def shipped_entry(name: str) -> dict:
    """A copy of the shipped manifest's raw JSON entry ``name``."""
    from cityseg_zoo.hub.manifest import load_manifest
    return next(e for e in load_manifest()["weights"] if e["name"] == name)


def with_manifest_entries(monkeypatch, *entries: dict) -> None:
    """Make ``entries`` resolvable by name, after validating them as the shipped manifest is validated."""
    import cityseg_zoo.registry as registry
    from cityseg_zoo.hub.manifest import SCHEMA_VERSION, validate_manifest
    from cityseg_zoo.specs import WeightSpec
    validate_manifest({"schema_version": SCHEMA_VERSION, "weights": list(entries)})
    specs = {e["name"]: WeightSpec.from_manifest(e) for e in entries}
    problems = [p for spec in specs.values() for p in registry.weight_problems(spec)]
    assert not problems, problems
    manifest = {**registry.weights_manifest(), **specs}
    monkeypatch.setattr(registry, "weights_manifest", lambda: manifest)
