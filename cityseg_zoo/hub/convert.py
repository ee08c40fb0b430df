"""Key layouts of reference checkpoints and their strict conversion to the zoo's names.

A :class:`Layout` is an ordered list of ``(regex, replacement)`` rules. Each checkpoint key is renamed by the
first rule whose regex matches at the start of the key (``replacement=None`` drops the key, e.g. DANet's unused
ImageNet ``fc``). A key no rule matches, a zoo key nothing maps to, a shape that differs: each is an error naming
the keys. Nothing is loaded silently.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import CheckpointError
from .checkpoint import StoredTensor, materialize


@dataclass(frozen=True)
class Layout:
    """How one reference repository names its checkpoint keys.

    Args:
        name: identifier, e.g. ``"lxtgh"`` (used in messages and by ``load_checkpoint(layout=...)``).
        rules: ordered ``(regex, replacement)``; the first match renames the key; ``None`` drops it.
        aliases: ``(regex, replacement)`` pairs for keys that duplicate another checkpoint key (OCNet's
            ``f_query`` = ``f_key``): the key is dropped after checking that it equals its twin.
        optional: regexes of zoo keys the checkpoint may lack; they keep the model's value
            (e.g. ``num_batches_tracked`` in DANet's Encoding SyncBN checkpoints).
        description: where the layout comes from.
        check_config: for repositories that save a folder with a foreign ``config.json`` (transformers):
            ``check_config(config, model, reinit_classifier)`` raises :class:`CheckpointError` when the config
            describes another network than ``model``; called before the keys are compared.
    """

    name: str
    rules: tuple[tuple[str, str | None], ...]
    aliases: tuple[tuple[str, str], ...] = ()
    optional: tuple[str, ...] = ()
    description: str = ""
    check_config: Callable[..., None] | None = field(default=None, compare=False)

    def rename(self, key: str) -> str | None | bool:
        """New name of ``key``; ``None`` when dropped; ``False`` when no rule matches."""
        for pattern, repl in self.rules:
            if re.match(pattern, key):
                return None if repl is None else re.sub(pattern, repl, key, count=1)
        return False


# The zoo's own layout: keys are the model's state-dict keys.
NATIVE = Layout("native", rules=((r"", r""),), description="cityseg_zoo state dict")


@dataclass
class ConversionReport:
    layout: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)   # classifier keys kept fresh for a new num_classes

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    @property
    def n_problems(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.shape_mismatch)

    def describe(self, limit: int = 8) -> str:
        parts = []
        for title, keys in (("missing in checkpoint", self.missing), ("unexpected in checkpoint", self.unexpected),
                            ("shape mismatch", self.shape_mismatch)):
            if keys:
                more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
                parts.append(f"{len(keys)} {title}: {', '.join(keys[:limit])}{more}")
        return f"layout {self.layout!r}: " + "; ".join(parts)


def convert_state_dict(state_dict: dict[str, torch.Tensor | StoredTensor], layout: Layout,
                       model_state: dict[str, torch.Tensor],
                       ignore_shape: set[str] = frozenset()) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename ``state_dict`` with ``layout`` and compare it strictly with ``model_state``.

    Values may be :class:`StoredTensor` (a safetensors file opened lazily): only their shapes are read here.

    ``ignore_shape``: zoo keys whose shape may differ (classifiers re-initialised for a new ``num_classes``);
    they are left out of the result. Returns the converted dict and a report (``report.ok`` when usable).
    """
    report = ConversionReport(layout.name)
    converted: dict[str, torch.Tensor] = {}
    source_of: dict[str, str] = {}
    for key, value in state_dict.items():
        twin = next((re.sub(p, r, key, count=1) for p, r in layout.aliases if re.match(p, key)), None)
        if twin is not None:
            if twin not in state_dict:
                report.unexpected.append(f"{key} (alias of absent {twin})")
            elif not torch.equal(materialize(value), materialize(state_dict[twin])):
                report.shape_mismatch.append(f"{key} (must equal its shared twin {twin})")
            continue
        new = layout.rename(key)
        if new is None:
            continue
        if new is False or new not in model_state:
            report.unexpected.append(key)
            continue
        if new in converted:
            report.unexpected.append(f"{key} (maps onto {new}, already given by {source_of[new]})")
            continue
        if tuple(value.shape) != tuple(model_state[new].shape):
            if new not in ignore_shape:
                report.shape_mismatch.append(
                    f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(model_state[new].shape)}")
            continue
        converted[new] = value
        source_of[new] = key
    for key in model_state:
        if key in converted or key in ignore_shape:
            continue
        if any(re.search(p, key) for p in layout.optional):
            converted[key] = model_state[key]
            continue
        report.missing.append(key)
    return converted, report


def convert_strict(state_dict: dict[str, torch.Tensor], layouts: Sequence[Layout],
                   model_state: dict[str, torch.Tensor], *, reinit: set[str] = frozenset(), source: str = "checkpoint",
                   name: str = "the model") -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Convert ``state_dict`` with the first of ``[NATIVE, *layouts]`` that maps it completely onto
    ``model_state``: the one layout-choosing rule for local files, downloads and ``cityseg-zoo convert``.

    ``reinit``: model keys (declared classifiers) whose shape may differ; those that do are left out of the result
    and listed in ``report.reinitialized``. Raises :class:`CheckpointError` naming the missing/unexpected keys of
    the closest layout when none fits.
    """
    reports = []
    for layout in [NATIVE, *layouts]:
        converted, report = convert_state_dict(state_dict, layout, model_state, set(reinit))
        if report.ok:
            report.reinitialized = sorted(k for k in reinit if k not in converted)
            return converted, report
        reports.append(report)
    best = min(reports, key=lambda r: r.n_problems)
    raise CheckpointError(
        f"{source} does not match {name}. Tried layouts {[r.layout for r in reports]}; closest is "
        f"{best.describe()}")


def load_converted(model: nn.Module, state_dict: dict[str, torch.Tensor | StoredTensor], layouts: Sequence[Layout],
                   source: str = "checkpoint", reinit: set[str] = frozenset(),
                   name: str = "the model") -> ConversionReport:
    """Load ``state_dict`` into ``model`` through :func:`convert_strict`; re-initialised keys keep their values.

    Stored (lazily read) tensors are read and copied one at a time, so only one of them is in memory at once;
    the keys were matched strictly by :func:`convert_strict` before anything is copied.
    """
    converted, report = convert_strict(state_dict, layouts, model.state_dict(), reinit=reinit, source=source,
                                       name=name)
    if not any(isinstance(v, StoredTensor) for v in converted.values()):
        model.load_state_dict(converted, strict=not report.reinitialized)
        return report
    targets = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for key in list(converted):
            targets[key].copy_(materialize(converted.pop(key)))
    return report
