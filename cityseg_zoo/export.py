"""Exporting a zoo model: ``torch.export`` programs, ONNX files with an onnxruntime parity check, and a graph-break
count for ``torch.compile``.

All three trace the eval-mode forward (normalised ``[B, 3, H, W]`` in, logits at input size out) with
``torch.export`` (non-strict), which is also what ``torch.onnx.export(dynamo=True)`` runs.

Dynamic height/width: H and W are exported as ``8 * k`` (the heads work at 1/8 and the ceil-mode stem pool
makes odd sizes a different graph), from the model's minimum input size up to 8192 px. Where the traced code
fixes a size (it branches on a feature-map size, or turns a size into a Python ``int``), a dynamic export is
impossible and the error names the guard that pinned it; ``dynamic_hw=None`` then falls back to the example size
with a warning that says why. An ONNX file exported at a fixed size accepts that size only.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import CitysegZooError

MAX_SIDE = 8192
SIZE_MULTIPLE = 8


class ExportError(CitysegZooError, RuntimeError):
    """A model that cannot be exported as asked; the message says why."""


@dataclass
class OnnxExport:
    """What :func:`to_onnx` wrote and checked."""

    path: Path
    input_shape: tuple[int, ...]
    dynamic_hw: bool
    static_reason: str = ""                 # why H/W are fixed, when they are
    max_rel_error: float | None = None      # onnxruntime vs PyTorch, max |a - b| / max |b|
    checked_shapes: list[tuple[int, ...]] = field(default_factory=list)
    seconds: float = 0.0


def _architecture(model: nn.Module) -> str:
    return getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)


def example_input(model: nn.Module, height: int, width: int, batch_size: int = 1, seed: int = 0) -> torch.Tensor:
    """A reproducible normalised-looking input; checks the model's minimum size."""
    min_side = getattr(model, "min_input_size", 1)
    if min(height, width) < min_side:
        raise ExportError(f"{_architecture(model)} needs inputs of at least {min_side} px; got {height}x{width}")
    device = next(model.parameters()).device
    return torch.randn(batch_size, 3, height, width, generator=torch.Generator().manual_seed(seed)).to(device)


