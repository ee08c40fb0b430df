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
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from filelock import FileLock

from .checkpoint import read_state_dict
from .convert import ConversionReport, Layout, convert_strict
from .download import (HashMismatchError, _temporary_beside, cache_dir, expected_sha256, fetch_verified,
                       fetch_weights, sha256sum)

if TYPE_CHECKING:  # the hub takes weight specs as arguments; it never imports the registry
    from ..specs import WeightSpec

FORMAT_TAG = "cityseg_zoo"
LAYOUT_VERSION = "1"  # bump when the zoo renames its own keys: converted files of another version are redone


def convert_file(source: str | os.PathLike, dest: str | os.PathLike, *, layouts: Sequence[Layout],
                 model_state: dict[str, torch.Tensor], name: str = "the model",
                 metadata: dict[str, str] | None = None) -> ConversionReport:
    """Convert a checkpoint in any of ``layouts`` (or the zoo's own) into a zoo safetensors file at ``dest``.

    ``model_state``: the state dict the checkpoint must fill exactly (its keys and shapes; values are used only
    for keys a layout marks optional). Strict: a missing, unexpected or mis-shaped key raises
    :class:`CheckpointError` and nothing is written. The file is written to a temporary name and renamed, so
    ``dest`` is either absent or complete.
    """
    from safetensors.torch import save_file

    converted, report = convert_strict(read_state_dict(source), layouts, model_state, source=str(source), name=name)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in converted.items()}  # no shared storage
    meta = {"format": FORMAT_TAG, "layout_version": LAYOUT_VERSION, "architecture": name,
            "source_layout": report.layout, **(metadata or {})}
    with _temporary_beside(dest) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, dest)
    return report


def converted_path(weight: WeightSpec) -> Path:
    return cache_dir() / "converted" / f"{weight.name}.safetensors"


def _check_converted(path: Path, weight: WeightSpec) -> None:
    """The converted file is intact, of this zoo layout version, and made from the file the manifest names."""
    from safetensors import safe_open
    pinned = path.with_name(path.name + ".sha256")
    if not pinned.is_file() or sha256sum(path) != pinned.read_text().strip():
        raise HashMismatchError(f"{path}: converted file does not match the sha256 recorded when it was written")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT_TAG or meta.get("layout_version") != LAYOUT_VERSION:
        raise HashMismatchError(f"{path}: written by another zoo layout version ({meta.get('layout_version')})")
    expected = expected_sha256(weight)
    if meta.get("weights") != weight.name or (expected and not meta.get("source_sha256", "").startswith(expected)):
        raise HashMismatchError(f"{path}: converted from a file other than the manifest's {weight.filename}")


def weight_file(weight: WeightSpec, *, layouts: Sequence[Layout], model_state: Callable[[], dict],
                mirror: str | None = None, offline: bool | None = None, progress: bool = True,
                option: str = "pretrained=") -> Path:
    """A verified safetensors file of ``weight`` in the zoo's layout: cached, or fetched and converted once.

    ``layouts``: the architecture's layouts (the weight's ``layout`` names one of them); ``model_state``: builds
    the state dict the file must fill, called only when a conversion is needed.
    """
    if weight.format == "safetensors" and weight.layout == "native":
        return fetch_weights(weight, mirror=mirror, offline=offline, progress=progress, option=option)
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
        source, digest = fetch_verified(weight, mirror=mirror, offline=offline, progress=progress, option=option)
        chosen = [lay for lay in layouts if lay.name == weight.layout]
        convert_file(source, target, layouts=chosen, model_state=model_state(), name=weight.architecture,
                     metadata={"weights": weight.name, "source_file": weight.filename, "source_sha256": digest})
        target.with_name(target.name + ".sha256").write_text(sha256sum(target) + "\n")
        if source.parent == cache_dir() / "weights":  # ours to remove; a user's file stays where it is
            source.unlink()
    return target
