"""SGD with the "poly" learning-rate decay, and the parameter groups of the reference recipes.

Poly: ``lr(step) = base_lr * (1 - step / total_steps) ** power`` (power 0.9 in GALD, DGCNet, CCNet, DANet;
1.0 in the DecoupleSegNets DeepLabv3+ script). DANet trains its head at 10x the backbone's learning rate
(``head_lr_mult=10``); the other recipes use one rate for every parameter. Weight decay applies to every
parameter, norms and biases included, as in every reference.
"""
from __future__ import annotations

import torch
from torch import nn

from ..specs import Recipe


def recipe_for(architecture: str) -> Recipe | None:
    """The released training recipe of an architecture (its ``ArchSpec.recipe``), or ``None`` where none is
    recorded."""
    from ..registry import arch_spec
    return arch_spec(architecture).recipe


def param_groups(model: nn.Module, lr: float, head_lr_mult: float = 1.0) -> list[dict]:
    """Two groups: ``model.backbone`` at ``lr``, everything else (heads) at ``lr * head_lr_mult``.

    Each group records its ``lr_mult`` so the schedule keeps the ratio. Frozen parameters are left out.
    """
    backbone = model.get_submodule("backbone") if hasattr(model, "backbone") else None
    backbone_ids = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"name": "backbone", "params": [p for _, p in trainable if id(p) in backbone_ids], "lr": lr, "lr_mult": 1.0},
        {"name": "head", "params": [p for _, p in trainable if id(p) not in backbone_ids],
         "lr": lr * head_lr_mult, "lr_mult": head_lr_mult},
    ]
    return [g for g in groups if g["params"]]


def build_sgd(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4,
              head_lr_mult: float = 1.0) -> torch.optim.SGD:
    """SGD over :func:`param_groups` (no Nesterov, as the references)."""
    return torch.optim.SGD(param_groups(model, lr, head_lr_mult), lr=lr, momentum=momentum,
                           weight_decay=weight_decay)


class PolyDecay:
    """The poly factor ``(1 - step / total_steps) ** power``, 0 from ``total_steps`` on (a picklable lambda)."""

    def __init__(self, total_steps: int, power: float = 0.9):
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        self.total_steps, self.power = int(total_steps), float(power)

    def __call__(self, step: int) -> float:
        return max(0.0, 1.0 - step / self.total_steps) ** self.power


def poly_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9):
    """``LambdaLR`` applying :class:`PolyDecay` to every group's initial lr (so a 10x head stays 10x).

    Computed in closed form from the step count, so a resumed run gets exactly the rates of an unbroken one.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, PolyDecay(total_steps, power))
