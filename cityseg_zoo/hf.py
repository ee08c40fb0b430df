"""Saving a model as ``model.safetensors`` + ``config.json``, loading it back from a folder or a Hugging Face
Hub repo, and pushing it to the Hub.

The folder format (``save_pretrained``)::

    config.json          {"library_name": "cityseg_zoo", "architecture", "num_classes", "classes",
                          "input" (normalisation), "model_kwargs", "pretrained_cfg": the model's full record}
    model.safetensors    the model's state dict under its own key names

``from_pretrained`` rebuilds the architecture with ``create_model(architecture, num_classes=..., **model_kwargs)``
and loads the weights strictly, so a fine-tuned model (new class count, new class names) round-trips bit for bit.
Loading never unpickles. Hub downloads go through ``hf_hub_download`` (its cache, locks, ``HF_ENDPOINT``).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, WeightsUnavailableError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Facts of the checkpoint a model was loaded from; meaningless once the model is saved elsewhere.
_LOCAL_ONLY_KEYS = ("checkpoint",)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def model_config(model: nn.Module) -> dict:
    """The ``config.json`` record of ``model`` (see the module docstring)."""
    model = unwrap_model(model)
    cfg = {k: v for k, v in dict(getattr(model, "pretrained_cfg", {})).items() if k not in _LOCAL_ONLY_KEYS}
    if "architecture" not in cfg:
        raise CheckpointError("model.pretrained_cfg has no 'architecture'; only zoo models (create_model) can be "
                              "saved with save_pretrained")
    from . import __version__
    return {
        "library_name": "cityseg_zoo",
        "cityseg_zoo_version": __version__,
        "architecture": cfg["architecture"],
        "num_classes": cfg["num_classes"],
        "classes": cfg.get("classes"),
        "palette": cfg.get("palette"),
        "input": cfg.get("input"),
        "model_kwargs": cfg.get("model_kwargs", {}),
        "pretrained_cfg": cfg,
    }


def _state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors; a tensor sharing storage with an earlier one is copied (safetensors refuses
    shared storage)."""
    seen, out = set(), {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        if value.numel():
            if value.untyped_storage().data_ptr() in seen:
                value = value.clone()
            seen.add(value.untyped_storage().data_ptr())
        out[key] = value
    return out


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for ``model`` into ``save_directory`` (created if needed).

    Each file is written to a temporary name and renamed into place, so an interrupted save never leaves a
    half-written file under the final name.
    """
    from safetensors.torch import save_file
    model = unwrap_model(model)
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model_config(model)
    state = _state_dict_for_saving(model)
    metadata = {"format": "pt", "architecture": config["architecture"], "num_classes": str(config["num_classes"])}
    _write_atomic(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata=metadata))
    text = json.dumps(config, indent=2, sort_keys=False) + "\n"
    _write_atomic(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return directory


def _hub_files(repo_id: str, revision: str | None, cache_dir, token) -> tuple[Path, Path]:
    from huggingface_hub import hf_hub_download
    from .hub.download import cache_dir as zoo_cache_dir, is_offline
    files = []
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            files.append(Path(hf_hub_download(
                repo_id, filename, revision=revision, token=token, library_name="cityseg_zoo",
                cache_dir=cache_dir if cache_dir is not None else zoo_cache_dir() / "huggingface",
                endpoint=os.environ.get("HF_ENDPOINT"), local_files_only=is_offline())))
        except Exception as err:  # huggingface_hub's HTTP / not-found / offline errors
            raise WeightsUnavailableError(
                f"could not fetch {filename!r} of Hugging Face repo {repo_id!r} (revision {revision or 'main'}): "
                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    return files[0], files[1]


def from_pretrained(name_or_path: str | os.PathLike, *, revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None, token: str | bool | None = None,
                    map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a model written by :func:`save_pretrained` from a local folder or a Hub repo id (``org/name``).

    Returns the model in eval mode with ``pretrained_cfg`` as saved (plus ``"checkpoint"``: where it was read).
    """
    from .factory import create_model, load_checkpoint
    local = Path(name_or_path)
    if local.is_dir():
        config_path, weights_path = local / CONFIG_NAME, local / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise CheckpointError(f"{local} is not a save_pretrained folder: {path.name} is missing")
    elif local.exists():
        raise CheckpointError(f"{local} is a file; from_pretrained takes the folder holding {CONFIG_NAME} and "
                              f"{WEIGHTS_NAME} (use create_model(name, pretrained=path) for a weight file)")
    elif isinstance(name_or_path, str) and _REPO_ID.match(name_or_path):
        config_path, weights_path = _hub_files(name_or_path, revision, cache_dir, token)
    else:
        raise CheckpointError(f"{name_or_path!r} is neither a local folder nor a Hugging Face repo id (org/name)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        architecture, num_classes = config["architecture"], int(config["num_classes"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{config_path} is not a cityseg_zoo config: {type(err).__name__}: {err}") from err
    model = create_model(architecture, num_classes=num_classes, **config.get("model_kwargs", {}))
    apply_config(model, config)
    load_checkpoint(model, weights_path)   # the native layout is tried first, strictly
    model.record["checkpoint"] = {"path": str(weights_path), "layout": "native", "source": str(name_or_path),
                                  "revision": revision}
    return model.to(map_location).eval()


# What a saved model's record carries over (``checkpoint`` is re-made by whoever loads it).
_RECORD_KEYS = ("finetuned_from", "reinitialized", "backbone_weights")


def apply_config(model: nn.Module, config: dict) -> nn.Module:
    """Give a freshly built zoo model the class names, palette, weight provenance and record of ``config`` (a
    :func:`model_config` record), so that its ``pretrained_cfg`` reads as it did when it was saved."""
    from .registry import weights_manifest
    cfg = config.get("pretrained_cfg") or {}
    if config.get("classes"):
        model.set_classes(config["classes"], config.get("palette"))
    source = cfg.get("weights") or cfg.get("finetuned_from")
    model.weight_spec = weights_manifest().get(source) if isinstance(source, str) else None
    model.model_kwargs = dict(config.get("model_kwargs") or {})
    model.record = {k: cfg[k] for k in _RECORD_KEYS if cfg.get(k) is not None}
    return model


def model_card(config: dict) -> str:
    """A short README.md for a Hub repo: what the model is, its classes and input, and how to load it."""
    cfg = config["pretrained_cfg"]
    classes = ", ".join(config.get("classes") or []) or "(not recorded)"
    return (f"---\nlibrary_name: cityseg_zoo\ntags:\n- image-segmentation\n- semantic-segmentation\n---\n\n"
            f"# {config['architecture']} ({config['num_classes']} classes)\n\n"
            f"Architecture `{config['architecture']}` of [cityseg_zoo]; reference code: {cfg.get('reference', '?')}.\n"
            f"Fine-tuned from: {cfg.get('finetuned_from') or cfg.get('weights') or 'random initialisation'}.\n\n"
            f"Classes: {classes}\n\nInput normalisation: `{json.dumps(config.get('input'))}`\n\n"
            "```python\nfrom cityseg_zoo.hf import from_pretrained\nmodel = from_pretrained(\"<this repo id>\")\n```\n")


def push_to_hub(model: nn.Module, repo_id: str, *, token: str | None = None, private: bool | None = None,
                revision: str | None = None, commit_message: str = "Upload cityseg_zoo model",
                endpoint: str | None = None) -> str:
    """Create ``repo_id`` if needed and upload ``config.json``, ``model.safetensors`` and a README model card.

    Returns the commit URL. Uses ``HfApi.upload_folder``; authentication is huggingface_hub's (``token`` or
    ``huggingface-cli login``).
    """
    from huggingface_hub import HfApi
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT"), token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        config = json.loads((Path(tmp) / CONFIG_NAME).read_text(encoding="utf-8"))
        (Path(tmp) / "README.md").write_text(model_card(config), encoding="utf-8")
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
