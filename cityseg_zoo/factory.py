"""``create_model``, ``load_checkpoint`` and ``model_info``: the thin public entry points.

Arguments against weights, one rule (as torchvision states it for its ``Weights``):

* a requested ``num_classes`` wins over the weight's. With pretrained weights and another count, everything but
  the classifiers the architecture declares (``ArchSpec.classifiers``) is loaded, those are re-initialised, and
  a warning and ``pretrained_cfg["reinitialized"]`` name them;
* the weight's builder arguments (``model_kwargs``, e.g. CCNet's ``recurrence=2``) are defaults; a requested
  value that contradicts weights being loaded cannot be honoured and is an :class:`ArgumentConflictError` naming
  both values (without ``pretrained`` the request wins: the weight name then only supplies defaults);
* an argument the architecture's builder does not take is a :class:`ModelArgumentError` naming the accepted ones.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .errors import ArgumentConflictError, CheckpointError, WeightsUnavailableError
from .hub.checkpoint import checkpoint_in_folder, open_state_dict
from .hub.convert import load_converted
from .hub.download import passing
from .hub.weights import weight_file
from .registry import check_kwargs, is_weight_name, resolve, weights_for
from .specs import ArchSpec, WeightSpec

_FACTORY_KWARGS = ("pretrained", "class_names", "pretrained_backbone", "mirror")
_NOTICES_SHOWN: set[str] = set()


class WeightsTermsNotice(UserWarning):
    """The licence terms of weights being loaded (shown once per weight and process)."""


def create_model(name: str, pretrained: bool | str | os.PathLike = False, num_classes: int | None = None, *,
                 class_names: Sequence[str] | None = None, pretrained_backbone: bool = False,
                 mirror: str | None = None, **kwargs) -> nn.Module:
    """Build a zoo model by architecture name (``danet_r101``) or weight name (``danet_r101_cityscapes``).

    Args:
        name: a name from :func:`list_models` or :func:`list_pretrained`.
        pretrained: ``False``; ``True`` (the default weights of ``name``); a weight name; or a local checkpoint
            path in any supported layout (reference repos' containers, or the zoo's safetensors).
        num_classes: defaults to the weight's (19 for Cityscapes). With pretrained weights and a different
            count, every layer but the architecture's declared classifiers is loaded; the re-initialised layers
            are named in a warning and in ``pretrained_cfg["reinitialized"]``.
        class_names: names of the classes (as many as ``num_classes``); default: the weight's, Cityscapes' 19,
            or ``class_0 .. class_{K-1}``.
        pretrained_backbone: load timm's ImageNet weights into the backbone only (to train from ImageNet);
            fetched by timm through huggingface_hub (its cache, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``).
        mirror: a base URL or local folder tried before the manifest's sources (default
            ``$CITYSEG_ZOO_MIRROR``).
        kwargs: passed to the architecture builder (e.g. ``recurrence=1`` for CCNet).
    """
    return build_model(name, pretrained, num_classes, class_names=class_names,
                       pretrained_backbone=pretrained_backbone, mirror=mirror, **kwargs)


def build_model(name: str, pretrained: bool | str | os.PathLike = False, num_classes: int | None = None, *,
                class_names: Sequence[str] | None = None, pretrained_backbone: bool = False,
                mirror: str | None = None, option: str = "pretrained=", **kwargs) -> nn.Module:
    """:func:`create_model`; ``option`` is how the caller's user names the weights argument in error messages
    (``--weights `` in the CLI)."""
    arch, weight = resolve(name)
    check_kwargs(arch, kwargs, also=_FACTORY_KWARGS)
    if pretrained_backbone and pretrained not in (False, None):
        raise ValueError("pass either pretrained (whole-model weights) or pretrained_backbone=True, not both")
    path = None
    if pretrained is True:
        weight = weight or _default_weight(arch, option)
    elif isinstance(pretrained, str) and not os.path.exists(pretrained) and is_weight_name(pretrained):
        weight = resolve(pretrained)[1]
        if weight.architecture != arch.name:
            raise CheckpointError(f"weights {pretrained!r} are for {weight.architecture!r}, not {arch.name!r}")
    elif pretrained not in (False, None):
        path = Path(pretrained)
    loads_weight = pretrained is True or (pretrained not in (False, None) and path is None)

    fixed = dict(weight.model_kwargs) if weight is not None else {}
    if loads_weight:
        for key, value in kwargs.items():
            if key in fixed and fixed[key] != value:
                raise ArgumentConflictError(
                    f"{key}={value!r} contradicts the weights {weight.name!r}, trained with {key}={fixed[key]!r}; "
                    f"drop the argument, or build {arch.name!r} with pretrained=False")
    model_kwargs = {**fixed, **kwargs}
    weight_classes = weight.num_classes if weight is not None else None
    n = num_classes if num_classes is not None else (weight_classes or 19)
    model = arch.builder(num_classes=n, **model_kwargs)
    model.weight_spec = weight
    model.model_kwargs = model_kwargs
    if class_names is not None:
        model.set_classes(class_names)
    elif weight is not None and n == weight.num_classes:
        model.set_classes(weight.classes, weight.palette)

    if pretrained_backbone:
        load_backbone_imagenet(model)
    if loads_weight:
        path = locate_weights(arch, weight, mirror, option=option)
        _show_terms(weight)
    if path is not None:
        load_checkpoint(model, path, reinit_classifier=num_classes is not None)
    return model


def _default_weight(arch: ArchSpec, option: str) -> WeightSpec:
    released = weights_for(arch.name)
    if not released:
        raise WeightsUnavailableError(
            f"{arch.name!r} has no pretrained weights in the manifest. Build it without weights (random init), "
            f"or pass your own checkpoint with {passing(option, 'path/to/checkpoint')}.")
    return released[0]


def locate_weights(arch: ArchSpec, weight: WeightSpec, mirror: str | None = None, *, progress: bool = True,
                   option: str = "pretrained=") -> Path:
    """A verified safetensors file of ``weight`` in the zoo's layout, fetched and converted if needed.

    ``option``: how the caller names the weights argument in messages (``--weights`` in the CLI)."""
    if not weight.released:
        raise WeightsUnavailableError(
            f"no weights were ever released for {weight.name!r}: {weight.note or ''} "
            f"Build it without weights (random init) or pass your own checkpoint with "
            f"{passing(option, 'path/to/checkpoint')}.")

    def model_state() -> dict[str, torch.Tensor]:  # the state dict the file must fill: weight's classes and kwargs
        return arch.builder(num_classes=weight.num_classes, **weight.model_kwargs).state_dict()

    return weight_file(weight, layouts=arch.layouts, model_state=model_state, mirror=mirror, progress=progress,
                       option=option)


def _show_terms(weight: WeightSpec) -> None:
    if weight.terms and weight.name not in _NOTICES_SHOWN:
        _NOTICES_SHOWN.add(weight.name)
        warnings.warn(f"{weight.name}: {weight.terms}", WeightsTermsNotice, stacklevel=3)


def load_checkpoint(model: nn.Module, path: str | os.PathLike, layout: str | None = None,
                    reinit_classifier: bool = False) -> nn.Module:
    """Load a checkpoint file, or a ``save_pretrained`` folder, into ``model``, mapping reference key layouts strictly.

    Any missing or unexpected key is a :class:`CheckpointError` naming the keys. ``layout`` forces one
    layout by name (see ``model_info(name)['layouts']``). With ``reinit_classifier``, the architecture's declared
    classifiers whose class count differs from the checkpoint's keep their fresh initialisation; they are named
    in a warning and in ``pretrained_cfg["reinitialized"]``. A folder's ``config.json`` is checked first: a zoo
    folder must be of the same architecture, a foreign one (transformers) must describe the same network.
    """
    arch: ArchSpec = model.arch_spec
    path, config = checkpoint_in_folder(path) if Path(path).is_dir() else (Path(path), None)
    state_dict = open_state_dict(path)
    layouts = list(arch.layouts)
    if layout is not None:
        layouts = [lay for lay in layouts if lay.name == layout]
        if not layouts and layout != "native":
            raise CheckpointError(f"unknown layout {layout!r} for {arch.name}; it loads "
                                  f"{[lay.name for lay in arch.layouts] + ['native']}")
    if config is not None:
        _check_folder_config(config, model, layouts, reinit_classifier)
    classifiers = arch.classifier_keys(model.state_dict()) if reinit_classifier else set()
    report = load_converted(model, state_dict, layouts, source=str(path), reinit=classifiers, name=arch.name)
    if report.reinitialized:
        warnings.warn(f"re-initialised for num_classes={model.num_classes}: {', '.join(report.reinitialized)}",
                      stacklevel=2)
    model.record = {**model.record, "checkpoint": {"path": str(path), "layout": report.layout},
                    "reinitialized": report.reinitialized}
    return model


def _check_folder_config(config: dict, model: nn.Module, layouts: list, reinit_classifier: bool) -> None:
    arch = model.arch_spec.name
    if config.get("library_name") == "cityseg_zoo":
        if config.get("architecture") != arch:
            raise CheckpointError(f"the folder holds a {config.get('architecture')!r} model, not {arch!r}: load it "
                                  "with cityseg_zoo.from_pretrained(folder)")
        return
    check = next((lay.check_config for lay in layouts if lay.check_config is not None), None)
    if check is not None:
        check(config, model, reinit_classifier)


def load_backbone_imagenet(model: nn.Module) -> nn.Module:
    """Load timm's ImageNet weights (the variant's default tag) into ``model.backbone``, strictly."""
    import timm
    variant = getattr(model.backbone, "timm_variant", None)
    if variant is None:
        note = getattr(model.backbone, "imagenet_weights_note",
                       f"its backbone ({type(model.backbone).__name__}) has no timm ImageNet weights")
        raise WeightsUnavailableError(f"{model.arch_spec.name}: {note}; pretrained_backbone=True works for the "
                                      "ResNet models")
    try:
        trunk = timm.create_model(variant, pretrained=True, num_classes=0, global_pool="")
    except Exception as err:  # timm / huggingface_hub network, offline and not-found errors
        raise WeightsUnavailableError(f"could not get timm's ImageNet weights of {variant!r}: "
                                      f"{type(err).__name__}: {err}") from err
    target = model.backbone.state_dict()
    # ABN norms (InPlaceABN repos) keep no num_batches_tracked
    weights = {k: v for k, v in trunk.state_dict().items() if k in target or not k.endswith("num_batches_tracked")}
    result = model.backbone.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"timm {variant} weights do not fit the backbone: missing {result.missing_keys[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]}")
    model.record = {**model.record, "backbone_weights": trunk.pretrained_cfg.get("hf_hub_id") or variant}
    return model


def model_info(name: str) -> dict:
    """Configuration, parameter count, layouts and weights of a model name, without allocating weights."""
    arch, weight = resolve(name)
    with torch.device("meta"):
        model = create_model(name)
    return {
        "name": name,
        "architecture": arch.name,
        "params": sum(p.numel() for p in model.parameters()),
        "description": arch.doc.splitlines()[0] if arch.doc else "",
        "pretrained_cfg": dict(model.pretrained_cfg),
        "layouts": [lay.name for lay in arch.layouts],
        "weights": [w.name for w in weights_for(arch.name)],
    }
