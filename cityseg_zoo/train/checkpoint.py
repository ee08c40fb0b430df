"""Training checkpoints: the model as ``save_pretrained`` writes it, plus what a resumed run needs.

One checkpoint is a folder ``<output>/checkpoint-<step>/``::

    config.json, model.safetensors   loadable on their own with cityseg_zoo.hf.from_pretrained
    training_state.safetensors       optimizer tensors (momentum buffers) and RNG states
    training_state.json              step, optimizer hyper-parameters, lr scheduler, run settings

The folder is written under a temporary name and renamed, then ``<output>/latest`` is updated, so an
interrupted save never becomes the checkpoint a resume picks. Nothing is unpickled when resuming.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..hf import CONFIG_NAME, WEIGHTS_NAME, apply_config, save_pretrained, unwrap_model

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
LATEST = "latest"


def _split_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state dict -> (tensors by flat name, everything else as JSON-ready data)."""
    tensors, plain = {}, {}
    for index, per_param in state_dict["state"].items():
        plain[str(index)] = {}
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain[str(index)][name] = value
    return tensors, {"state": plain, "param_groups": state_dict["param_groups"]}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state = {int(index): dict(values) for index, values in plain["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def _rng_tensors() -> dict[str, torch.Tensor]:
    states = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["rng.cuda"] = torch.cuda.get_rng_state()
    return states


def save_training_checkpoint(output_dir: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                             scheduler, step: int, settings: dict | None = None) -> Path:
    """Write ``<output_dir>/checkpoint-<step>`` (see the module docstring) and point ``latest`` at it."""
    from safetensors.torch import save_file
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step:07d}"
    tmp = output_dir / f".tmp-checkpoint-{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(unwrap_model(model), tmp)
    tensors, optimizer_plain = _split_optimizer_state(optimizer.state_dict())
    tensors.update(_rng_tensors())
    save_file(tensors, str(tmp / STATE_TENSORS))
    record = {"step": int(step), "optimizer": optimizer_plain,
              "scheduler": scheduler.state_dict() if scheduler is not None else None, "settings": settings or {}}
    (tmp / STATE_JSON).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = output_dir / f".{LATEST}.{os.getpid()}"
    latest_tmp.write_text(final.name + "\n", encoding="utf-8")
    os.replace(latest_tmp, output_dir / LATEST)
    return final


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder itself, or the one ``<output_dir>/latest`` names."""
    path = Path(path)
    if (path / STATE_JSON).is_file():
        return path
    if (path / LATEST).is_file():
        target = path / (path / LATEST).read_text(encoding="utf-8").strip()
        if (target / STATE_JSON).is_file():
            return target
        raise CheckpointError(f"{path / LATEST} names {target.name}, which is not a complete checkpoint")
    raise CheckpointError(f"{path} is neither a training checkpoint folder nor an output folder with a "
                          f"'{LATEST}' file")


def load_training_checkpoint(path: str | os.PathLike, model: nn.Module,
                             optimizer: torch.optim.Optimizer | None = None, scheduler=None,
                             restore_rng: bool = True) -> dict:
    """Restore model weights (strictly) and ``pretrained_cfg``, optimizer, scheduler and RNG from a checkpoint;
    returns its record (``record["step"]`` is the number of optimizer steps already taken)."""
    from safetensors.torch import load_file
    from ..hub.checkpoint import read_state_dict
    folder = find_checkpoint(path)
    model = unwrap_model(model)
    config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    cfg = getattr(model, "pretrained_cfg", {})
    for key in ("architecture", "num_classes"):
        if key in cfg and config.get(key) != cfg[key]:
            raise CheckpointError(f"{folder} holds a {key}={config.get(key)!r} model; this one has {cfg[key]!r}")
    state = read_state_dict(folder / WEIGHTS_NAME)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{folder / WEIGHTS_NAME} does not fit the model: missing {result.missing_keys[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]}")
    if config.get("pretrained_cfg"):   # the record of the weights now in the model
        if getattr(model, "arch_spec", None) is not None:
            apply_config(model, config)
        else:
            model.pretrained_cfg = dict(config["pretrained_cfg"])
    record = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
    tensors = load_file(str(folder / STATE_TENSORS))
    if optimizer is not None:
        device_state = _join_optimizer_state(tensors, record["optimizer"])
        optimizer.load_state_dict(device_state)   # moves state tensors to each parameter's device
    if scheduler is not None and record.get("scheduler") is not None:
        scheduler.load_state_dict(record["scheduler"])
    if restore_rng:
        torch.set_rng_state(tensors["rng.cpu"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
    return record
