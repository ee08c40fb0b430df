"""The facts of a model, each owned by exactly one record.

* :class:`ArchSpec` — what an *architecture* is: its reference code and paper, the input normalisation its
  reference trained with, the final upsampling's ``align_corners``, the head's stride, the smallest input it
  accepts, the checkpoint layouts it loads, which modules are its classifiers, and its training recipe.
  Declared once in the architecture's model file and registered with its builder (``registry.register_model``).
* :class:`WeightSpec` — what one published *checkpoint* is: where it is and how it is checked, how it is read,
  its classes and palette, the protocol and metrics it was evaluated with, its licence and citation. Parsed and
  validated from ``weights_manifest.json``; nothing else states these facts.
* :func:`pretrained_cfg` — the read-only view of both (plus what happened to one model instance: the file it
  was loaded from, re-initialised classifiers, the inference switch) that every model carries as
  ``model.pretrained_cfg``, the name timm users know. It is built here and nowhere else.
"""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from .data.cityscapes import CLASS_NAMES, NUM_CLASSES, PALETTE
from .data.normalization import Normalization
from .hub.convert import Layout

FAMILIES = ("original", "mmseg")   # the papers' own weights (wherever they are hosted), mmsegmentation's

# Named class lists a manifest entry may refer to: name -> (class names, palette).
CLASS_LISTS: dict[str, tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]] = {
    "cityscapes_trainids": (tuple(CLASS_NAMES), tuple(tuple(c) for c in PALETTE)),
}


@dataclass(frozen=True)
class Recipe:
    """The optimisation settings a paper's released training scripts used on Cityscapes (models.md)."""

    lr: float
    weight_decay: float
    power: float = 0.9
    momentum: float = 0.9
    head_lr_mult: float = 1.0
    loss: str = "ce"                 # main-output loss: "ce" or "ohem" (thresh 0.7, min_kept 100 000)
    crop: int = 769
    batch_size: int = 8
    iterations: int | None = None    # None: the recipe counts epochs instead (DANet: 240)
    scale_range: tuple[float, float] | None = None   # random rescale factors, where models.md records them
    source: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ArchSpec:
    """The facts of one architecture (see the module docstring).

    A model file declares one ``ArchSpec`` per group of names that share their facts and registers each builder
    with it (``@register_model(SPEC)``); ``name`` and ``builder`` are filled in at registration.

    Args:
        reference: the reference code, as ``owner/repo@commit path::symbol``.
        paper: the paper it implements.
        input: how the reference normalised its input (channel order, scale, mean, std).
        classifiers: module paths (``head.classifier``, ``aux_head.4``) of the layers with one output per class;
            these, and only these, are re-initialised when a checkpoint is loaded with another class count.
        classifier_extra_outputs: outputs of each classifier beyond the class count (Mask2Former's class
            predictor has ``K + 1``: its last output is "no object"); 0 for per-pixel classifiers.
        layouts: checkpoint key layouts the architecture loads (besides the zoo's own).
        align_corners: of the final upsampling of the logits to the input size.
        head_stride: stride of the head's logits (``forward_logits_lowres``) relative to the input.
        min_input_size: smallest input side the architecture accepts.
        family: whose design the architecture follows: ``original`` (the papers' code) or ``mmseg``.
        recipe: the released training recipe, where one is recorded.
    """

    reference: str
    paper: str
    input: Normalization
    classifiers: tuple[str, ...]
    layouts: tuple[Layout, ...] = ()
    classifier_extra_outputs: int = 0
    align_corners: bool = True
    head_stride: int = 8
    min_input_size: int = 1
    family: str = "original"
    recipe: Recipe | None = None
    name: str = ""
    builder: Callable | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if not self.classifiers:
            raise ValueError("an ArchSpec must declare its classifier modules")
        if self.classifier_extra_outputs < 0:
            raise ValueError(f"classifier_extra_outputs must be >= 0, got {self.classifier_extra_outputs}")

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.builder.__doc__ or "") if self.builder is not None else ""

    @property
    def accepted_kwargs(self) -> tuple[str, ...]:
        """Keyword arguments the builder takes besides ``num_classes`` (e.g. CCNet's ``recurrence``)."""
        if self.builder is None:
            return ()
        params = inspect.signature(self.builder).parameters
        return tuple(n for n, p in params.items() if n != "num_classes"
                     and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    def classifier_keys(self, state_keys) -> set[str]:
        """The state-dict keys of the declared classifier modules, among ``state_keys``."""
        prefixes = tuple(f"{name}." for name in self.classifiers)
        return {key for key in state_keys if key.startswith(prefixes)}

    def layout(self, name: str) -> Layout:
        for layout in self.layouts:
            if layout.name == name:
                return layout
        raise KeyError(name)

    def facts(self) -> dict:
        """The JSON facts of ``pretrained_cfg`` this spec owns."""
        return {"reference": self.reference, "paper": self.paper, "family": self.family,
                "input": self.input.as_dict(), "align_corners": self.align_corners, "head_stride": self.head_stride,
                "min_input_size": self.min_input_size, "classifiers": list(self.classifiers),
                "classifier_extra_outputs": self.classifier_extra_outputs,
                "layouts": [lay.name for lay in self.layouts],
                "recipe": self.recipe.as_dict() if self.recipe is not None else None}


@dataclass(frozen=True)
class WeightSpec:
    """The facts of one published checkpoint, from its ``weights_manifest.json`` entry (schema:
    ``hub/manifest.py``). ``classes`` is the list of class names (the manifest names a list such as
    ``"cityscapes_trainids"``); ``input`` is ``None`` unless the weight was trained with another normalisation than
    its architecture's (then it overrides it)."""

    name: str
    architecture: str
    family: str
    num_classes: int
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...] | None
    filename: str | None
    format: str | None
    container: str | None
    layout: str | None
    sources: tuple[Mapping[str, str], ...]
    integrity: str
    sha256: str | None
    size: int | None
    eval: Mapping[str, Any]
    reported: Mapping[str, Any]
    license: str | None
    citation: str
    sha256_prefix: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    input: Normalization | None = None
    terms: str | None = None        # shown once when the weights are loaded (a non-commercial licence, say)
    note: str | None = None
    class_list: str = ""            # the manifest's name of the class list

    @property
    def released(self) -> bool:
        return bool(self.sources)

    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any]) -> "WeightSpec":
        """Build from a schema-valid manifest entry (``hub.manifest.validate_manifest`` checks it first)."""
        names, palette = CLASS_LISTS[entry["classes"]]
        return cls(
            name=entry["name"], architecture=entry["architecture"], family=entry["family"],
            num_classes=entry["num_classes"], classes=names, palette=palette, class_list=entry["classes"],
            filename=entry["filename"], format=entry["format"], container=entry["container"],
            layout=entry["layout"], sources=tuple(MappingProxyType(dict(s)) for s in entry["sources"]),
            integrity=entry["integrity"], sha256=entry["sha256"], size=entry["size"],
            sha256_prefix=entry.get("sha256_prefix"), model_kwargs=MappingProxyType(dict(entry.get("model_kwargs", {}))),
            input=Normalization.from_dict(entry["input"]) if "input" in entry else None,
            eval=MappingProxyType(dict(entry["eval"])), reported=MappingProxyType(dict(entry["reported"])),
            license=entry["license"], citation=entry["citation"], terms=entry.get("terms"), note=entry.get("note"))

    def facts(self, *, classes_unchanged: bool = True) -> dict:
        """The JSON facts of ``pretrained_cfg`` this spec owns. With another class count than the weight's,
        its metrics no longer describe the model and are left out (its licence and citation still apply)."""
        cfg = {"filename": self.filename, "sources": [dict(s) for s in self.sources], "integrity": self.integrity,
               "sha256": self.sha256 or self.sha256_prefix, "eval": _plain(self.eval),
               "license": self.license, "citation": self.citation}
        if self.terms:
            cfg["terms"] = self.terms
        if classes_unchanged:
            cfg["reported"] = _plain(self.reported)
            if self.note:
                cfg["note"] = self.note
        return cfg


