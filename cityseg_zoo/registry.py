"""Name -> builder registry, weight names from the manifest, and close-match suggestions for typos.

Architectures register themselves with :func:`register_model` (one small builder function per name, as in timm).
Weight names (``<architecture>_<tag>``, e.g. ``dgcnet_r101_cityscapes``) come from ``weights_manifest.json``.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from .errors import UnknownModelError
from .hub.convert import Layout
from .hub.manifest import load_manifest


@dataclass
class ModelEntry:
    name: str
    builder: Callable
    cfg: dict = field(default_factory=dict)       # architecture facts: reference code, input norm, align_corners
    layouts: tuple[Layout, ...] = ()               # checkpoint layouts this architecture can load

    @property
    def doc(self) -> str:
        return (self.builder.__doc__ or "").strip()


_MODELS: dict[str, ModelEntry] = {}


def register_model(*, cfg: dict | None = None, layouts: tuple[Layout, ...] = ()):
    """Decorator registering a builder ``fn(num_classes=19, **kwargs) -> Segmentor`` under its own name."""

    def wrap(fn: Callable) -> Callable:
        if fn.__name__ in _MODELS:
            raise ValueError(f"model {fn.__name__!r} registered twice")
        _MODELS[fn.__name__] = ModelEntry(fn.__name__, fn, dict(cfg or {}), tuple(layouts))
        return fn

    return wrap


@lru_cache(maxsize=1)
def weights_manifest() -> dict[str, dict]:
    """Weight entries by name, read from the manifest shipped inside the package and validated against its schema
    and the registered architectures."""
    layouts = {name: [lay.name for lay in entry.layouts] for name, entry in _MODELS.items()}
    return {entry["name"]: entry for entry in load_manifest(layouts)["weights"]}


def _suggest(name: str) -> str:
    candidates = list(_MODELS) + list(weights_manifest())
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    if not close:
        return " Run cityseg_zoo.list_models() to see every name."
    return " did you mean " + " or ".join(repr(c) for c in close) + "?"


def resolve(name: str) -> tuple[ModelEntry, dict | None]:
    """Return the architecture entry and the weight entry (``None`` for a bare architecture name)."""
    if not isinstance(name, str):
        raise UnknownModelError(f"model name must be a string, got {type(name).__name__}")
    if name in _MODELS:
        return _MODELS[name], None
    weights = weights_manifest()
    if name in weights:
        return _MODELS[weights[name]["architecture"]], weights[name]
    raise UnknownModelError(f"unknown model {name!r};{_suggest(name)}")


def get_entry(name: str) -> ModelEntry:
    return resolve(name)[0]


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Architecture names matching the fnmatch ``pattern``; with ``pretrained=True``, weight names instead."""
    names = list(weights_manifest()) if pretrained else list(_MODELS)
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def list_pretrained(pattern: str = "*") -> list[str]:
    """Weight names (``<architecture>_<tag>``) matching ``pattern``."""
    return list_models(pattern, pretrained=True)


def weights_for(architecture: str) -> list[dict]:
    """Manifest entries of one architecture, in manifest order (the first is the default)."""
    return [w for w in weights_manifest().values() if w["architecture"] == architecture]
