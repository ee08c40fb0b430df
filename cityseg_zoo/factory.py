"""``create_model``, ``load_checkpoint`` and ``model_info``: the thin public entry points."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .data.cityscapes import CLASS_NAMES, NUM_CLASSES, PALETTE
from .errors import CheckpointError, UnknownModelError, WeightsUnavailableError
from .hub.checkpoint import checkpoint_in_folder, read_state_dict
from .hub.convert import Layout, load_converted
from .hub.weights import weight_file
from .registry import ModelEntry, resolve, weights_for


def _pretrained_cfg(entry: ModelEntry, weight: dict | None, num_classes: int) -> dict:
    cfg = {"architecture": entry.name, "weights": None, **entry.cfg, "num_classes": num_classes}
    if num_classes == NUM_CLASSES:
        cfg.update(classes=list(CLASS_NAMES), palette=[list(c) for c in PALETTE])
    if weight is not None:
        cfg.update({k: v for k, v in weight.items() if k not in ("name", "architecture")})
        cfg["weights"] = weight["name"]
    return cfg


def create_model(name: str, pretrained: bool | str | os.PathLike = False, num_classes: int | None = None, *,
                 pretrained_backbone: bool = False, mirror: str | None = None, **kwargs) -> nn.Module:
    """Build a zoo model by architecture name (``danet_r101``) or weight name (``danet_r101_cityscapes``).

    Args:
        name: a name from :func:`list_models` or :func:`list_pretrained`.
        pretrained: ``False``; ``True`` (the default weights of ``name``); a weight name; or a local checkpoint
            path in any supported layout (reference repos' containers, or the zoo's safetensors).
        num_classes: defaults to 19 (Cityscapes). With pretrained weights and a different count, every layer but
            the classifiers is loaded and the re-initialised layers are reported in a warning.
        pretrained_backbone: load timm's ImageNet weights into the backbone only (to train from ImageNet);
            fetched by timm through huggingface_hub (its cache, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``).
        mirror: a base URL or local folder tried before the manifest's sources (default
            ``$CITYSEG_ZOO_MIRROR``).
        kwargs: passed to the architecture builder (e.g. ``recurrence=1`` for CCNet).
    """
    entry, weight = resolve(name)
    n = num_classes if num_classes is not None else (weight or {}).get("num_classes", NUM_CLASSES)
    kwargs = {**(weight or {}).get("model_kwargs", {}), **kwargs}  # e.g. CCNet's recurrence of those weights
    model = entry.builder(num_classes=n, **kwargs)
    model.pretrained_cfg = _pretrained_cfg(entry, weight, n)
    if kwargs:
        model.pretrained_cfg["model_kwargs"] = kwargs  # to rebuild the same model (save_pretrained, fine-tuning)
    if pretrained is False or pretrained is None:
        if pretrained_backbone:
            load_backbone_imagenet(model)
        return model
    if pretrained_backbone:
        raise ValueError("pass either pretrained (whole-model weights) or pretrained_backbone=True, not both")
    if pretrained is True:
        path = _locate_weights(entry, weight, mirror)
    elif isinstance(pretrained, str) and not os.path.exists(pretrained) and _is_weight_name(pretrained):
        weight = resolve(pretrained)[1]
        if weight["architecture"] != entry.name:
            raise CheckpointError(f"weights {pretrained!r} are for {weight['architecture']!r}, not {entry.name!r}")
        model.pretrained_cfg = _pretrained_cfg(entry, weight, n)
        path = _locate_weights(entry, weight, mirror)
    else:
        path = Path(pretrained)
    load_checkpoint(model, path, reinit_classifier=num_classes is not None)
    return model


def _is_weight_name(text: str) -> bool:
    try:
        return resolve(text)[1] is not None
    except UnknownModelError:
        return False


def _locate_weights(entry: ModelEntry, weight: dict | None, mirror: str | None = None) -> Path:
    """A verified safetensors file of ``weight`` (the architecture's default when ``None``), fetched and converted
    if needed."""
    if weight is None:
        released = weights_for(entry.name)
        if not released:
            raise WeightsUnavailableError(
                f"{entry.name!r} has no pretrained weights in the manifest. Build it with pretrained=False, "
                "or pass pretrained='path/to/checkpoint'.")
        weight = released[0]
    if not weight.get("sources"):
        raise WeightsUnavailableError(
            f"no weights were ever released for {weight['name']!r}: {weight.get('note', '')} "
            "Use pretrained=False (random init) or pass your own checkpoint path.")
    path = weight_file(weight, mirror=mirror)
    if weight.get("terms") and weight["name"] not in _TERMS_SHOWN:   # a licence notice, once per process and weight
        _TERMS_SHOWN.add(weight["name"])
        warnings.warn(f"{weight['name']}: {weight['terms']}", stacklevel=3)
    return path


_TERMS_SHOWN: set[str] = set()


def load_checkpoint(model: nn.Module, path: str | os.PathLike, layout: str | None = None,
                    reinit_classifier: bool = False) -> nn.Module:
    """Load a checkpoint file, or a ``save_pretrained`` folder, into ``model``, mapping reference key layouts strictly.

    Any missing or unexpected key is a :class:`CheckpointError` naming the keys. ``layout`` forces one
    layout by name (see ``model_info(name)['layouts']``). A folder's ``config.json`` is checked first: a zoo folder
    must be of the same architecture, a foreign one (transformers) must describe the same network.
    """
    from .registry import get_entry
    path, config = checkpoint_in_folder(path) if Path(path).is_dir() else (Path(path), None)
    state_dict = read_state_dict(path)
    layouts: list[Layout] = list(get_entry(model.pretrained_cfg["architecture"]).layouts)
    if layout is not None:
        layouts = [lay for lay in layouts if lay.name == layout]
        if not layouts:
            raise CheckpointError(f"unknown layout {layout!r} for {model.pretrained_cfg['architecture']}")
    if config is not None:
        _check_folder_config(config, model, layouts, reinit_classifier)
    report = load_converted(model, state_dict, layouts, source=str(path), reinit_classifier=reinit_classifier)
    if report.reinitialized:
        warnings.warn(f"re-initialised for num_classes={model.pretrained_cfg['num_classes']}: "
                      f"{', '.join(report.reinitialized)}", stacklevel=2)
    model.pretrained_cfg["checkpoint"] = {"path": str(path), "layout": report.layout}
    return model


def _check_folder_config(config: dict, model: nn.Module, layouts: list[Layout], reinit_classifier: bool) -> None:
    arch = model.pretrained_cfg["architecture"]
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
        raise WeightsUnavailableError(f"{model.pretrained_cfg['architecture']}: {note}; "
                                      "pretrained_backbone=True works for the ResNet models")
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
    model.pretrained_cfg["backbone_weights"] = trunk.pretrained_cfg.get("hf_hub_id") or variant
    return model


def model_info(name: str) -> dict:
    """Configuration, parameter count, layouts and weights of a model name, without allocating weights."""
    entry, weight = resolve(name)
    with torch.device("meta"):
        model = entry.builder(num_classes=(weight or {}).get("num_classes", NUM_CLASSES))
    return {
        "name": name,
        "architecture": entry.name,
        "params": sum(p.numel() for p in model.parameters()),
        "description": entry.doc.splitlines()[0] if entry.doc else "",
        "pretrained_cfg": _pretrained_cfg(entry, weight, (weight or {}).get("num_classes", NUM_CLASSES)),
        "layouts": [lay.name for lay in entry.layouts],
        "weights": [w["name"] for w in weights_for(entry.name)],
    }
