"""The losses the reference repos trained with: cross-entropy with an ignore label, OHEM cross-entropy, and
the weighted sum over a train-mode output dict (main + auxiliary logits).

OHEM follows ``OhemCrossEntropy2dTensor`` of the GALD/DGCNet and CCNet code (models.md §1, §2, §5): the softmax
probability of the true class is computed at every labelled pixel; the threshold is ``thresh``, raised to the
probability of the ``min_kept``-th hardest pixel when that is higher; pixels above the threshold are ignored and
the rest get plain cross-entropy (mean over the kept pixels). With fewer than ``min_kept`` labelled pixels every
labelled pixel is kept, as in the reference.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..data.cityscapes import IGNORE_INDEX
from ..errors import InputError

# Loss weight of each train-mode output (segmentor.py's contract; models.md recipes).
OUTPUT_WEIGHTS = {"out": 1.0, "aux": 0.4, "pam": 1.0, "cam": 1.0}


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 4 or target.dim() != 3 or logits.shape[0] != target.shape[0] \
            or logits.shape[-2:] != target.shape[-2:]:
        raise InputError(f"logits [B, C, H, W] and target [B, H, W] must agree; got {tuple(logits.shape)} "
                         f"and {tuple(target.shape)}")


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy over the pixels whose label is not ``ignore_index``."""
    _check(logits, target)
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


def ohem_keep_mask(logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7, min_kept: int = 100_000,
                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Boolean ``[B, H, W]``: the labelled pixels OHEM trains on (true-class probability <= the threshold)."""
    valid = target != ignore_index
    num_valid = int(valid.sum())
    if num_valid < min_kept or num_valid == 0:
        return valid
    with torch.no_grad():
        prob = logits.detach().float().softmax(dim=1)
        true_prob = prob.gather(1, target.where(valid, 0).unsqueeze(1)).squeeze(1)
        true_prob = true_prob.masked_fill(~valid, 1.0)   # ignored pixels are never "hard"
        threshold = torch.as_tensor(thresh, dtype=true_prob.dtype, device=true_prob.device)
        if min_kept > 0:
            kth = true_prob.flatten().kthvalue(min_kept).values   # the min_kept-th smallest probability
            threshold = torch.maximum(threshold, kth)
        return valid & (true_prob <= threshold)


def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7, min_kept: int = 100_000,
                       ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy over the hard pixels only (see the module docstring)."""
    _check(logits, target)
    keep = ohem_keep_mask(logits, target, thresh, min_kept, ignore_index)
    return F.cross_entropy(logits, target.masked_fill(~keep, ignore_index), ignore_index=ignore_index)


class SegmentationLoss(nn.Module):
    """Weighted sum of per-output losses over a train-mode output dict.

    The main output ``"out"`` uses ``main`` (``"ce"`` or ``"ohem"``); every auxiliary output uses plain
    cross-entropy, as the references do. ``weights`` defaults to :data:`OUTPUT_WEIGHTS` (0.4 for ``"aux"``,
    1.0 for DANet's ``"pam"``/``"cam"``). Returns ``(total, {name: unweighted loss})``.
    """

    def __init__(self, main: str = "ce", thresh: float = 0.7, min_kept: int = 100_000,
                 ignore_index: int = IGNORE_INDEX, weights: Mapping[str, float] | None = None):
        super().__init__()
        if main not in ("ce", "ohem"):
            raise ValueError(f"main loss must be 'ce' or 'ohem', got {main!r}")
        self.main, self.thresh, self.min_kept, self.ignore_index = main, thresh, min_kept, ignore_index
        self.weights = dict(OUTPUT_WEIGHTS if weights is None else weights)

    def forward(self, outputs: Mapping[str, torch.Tensor] | torch.Tensor,
                target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if isinstance(outputs, torch.Tensor):
            outputs = {"out": outputs}
        unknown = [name for name in outputs if name not in self.weights]
        if unknown:
            raise InputError(f"no loss weight for model outputs {unknown}; known: {sorted(self.weights)}")
        terms = {}
        for name, logits in outputs.items():
            if name == "out" and self.main == "ohem":
                terms[name] = ohem_cross_entropy(logits, target, self.thresh, self.min_kept, self.ignore_index)
            else:
                terms[name] = cross_entropy(logits, target, self.ignore_index)
        total = sum(self.weights[name] * loss for name, loss in terms.items())
        return total, terms
