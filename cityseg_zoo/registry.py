"""Name -> :class:`ArchSpec` registry, weight names from the manifest, and close-match suggestions for typos.

Architectures register themselves with :func:`register_model` (one small builder function per name, as in timm),
each with the :class:`~cityseg_zoo.specs.ArchSpec` that holds its facts. Weight names (``<architecture>_<tag>``,
e.g. ``dgcnet_r101_cityscapes``) come from ``weights_manifest.json`` as :class:`~cityseg_zoo.specs.WeightSpec`.
"""
from __future__ import annotations

import difflib
import fnmatch
import functools
from dataclasses import replace
from functools import lru_cache
from typing import Callable

from .errors import ModelArgumentError, UnknownModelError
from .hub.manifest import ManifestError, load_manifest
from .specs import ArchSpec, WeightSpec

_MODELS: dict[str, ArchSpec] = {}


def register_model(spec: ArchSpec):
    """Decorator registering a builder ``fn(num_classes=19, ...) -> Segmentor`` under its own name, with ``spec``.

    The registered function checks its keyword arguments (an unknown one is an error naming the accepted ones)
    and attaches the spec to the model it builds, so ``model.arch_spec`` is set however the builder is called.
    """

    def wrap(fn: Callable) -> Callable:
        name = fn.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        arch = replace(spec, name=name, builder=fn)

        @functools.wraps(fn)
        def build(num_classes: int = 19, **kwargs):
            check_kwargs(arch, kwargs)
            model = fn(num_classes=num_classes, **kwargs)
            model.arch_spec = arch
            return model

        _MODELS[name] = replace(arch, builder=build)
        return build

    return wrap


def check_kwargs(arch: ArchSpec, kwargs: dict, also: tuple[str, ...] = ()) -> None:
    """Raise :class:`ModelArgumentError` for a keyword ``arch``'s builder does not take."""
    names = arch.accepted_kwargs   # the signature of the builder (functools.wraps keeps it for inspect)
    for key in kwargs:
        if key not in names:
            close = difflib.get_close_matches(key, names + also, n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            takes = ", ".join(("num_classes",) + names + also)
            raise ModelArgumentError(f"{arch.name}: unexpected keyword argument {key!r}; it accepts {takes}.{hint}")


@lru_cache(maxsize=1)
def weights_manifest() -> dict[str, WeightSpec]:
    """Weight specs by name, read from the manifest shipped inside the package and validated against its schema
    and the registered architectures."""
    layouts = {name: [lay.name for lay in arch.layouts] for name, arch in _MODELS.items()}
    weights = {entry["name"]: WeightSpec.from_manifest(entry) for entry in load_manifest(layouts)["weights"]}
    errors = [problem for w in weights.values() for problem in weight_problems(w)]
    if errors:
        raise ManifestError("weights_manifest.json contradicts the architectures:\n  " + "\n  ".join(errors))
    return weights


def weight_problems(weight: WeightSpec) -> list[str]:
    """Facts of ``weight`` that contradict its architecture's (the manifest may not repeat what an
    architecture owns)."""
    arch = _MODELS.get(weight.architecture)
    where, problems = f"weights[{weight.name!r}]", []
    if arch is None:
        return [f"{where}: unknown architecture {weight.architecture!r}"]
    if weight.input is not None and weight.input == arch.input:
        problems.append(f"{where}: 'input' repeats {arch.name}'s normalisation; give it only to override")
    if len(weight.classes) != weight.num_classes:
        problems.append(f"{where}: {len(weight.classes)} class names for num_classes={weight.num_classes}")
    unknown = set(weight.model_kwargs) - set(arch.accepted_kwargs)
    if unknown:
        problems.append(f"{where}: model_kwargs {sorted(unknown)} are not arguments of {arch.name}")
    return problems


def _suggest(name: str) -> str:
    candidates = list(_MODELS) + list(weights_manifest())
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    if not close:
        return " Run cityseg_zoo.list_models() to see every name."
    return " did you mean " + " or ".join(repr(c) for c in close) + "?"


def resolve(name: str) -> tuple[ArchSpec, WeightSpec | None]:
    """The architecture spec and the weight spec (``None`` for a bare architecture name) of a name."""
    if not isinstance(name, str):
        raise UnknownModelError(f"model name must be a string, got {type(name).__name__}")
    if name in _MODELS:
        return _MODELS[name], None
    weights = weights_manifest()
    if name in weights:
        return _MODELS[weights[name].architecture], weights[name]
    raise UnknownModelError(f"unknown model {name!r};{_suggest(name)}")


def arch_spec(name: str) -> ArchSpec:
    """The :class:`ArchSpec` of an architecture or weight name."""
    return resolve(name)[0]


def is_weight_name(text: str) -> bool:
    return isinstance(text, str) and text in weights_manifest()


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Architecture names matching the fnmatch ``pattern``; with ``pretrained=True``, weight names instead."""
    names = list(weights_manifest()) if pretrained else list(_MODELS)
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def list_pretrained(pattern: str = "*") -> list[str]:
    """Weight names (``<architecture>_<tag>``) matching ``pattern``."""
    return list_models(pattern, pretrained=True)


def weights_for(architecture: str) -> list[WeightSpec]:
    """Weight specs of one architecture, in manifest order (the first is the default)."""
    return [w for w in weights_manifest().values() if w.architecture == architecture]
