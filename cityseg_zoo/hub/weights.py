"""From a manifest entry to a verified safetensors file in the zoo's own layout.

Published checkpoints are mostly pickled ``.pth`` files in their repository's key layout. Each is opened once,
with ``torch.load(weights_only=True)``, right after its download was verified; its keys are converted strictly to
the zoo's names and written to ``<cache>/converted/<weight name>.safetensors``, with the source file's sha256 in
the safetensors metadata and the converted file's own sha256 beside it (``.sha256``). Every later load reads
that safetensors file (no unpickling), after checking it against both hashes. The downloaded ``.pth`` is then
removed from the cache (its trust-on-first-use pin stays); files the user placed by hand are never touched.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from filelock import FileLock

from ..errors import CheckpointError
from .checkpoint import read_state_dict
from ..data.cityscapes import NUM_CLASSES
from .convert import NATIVE, ConversionReport, convert_state_dict
from .download import (HashMismatchError, _temporary_beside, cache_dir, fetch_verified, fetch_weights, pin_path,
                       sha256sum)

FORMAT_TAG = "cityseg_zoo"
LAYOUT_VERSION = "1"  # bump when the zoo renames its own keys: converted files of another version are redone


def convert_file(source: str | os.PathLike, architecture: str, dest: str | os.PathLike, *,
                 layout: str | None = None, num_classes: int | None = None,
                 metadata: dict[str, str] | None = None) -> ConversionReport:
    """Convert a checkpoint in any layout ``architecture`` loads into a zoo safetensors file at ``dest``.

    Strict: a missing, unexpected or mis-shaped key raises :class:`CheckpointError` and nothing is written.
    ``num_classes``: of the checkpoint's classifiers (default 19).
    The file is written to a temporary name and renamed, so ``dest`` is either absent or complete.
    """
    from safetensors.torch import save_file
    from ..registry import get_entry

    entry = get_entry(architecture)
    state_dict = read_state_dict(source)
    layouts = [lay for lay in entry.layouts if layout is None or lay.name == layout]
    if not layouts and layout != "native":
        raise CheckpointError(f"unknown layout {layout!r} for {architecture}; it loads "
                              f"{[lay.name for lay in entry.layouts] + ['native']}")
    num_classes = num_classes or NUM_CLASSES
    model_state = entry.builder(num_classes=num_classes).state_dict()
    reports = []
    for candidate in ([NATIVE] if layout in (None, "native") else []) + layouts:
        converted, report = convert_state_dict(state_dict, candidate, model_state)
        if not report.ok:
            reports.append(report)
            continue
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().clone() for k, v in converted.items()}  # no shared storage
        meta = {"format": FORMAT_TAG, "layout_version": LAYOUT_VERSION, "architecture": architecture,
                "num_classes": str(num_classes), "source_layout": candidate.name, **(metadata or {})}
        with _temporary_beside(dest) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
            os.replace(tmp, dest)
        return report
    best = min(reports, key=lambda r: r.n_problems)
    raise CheckpointError(f"{source} does not match {architecture} with {num_classes} classes; closest is "
                          f"{best.describe()}")


def converted_path(weight: dict) -> Path:
    return cache_dir() / "converted" / f"{weight['name']}.safetensors"


def _check_converted(path: Path, weight: dict) -> None:
    """The converted file is intact, of this zoo layout version, and made from the file the manifest names."""
    from safetensors import safe_open
    pinned = path.with_name(path.name + ".sha256")
    if not pinned.is_file() or sha256sum(path) != pinned.read_text().strip():
        raise HashMismatchError(f"{path}: converted file does not match the sha256 recorded when it was written")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT_TAG or meta.get("layout_version") != LAYOUT_VERSION:
        raise HashMismatchError(f"{path}: written by another zoo layout version ({meta.get('layout_version')})")
    pin = pin_path(weight)
    expected = weight.get("sha256") or weight.get("sha256_prefix") or (pin.read_text().strip() if pin.is_file()
                                                                        else None)
    if meta.get("weights") != weight["name"] or (expected and not meta.get("source_sha256", "").startswith(expected)):
        raise HashMismatchError(f"{path}: converted from a file other than the manifest's {weight['filename']}")


def weight_file(weight: dict, *, mirror: str | None = None, offline: bool | None = None,
                progress: bool = True) -> Path:
    """A verified safetensors file of ``weight`` in the zoo's layout: cached, or fetched and converted once."""
    if weight.get("format") == "safetensors" and weight.get("layout") == "native":
        return fetch_weights(weight, mirror=mirror, offline=offline, progress=progress)
    target = converted_path(weight)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_file():
            try:
                _check_converted(target, weight)
                return target
            except HashMismatchError as err:
                warnings.warn(f"{err}; converting it again", stacklevel=2)
                target.unlink()
        source, digest = fetch_verified(weight, mirror=mirror, offline=offline, progress=progress)
        convert_file(source, weight["architecture"], target, layout=weight["layout"],
                     num_classes=weight["num_classes"],
                     metadata={"weights": weight["name"], "source_file": weight["filename"], "source_sha256": digest})
        target.with_name(target.name + ".sha256").write_text(sha256sum(target) + "\n")
        if source.parent == cache_dir() / "weights":  # ours to remove; a user's file stays where it is
            source.unlink()
    return target
