"""The inference switch: conv+BN folding, channels_last, optional ``torch.compile`` and bf16/fp16 weights.

``optimize_for_inference(model)`` (or ``model.optimize_for_inference()``) rewrites an eval-mode zoo model in
place for speed; its logits stay those of the original within float32 rounding (see ``tests/test_optimize.py``).
The result is for inference only: folded norms no longer exist, so it cannot be trained or fine-tuned.

Folding ``conv -> norm`` into the conv: with the norm's scale ``s = γ / sqrt(var + eps)``::

    norm(conv(x)) = s · (W x + b − mean) + β = (s·W) x + (s · (b − mean) + β)

``γ`` is ``weight`` for ``nn.BatchNorm1d/2d`` and ``|weight| + eps`` for the zoo's ``ABN`` (InPlaceABN semantics).
The norm is replaced by what remains of it: nothing (``nn.Identity``), or the ``ABN``'s fused LeakyReLU.
Only pairs where the norm reads the conv's output directly are folded: consecutive children of an
``nn.Sequential`` and the ``(conv, norm)`` attribute pairs a module declares as ``fold_pairs`` (timm's blocks:
``backbones.resnet.BLOCK_FOLD_PAIRS``).

After folding, every module that defines ``fuse_for_inference()`` is asked to merge its own consecutive linear
maps or take an inference-only path (SegFormer's decode head composes each stage's Linear with its slice of the
fuse conv; its transformer blocks accumulate their residual Linears in place).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from .ops.dilated_conv import use_row_gemms
from .ops.norm import ABN

_CONVS = (nn.Conv1d, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)   # ABN is a BatchNorm2d


def _attribute_pairs(module: nn.Module) -> tuple[tuple[str, str], ...]:
    """``(conv, norm)`` attribute names of ``module`` whose forward is ``norm(conv(x))`` with nothing between: what
    the module declares (``fold_pairs``, a class attribute of the zoo's ops and backbones), or timm's blocks'."""
    from .backbones.resnet import BLOCK_FOLD_PAIRS
    return getattr(type(module), "fold_pairs", None) or BLOCK_FOLD_PAIRS.get(type(module), ())


def norm_scale_shift(norm: nn.BatchNorm2d | nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode norm as ``y = scale · x + shift`` per channel (``ABN``: scale from ``|weight| + eps``)."""
    gamma = norm.weight if norm.affine else torch.ones_like(norm.running_var)
    if isinstance(norm, ABN):
        gamma = gamma.abs() + norm.eps
    beta = norm.bias if norm.affine else torch.zeros_like(norm.running_var)
    scale = gamma / torch.sqrt(norm.running_var + norm.eps)
    return scale, beta - norm.running_mean * scale


@torch.no_grad()
def fold_conv_norm(conv: nn.Conv1d | nn.Conv2d, norm: nn.BatchNorm2d | nn.BatchNorm1d) -> nn.Module:
    """Fold the eval-mode ``norm`` into ``conv`` (in place) and return the module that replaces ``norm``."""
    scale, shift = norm_scale_shift(norm)
    conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.dim() - 1))))
    bias = shift if conv.bias is None else conv.bias * scale + shift
    conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    if isinstance(norm, ABN) and norm.activation == "leaky_relu":
        return nn.LeakyReLU(norm.slope, inplace=True)
    return nn.Identity()


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    return (isinstance(conv, _CONVS) and isinstance(norm, _NORMS) and norm.running_mean is not None
            and norm.num_features == conv.out_channels and not norm.training)


def _last_conv(module: nn.Module) -> nn.Module:
    return module[-1] if isinstance(module, nn.Sequential) and len(module) else module


def _pairs(model: nn.Module) -> Iterator[tuple[nn.Module, nn.Module, nn.Module, str]]:
    """``(conv, norm, parent, norm_name)`` for every foldable pair, found before anything is changed."""
    for parent in model.modules():
        if isinstance(parent, nn.Sequential):
            children = list(parent.named_children())
            for (_, conv), (norm_name, norm) in zip(children, children[1:]):
                if _foldable(conv, norm):
                    yield conv, norm, parent, norm_name
        for conv_name, norm_name in _attribute_pairs(parent):
            conv, norm = _last_conv(getattr(parent, conv_name)), getattr(parent, norm_name)
            if _foldable(conv, norm):
                yield conv, norm, parent, norm_name


def fold_batchnorms(model: nn.Module) -> int:
    """Fold every ``conv -> BatchNorm/ABN`` pair of an eval-mode ``model`` in place; returns how many."""
    pairs = list(_pairs(model))
    for conv, norm, parent, norm_name in pairs:
        setattr(parent, norm_name, fold_conv_norm(conv, norm))
    return len(pairs)


class _RecordingFeatures(list):
    """The backbone's output list, noting which entries the head reads."""

    def __init__(self, items):
        super().__init__(items)
        self.read: set[int] = set()

    def __getitem__(self, index):
        positions = range(len(self))[index]
        self.read.update(positions if isinstance(index, slice) else [positions])
        return super().__getitem__(index)

    def __iter__(self):
        self.read.update(range(len(self)))
        return super().__iter__()


def used_features(model: nn.Module) -> set[int]:
    """Indices of the backbone outputs that ``model.head`` reads in eval mode, found by one small probe forward."""
    recorder: list[_RecordingFeatures] = []

    def record(module, args):
        recorder.append(_RecordingFeatures(args[0]))
        return (recorder[-1], *args[1:])

    handle = model.head.register_forward_pre_hook(record)
    side = max(getattr(model, "min_input_size", 1), 64)
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, side, side, device=next(model.parameters()).device))
    finally:
        handle.remove()
    return recorder[0].read