def _dynamic_shapes(model: nn.Module) -> dict:
    from torch.export import Dim
    low = max(1, math.ceil(getattr(model, "min_input_size", 1) / SIZE_MULTIPLE))
    height = Dim("height_div8", min=low, max=MAX_SIDE // SIZE_MULTIPLE)
    width = Dim("width_div8", min=low, max=MAX_SIDE // SIZE_MULTIPLE)
    return {"x": {2: SIZE_MULTIPLE * height, 3: SIZE_MULTIPLE * width}}


def _why_static(err: Exception) -> str:
    text = str(err)
    lines = [line.strip(" -") for line in text.splitlines() if line.strip().startswith(("-", "Not all", "You marked"))]
    lines = [line.split(" If you're using")[0] for line in lines]   # drop torch's advice on mark_dynamic
    return "; ".join(lines[:3]) or text.splitlines()[0]


def _probe_shape(shape) -> tuple[int, ...]:
    """A second input size for dynamic exports: non-square, and far enough from the example that the coarsest
    pooled maps (GALD's global aggregation) change size too, while staying a multiple of 8."""
    *lead, h, w = shape
    return (*lead, h + 16 * SIZE_MULTIPLE, w + 17 * SIZE_MULTIPLE)


def export_program(model: nn.Module, example: torch.Tensor, dynamic_hw: bool = True):
    """``torch.export.export`` of the eval-mode forward; with ``dynamic_hw``, H and W are symbolic (``8 * k``).

    Raises :class:`ExportError` saying which guard fixed a size when a dynamic export is impossible.
    """
    was_training = model.training
    model.eval()
    try:
        program = torch.export.export(model, (example,),
                                      dynamic_shapes=_dynamic_shapes(model) if dynamic_hw else None, strict=False)
        if dynamic_hw:   # a branch taken on the example's sizes shows up as a guard that fails at another size
            probe = torch.zeros(_probe_shape(example.shape), dtype=example.dtype, device=example.device)
            with torch.no_grad():
                program.module()(probe)
        return program
    except ExportError:
        raise                       # a model's own export error says what stops it
    except Exception as err:
        if dynamic_hw and _is_constraint_error(err):
            raise ExportError(f"{_architecture(model)} cannot be exported with dynamic height/width: the traced code "
                              f"fixes a size ({_why_static(err)}). Export at a fixed size "
                              f"(dynamic_hw=False), or trace a larger example size.") from err
        raise ExportError(f"torch.export failed for {_architecture(model)}: {type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}") from err
    finally:
        model.train(was_training)


def _is_constraint_error(err: BaseException) -> bool:
    text = f"{type(err).__name__}: {err}"
    return any(s in text for s in ("Constraints violated", "specialized it to be a constant", "Guard failed",
                                   "satisfy the generated guard"))


def _run_onnxruntime(path: Path, inputs: list[torch.Tensor]) -> list:
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ExportError("the parity check needs onnxruntime: pip install 'cityseg-zoo[export]'") from err
    options = ort.SessionOptions()
    options.log_severity_level = 3   # errors only: its constant-folding notes are not problems
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [session.run(None, {name: x.detach().cpu().numpy()})[0] for x in inputs]


def onnx_parity(model: nn.Module, path: str | os.PathLike, inputs: list[torch.Tensor]) -> float:
    """Largest relative error ``max |ort - torch| / max |torch|`` of the ONNX file over ``inputs``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = [model(x).float().cpu() for x in inputs]
    finally:
        model.train(was_training)
    worst = 0.0
    for got, want in zip(_run_onnxruntime(Path(path), inputs), expected):
        got = torch.from_numpy(got)
        if got.shape != want.shape:
            raise ExportError(f"onnxruntime returned {tuple(got.shape)}, PyTorch {tuple(want.shape)}")
        worst = max(worst, ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item())
    return worst


def to_onnx(model: nn.Module, path: str | os.PathLike, *, height: int = 512, width: int = 1024,
            batch_size: int = 1, dynamic_hw: bool | None = None, opset_version: int | None = None,
            check: bool = True, rtol: float = 1e-4) -> OnnxExport:
    """Export the eval-mode forward of ``model`` to ONNX (input ``pixel_values``, output ``logits``).

    Args:
        height, width: the example input size (and the only accepted size of a fixed-size export).
        dynamic_hw: ``True``: H and W symbolic (multiples of 8) or :class:`ExportError`; ``False``: fixed;
            ``None``: dynamic when the architecture allows it, else fixed with a warning saying why.
        check: run the file under onnxruntime (CPU) and raise :class:`ExportError` when its logits differ from
            PyTorch's by more than ``rtol`` (relative to the largest logit); a dynamic export is also checked at a
            second size.
    Weights are stored inside the ``.onnx`` file (the zoo's models are far below protobuf's 2 GB limit).
    """
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs onnx and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ExportError(f"ONNX export needs the 'export' extra: pip install 'cityseg-zoo[export]' ({err})") from err
    started = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = example_input(model, height, width, batch_size)
    static_reason = ""
    if dynamic_hw is False:
        program = export_program(model, example, dynamic_hw=False)
    else:
        try:
            program = export_program(model, example, dynamic_hw=True)
        except ExportError as err:
            if dynamic_hw is True:
                raise
            static_reason = str(err)
            warnings.warn(f"{static_reason} Exporting at the fixed size {height}x{width}.", stacklevel=2)
            program = export_program(model, example, dynamic_hw=False)
    dynamic = dynamic_hw is not False and not static_reason
    try:
        onnx_program = torch.onnx.export(program, (example,), input_names=["pixel_values"], output_names=["logits"],
                                         opset_version=opset_version, dynamo=True, verbose=False)
        onnx_program.save(str(path), external_data=False)
    except Exception as err:
        raise ExportError(f"ONNX conversion of {_architecture(model)} failed: {type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}") from err
    result = OnnxExport(path, tuple(example.shape), dynamic, static_reason)
    if check:
        inputs = [example]
        if dynamic:   # a second size proves the graph is not pinned to the example
            inputs.append(example_input(model, *_probe_shape(example.shape)[-2:], batch_size, seed=1))
        result.max_rel_error = onnx_parity(model, path, inputs)
        result.checked_shapes = [tuple(x.shape) for x in inputs]
        if not result.max_rel_error <= rtol:
            raise ExportError(f"onnxruntime logits of {_architecture(model)} differ from PyTorch by "
                              f"{result.max_rel_error:.3g} (relative), more than {rtol:g}")
    result.seconds = time.perf_counter() - started
    return result


def graph_breaks(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Reasons ``torch.compile`` (TorchDynamo) would split the eval forward into several graphs; ``[]`` if none.

    Traces only (``torch._dynamo.explain``); nothing is compiled.
    """
    import torch._dynamo
    was_training = model.training
    model.eval()
    try:
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(model)(example)
    finally:
        model.train(was_training)
    return [str(getattr(b, "reason", b)) for b in explanation.break_reasons]
