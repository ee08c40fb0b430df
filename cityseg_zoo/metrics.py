"""Streaming confusion matrix, per-class IoU, mIoU and pixel accuracy; the same numbers on 1 or N processes.

The confusion matrix is a sum over images, so splitting a dataset across processes and summing the matrices with
``torch.distributed.all_reduce`` gives exactly the single-process matrix (integers: no rounding). Launch several
processes with plain ``torchrun``; :func:`init_distributed` reads its environment (gloo on CPU, NCCL on CUDA).
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

from .data.cityscapes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from .errors import InputError


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int = NUM_CLASSES,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``[num_classes, num_classes]`` int64 counts: row = ground-truth class, column = predicted class.

    Pixels whose target is ``ignore_index`` are skipped; any other target or prediction outside
    ``0..num_classes-1`` is an :class:`InputError`.
    """
    if pred.shape != target.shape:
        raise InputError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if pred.is_floating_point() or target.is_floating_point():
        raise InputError("pass class indices (e.g. logits.argmax(1)), not float scores")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long().to(target.device)
    keep = target != ignore_index
    target, pred = target[keep], pred[keep]
    for name, values in (("target", target), ("prediction", pred)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            bad = torch.unique(values[(values < 0) | (values >= num_classes)])[:10].tolist()
            raise InputError(f"{name} has classes {bad} outside 0..{num_classes - 1} (ignore index {ignore_index})")
    return torch.bincount(target * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


@dataclass
class Scores:
    """Per-class IoU (``nan`` for a class absent from both prediction and ground truth), their mean over the
    classes that are not ``nan`` (cityscapesScripts / mmseg convention), and pixel accuracy over non-ignored pixels.

    GALD's and CCNet's ``eval.py`` count such a class as IoU 0 instead; on Cityscapes val every class occurs, so
    the two agree there.
    """
    iou: list[float]
    miou: float
    pixel_accuracy: float
    class_names: Sequence[str]

    def table(self) -> str:
        width = max(len(n) for n in self.class_names)
        lines = [f"{'class':<{width}}  IoU (%)", f"{'-' * width}  -------"]
        lines += [f"{name:<{width}}  {'n/a' if math.isnan(v) else f'{100 * v:6.2f}':>7}"
                  for name, v in zip(self.class_names, self.iou)]
        lines += [f"{'-' * width}  -------", f"{'mIoU':<{width}}  {100 * self.miou:7.2f}",
                  f"{'pixel accuracy':<{width}}  {100 * self.pixel_accuracy:7.2f}"]
        return "\n".join(lines)


class ConfusionMatrix:
    """Accumulates :func:`confusion_matrix` over images; :meth:`all_reduce` sums it across processes."""

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX,
                 class_names: Sequence[str] | None = None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = tuple(class_names) if class_names is not None else (
            CLASS_NAMES if num_classes == NUM_CLASSES else tuple(str(i) for i in range(num_classes)))
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index).cpu()

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum the matrices of every process (no-op without an initialised process group)."""
        if dist.is_available() and dist.is_initialized():
            on_gpu = dist.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
            buffer = self.matrix.cuda() if on_gpu else self.matrix.clone()
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            self.matrix = buffer.cpu()
        return self

    def compute(self) -> Scores:
        m = self.matrix.double()
        true_positive = m.diag()
        union = m.sum(0) + m.sum(1) - true_positive
        iou = torch.where(union > 0, true_positive / union.clamp(min=1), torch.full_like(union, float("nan")))
        present = ~iou.isnan()
        miou = iou[present].mean().item() if present.any() else float("nan")
        total = m.sum().item()
        return Scores([float(v) for v in iou], miou, true_positive.sum().item() / total if total else float("nan"),
                      self.class_names)


def init_distributed(device: torch.device | str = "cpu") -> tuple[int, int]:
    """``(rank, world_size)``; under ``torchrun`` (``WORLD_SIZE`` > 1) joins the process group first.

    gloo for CPU, NCCL for CUDA (each process then uses GPU ``LOCAL_RANK``).
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if on_gpu else "gloo")
    return dist.get_rank(), dist.get_world_size()


def evaluate(model: torch.nn.Module, dataset, indices: Sequence[int] | None = None, progress: bool = False,
             **predict_options) -> ConfusionMatrix:
    """The confusion matrix of ``model`` over ``dataset`` items ``(image uint8, trainIds, name)``.

    ``indices`` restricts to a shard (e.g. ``dataset.shard(rank, world_size)``); the result is summed over all
    processes when a process group is initialised. ``predict_options`` go to :func:`cityseg_zoo.inference.predict`
    (e.g. ``protocol``, ``amp_dtype``, ``tile_batch``). ``progress``: a tqdm bar on stderr with images done, elapsed
    time, ETA and images/s.
    """
    from tqdm import tqdm

    from .inference import segment
    indices = list(range(len(dataset))) if indices is None else list(indices)
    cfg = getattr(model, "pretrained_cfg", {})
    num_classes = cfg.get("num_classes") or NUM_CLASSES
    confusion = ConfusionMatrix(num_classes, class_names=cfg.get("classes"))
    # sys.stderr looked up per call: it may be redirected after import
    with tqdm(total=len(indices), desc="eval", unit="img", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        for index in indices:
            image, label, _ = dataset[index]
            if label is None:
                raise InputError("evaluation needs ground-truth labels (this split was read with labels=False)")
            confusion.update(segment(model, image, **predict_options).cpu(), label)
            bar.update(1)
    return confusion.all_reduce()