def drop_unused_features(model: nn.Module) -> set[int] | None:
    """Let a ``DilatedResNet`` backbone free, as soon as the next stage has read them, the stage outputs that the
    head does not use in eval mode (DANet keeps only layer4: at 1024x2048 that frees 320 MiB of layer1-3).
    Returns the kept indices, or ``None`` for other backbones (left as they are)."""
    from .backbones.resnet import DilatedResNet
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, DilatedResNet) or not hasattr(model, "head"):
        return None
    backbone.kept_features = {i % 4 for i in used_features(model)}
    return backbone.kept_features


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return args


def optimize_for_inference(model: nn.Module, *, fold_bn: bool = True, channels_last: bool = True,
                           compile: bool = False, dtype: torch.dtype | None = None) -> nn.Module:
    """Make an eval-mode zoo model faster in place and return it (inference only from then on).

    Args:
        fold_bn: fold every ``conv -> BatchNorm/ABN`` pair, then run the modules' ``fuse_for_inference`` (exact
            up to float rounding).
        channels_last: keep 4-D weights and activations in NHWC, the layout oneDNN and cuDNN convs prefer.
        compile: ``torch.compile`` the backbone and the head (Inductor, with weight freezing on CPU). The first
            call compiles (minutes on a small CPU); later calls with the same input size are fast.
        dtype: ``torch.bfloat16`` / ``torch.float16`` convert every weight and buffer to that dtype (after
            folding, so the folded weights are rounded once) and run the backbone and head on the input cast to
            it; ``None`` keeps float32. The conversion beats ``torch.autocast``, which re-casts every weight on
            every call (a quarter of the bf16 forward's time in the profile): FCN-R101 at 512x1024 on one thread
            of an AMX CPU took 2.1-2.6 s converted against 2.6-2.9 s under autocast of the float32 switch, with
            the same logits (two interleaved rounds of 3 runs each; the float32 switch: 9.5-10.2 s).

    What stays in float32 with a low ``dtype`` (everything else, norms included, runs in ``dtype``):

    * the attention energies and their softmax, computed from float32 copies of the queries and keys, in every
      attention op: DANet's position and channel attention and their mmseg twins (``ops.attention``, also
      used by OCNet's object context ``ops.object_context``), criss-cross attention (``ops.criss_cross``, both
      paths), DGCNet's coordinate-space GCN affinity ``softmax(Q Vᵀ)`` (``ops.gcn.SpatialGCN``), SegFormer's
      efficient attention reference (``ops.efficient_attention``). The attention weights are then cast to the
      values' dtype for the weighted sum. The fused SDPA kernels (SegFormer's efficient attention on every
      device; DANet/OCNet position attention on CUDA, and in bf16/fp16 on CPU) take the low-precision q, k, v
      and accumulate the scores and the softmax in float32 internally. See :mod:`cityseg_zoo.ops.precision`.
    * the final logits: the head's low-resolution logits are cast to the input's dtype (float32) before the
      final bilinear upsampling to the input size, so ``model(x)`` returns float32 logits for a float32 input
      (``forward_logits_lowres`` returns float32 too).

    GALD's aggregation and the GCN feature-space projections have no softmax and run in ``dtype``; the Triton
    kernels (CUDA) load any dtype, compute in float32 and store in the inputs' dtype. On CPU the wide dilated
    3x3 convs (ASPP's 2048 -> 256 at dilations 12/24/36) run as row GEMMs with float32 accumulation
    (:mod:`cityseg_zoo.ops.dilated_conv`), where oneDNN's bf16 kernel is 4-12x slower.
    """
    if dtype not in (None, torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be None, torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}")
    if "inference_optimized" in getattr(model, "record", {}):
        raise ValueError("this model was already optimised for inference; optimise a fresh copy instead")
    model.eval()
    model.requires_grad_(False)   # no autograd graph, so the ops' in-place fast paths apply
    folded = fold_batchnorms(model) if fold_bn else 0
    fused: dict[str, int] = {}   # class name -> how many modules took their inference path
    if fold_bn:
        for module in model.modules():
            if callable(getattr(module, "fuse_for_inference", None)):
                module.fuse_for_inference()
                fused[type(module).__name__] = fused.get(type(module).__name__, 0) + 1
    kept = drop_unused_features(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        model.register_forward_pre_hook(_to_channels_last)
    row_gemm_convs = 0
    if dtype is not None and dtype != torch.float32:
        model.to(dtype)                    # weights and buffers: no per-call casts
        model.inference_dtype = dtype      # read by Segmentor.forward: the input is cast to it
        row_gemm_convs = use_row_gemms(model)   # ASPP's wide dilated convs, where oneDNN's bf16 kernel is slow
    if compile:
        import torch._inductor.config as inductor_config
        inductor_config.freezing = True    # constant-fold the (now frozen) weights into the compiled graph
        for name in ("backbone", "head"):
            getattr(model, name).compile()
    model.record = {**getattr(model, "record", {}),
                    "inference_optimized": {"fold_bn": fold_bn, "folded_norms": folded, "fused_modules": fused,
                                            "kept_features": sorted(kept) if kept is not None else None,
                                            "channels_last": channels_last,
                                            "compile": compile, "dtype": str(dtype) if dtype else None,
                                            "row_gemm_convs": row_gemm_convs}}
    return model
