"""SGD with the "poly" learning-rate decay, and the parameter groups of the reference recipes.

Poly: ``lr(step) = base_lr * (1 - step / total_steps) ** power`` (power 0.9 in GALD, DGCNet, CCNet, DANet;
1.0 in the DecoupleSegNets DeepLabv3+ script). DANet trains its head at 10x the backbone's learning rate
(``head_lr_mult=10``); the other recipes use one rate for every parameter. Weight decay applies to every
parameter, norms and biases included, as in every reference.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


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


RECIPES: dict[str, Recipe] = {
    "galdnet": Recipe(0.01, 5e-4, loss="ohem", crop=769, batch_size=8, iterations=50_000,
                      scale_range=(0.7, 2.1), source="lxtGH/GALD-DGCNet train scripts (models.md §1)"),
    "dgcnet": Recipe(0.01, 5e-4, loss="ohem", crop=832, batch_size=8, iterations=60_000,
                     source="lxtGH/GALD-DGCNet exp/train_dualseg_r_101_city_finetrain.sh (models.md §2); r50: 50k"),
    "ccnet": Recipe(0.01, 1e-4, loss="ohem", crop=769, batch_size=8, iterations=60_000,
                    source="speedinghzl/CCNet run_local.sh (models.md §5); CE for the R=1/R=2 weights, "
                           "OHEM for R=2+OHEM"),
    "danet": Recipe(0.003, 1e-4, head_lr_mult=10.0, crop=768, batch_size=8,
                    source="junfu1115/DANet (models.md §4): 240 epochs, head at 10x lr"),
    "ocnet": Recipe(0.01, 5e-4, crop=769, batch_size=8, iterations=40_000,
                    source="openseg-group/OCNet.pytorch (models.md §6); class-balanced CE in the original"),
    "deeplabv3plus": Recipe(0.01, 1e-4, power=1.0, loss="ohem", crop=832, batch_size=8, scale_range=(0.5, 2.0),
                            source="DecoupleSegNets train_cityscapes_ResNet50_deeplab.sh (models.md §9): 80 epochs; "
                                   "weight decay not recorded in models.md, 1e-4 assumed"),
}


def recipe_for(architecture: str) -> Recipe | None:
    """The recipe of an architecture name (``galdnet_r50`` -> ``RECIPES["galdnet"]``), or ``None``."""
    family = architecture.rsplit("_", 1)[0]
    return RECIPES.get(family) or RECIPES.get(family.split("_")[0])


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