def _plain(value):
    """JSON-plain copies of mappings and tuples (for a ``pretrained_cfg`` that ``json.dumps`` can write)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def default_classes(num_classes: int) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...] | None]:
    """Class names (and palette) of a model without weights: Cityscapes' 19, else ``class_0 .. class_{K-1}``."""
    if num_classes == NUM_CLASSES:
        return CLASS_LISTS["cityscapes_trainids"]
    return tuple(f"class_{i}" for i in range(num_classes)), None


def pretrained_cfg(arch: ArchSpec, weight: WeightSpec | None, *, num_classes: int, classes: Sequence[str],
                   palette: Sequence[Sequence[int]] | None, model_kwargs: Mapping[str, Any],
                   record: Mapping[str, Any]) -> Mapping[str, Any]:
    """The read-only ``model.pretrained_cfg``: ``arch``'s facts, ``weight``'s facts (metrics only while the class
    count is the weight's), the model's own class list and builder arguments, and ``record`` (what happened to
    this instance: ``checkpoint``, ``reinitialized``, ``backbone_weights``, ``inference_optimized``)."""
    # Published facts (name, metrics) describe the model only while it holds those weights unchanged.
    same = weight is not None and num_classes == weight.num_classes and not record.get("finetuned_from")
    cfg: dict[str, Any] = {"architecture": arch.name, "weights": weight.name if same else None}
    if weight is not None and not same:
        cfg["finetuned_from"] = weight.name
    cfg.update(arch.facts())
    if weight is not None:
        cfg.update(weight.facts(classes_unchanged=same))
        if weight.input is not None:
            cfg["input"] = weight.input.as_dict()
    cfg.update(num_classes=num_classes, classes=list(classes),
               palette=[list(c) for c in palette] if palette is not None else None,
               model_kwargs=_plain(dict(model_kwargs)))
    cfg.update(_plain(dict(record)))
    return MappingProxyType(cfg)
