"""Multi-process training plumbing: ``torchrun`` environment, and SyncBatchNorm conversion that keeps the
InPlaceABN semantics of the CCNet/OCNet-family norms.

``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` replaces every ``BatchNorm`` subclass with a plain
``SyncBatchNorm``, which would silently drop :class:`~cityseg_zoo.ops.norm.ABN`'s ``|weight| + eps`` scale and
its fused LeakyReLU. :func:`convert_sync_batchnorm` turns ABN into :class:`SyncABN` instead and plain norms into
``SyncBatchNorm``. PyTorch synchronises batch statistics on GPUs only; on CPU (gloo) each process keeps its own
statistics, and the conversion is skipped with a note.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..ops.norm import ABN


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistributedContext:
    """Join the process group ``torchrun`` describes (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*``).

    Without those variables this is a single process. The backend is NCCL on CUDA, gloo on CPU.
    ``device``: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available); each rank takes ``cuda:LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    return DistributedContext(rank, local_rank, world_size, dev)


class SyncABN(ABN):
    """:class:`ABN` whose training-mode batch statistics are computed over the whole process group (GPU)."""

    process_group = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size(self.process_group) if dist.is_available() and dist.is_initialized() else 1
        if not self.training or world == 1 or x.device.type == "cpu":
            return super().forward(x)
        from torch.nn.modules._functions import SyncBatchNorm as sync_batch_norm  # what nn.SyncBatchNorm calls
        y = sync_batch_norm.apply(x, self.weight.abs() + self.eps, self.bias, self.running_mean, self.running_var,
                                  self.eps, self.momentum, self.process_group or dist.group.WORLD, world)
        return F.leaky_relu(y, self.slope, inplace=True) if self.activation == "leaky_relu" else y


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Return ``module`` with ABN -> :class:`SyncABN` and other BatchNorms -> ``nn.SyncBatchNorm``
    (parameters, buffers and train/eval mode kept)."""
    if isinstance(module, ABN) and not isinstance(module, SyncABN):
        new = SyncABN(module.num_features, eps=module.eps, momentum=module.momentum,
                      activation=module.activation, slope=module.slope)
        new = new.to(device=module.weight.device, dtype=module.weight.dtype)
        new.load_state_dict(module.state_dict())
        new.weight.requires_grad_(module.weight.requires_grad)
        new.bias.requires_grad_(module.bias.requires_grad)
        new.process_group = process_group
        return new.train(module.training)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, ABN):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    for name, child in module.named_children():
        new_child = convert_sync_batchnorm(child, process_group)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
