"""Whole-image, sliding-window and multi-scale + flip prediction, with each checkpoint's own eval protocol.

``predict(model, x)`` takes the normalised float batch ``[B, 3, H, W]`` the model takes (see
:func:`cityseg_zoo.data.preprocess`) and returns float32 logits ``[B, num_classes, H, W]`` at the input size.
With no options it follows ``model.pretrained_cfg["eval"]`` (the protocol behind the weight's reported mIoU);
an architecture built without weights defaults to whole image, single scale, no flip. Any keyword overrides it.

Two reference styles of sliding-window evaluation are reproduced (``style``):

* ``"gald"`` (default): lxtGH/GALD-DGCNet ``eval.py::predict_sliding``, the same code as CCNet's ``evaluate.py``.
  Tiles of ``crop_size`` every ``stride`` pixels (stride = ceil(2/3 crop): 1/3 overlap), the last tile of a
  row/column moved back to end at the border; a tile smaller than the crop (image smaller than the crop) is
  zero-padded at its bottom/right in normalised space; each tile's logits are upsampled to the tile size with the
  model's ``align_corners``, cropped, summed and divided by the per-pixel tile count. For images at least as large
  as the crop this is exactly mmsegmentation's ``slide_inference``. Flip is applied to the whole (scaled) image
  (CCNet ``predict_multiscale``); logits are averaged over scales and flips.
* ``"encoding"``: PyTorch-Encoding ``MultiEvalModule`` (DANet's ``test.py``). Tiles start at multiples of the stride
  and are not moved back; a tile that runs over the border is padded at its bottom/right with the normalised
  *black* pixel (``-mean / std``); each tile is scored ``exp(f(tile) + flip(f(flip(tile))))`` (``module_inference``),
  the scores are averaged over overlapping tiles, resized back and summed over scales. ``predict`` returns the log
  of the mean score, halved with flip (float64 inside, so large logits do not overflow): its argmax is the
  reference's, and for a model without spatial context it equals the plain logits.

Scales: the batch is resized (bilinear, the model's ``align_corners``) to ``int(side * scale + 0.5)`` (for a
1024x2048 frame the same sizes as DANet's ``base_size`` 2048), predicted, and resized back to the input size.
mmseg's TTA averages softmax probabilities instead; that is not reproduced.

Not reproduced: DecoupleSegNets' ``eval.py`` (GFF-Net) grows the tile to ``crop * scale`` for scales above 1, never
pads a tile, resizes images with PIL bilinear (antialiased when shrinking) and logits back with OpenCV
(``align_corners=False``); the ``"gald"`` style used for it keeps the crop at every scale and resizes with torch.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data.transforms import preprocess
from .errors import InputError
from .ops.resize import resize

MODES = ("whole", "slide")
STYLES = ("gald", "encoding")


def _pair(value, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise InputError(f"{name} must be a positive int or [height, width], got {value}")
    return value


@dataclass(frozen=True)
class EvalProtocol:
    """How to predict one image: ``pretrained_cfg["eval"]`` as a value.

    ``stride`` defaults to ``ceil(2/3 * crop_size)`` (1/3 overlap, GALD/CCNet/DANet) when sliding. ``style``:
    how sliding windows are tiled, padded, flipped and combined: ``"gald"`` (GALD/CCNet, = mmseg for images
    larger than the crop) or ``"encoding"`` (PyTorch-Encoding/DANet); see the module docstring.
    """
    mode: str = "whole"
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    style: str = "gald"

    def __post_init__(self):
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.style not in STYLES:
            raise InputError(f"style must be one of {STYLES}, got {self.style!r}")
        object.__setattr__(self, "crop_size", _pair(self.crop_size, "crop_size"))
        object.__setattr__(self, "stride", _pair(self.stride, "stride"))
        scales = tuple(float(s) for s in self.scales)
        if not scales or min(scales) <= 0:
            raise InputError(f"scales must be positive numbers, got {list(self.scales)}")
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "flip", bool(self.flip))
        if self.mode == "slide":
            if self.crop_size is None:
                raise InputError("sliding-window prediction needs a crop size (e.g. --crop 832 or crop_size=832)")
            if self.stride is None:
                object.__setattr__(self, "stride", tuple(math.ceil(c * 2 / 3) for c in self.crop_size))

    def __str__(self) -> str:
        text = "whole image" if self.mode == "whole" else (
            f"sliding window {self.crop_size[0]}x{self.crop_size[1]}, stride {self.stride[0]}x{self.stride[1]}"
            + (f" ({self.style} style)" if self.style != "gald" else ""))
        return f"{text}, scales {'/'.join(f'{s:g}' for s in self.scales)}, {'flip' if self.flip else 'no flip'}"

    @classmethod
    def from_cfg(cls, pretrained_cfg: dict) -> "EvalProtocol":
        """The protocol of a weight (``pretrained_cfg["eval"]``); whole image, single scale, no flip without one."""
        cfg = pretrained_cfg.get("eval") or {}
        return cls(mode=cfg.get("mode") or "whole", crop_size=cfg.get("crop_size"), stride=cfg.get("stride"),
                   scales=tuple(cfg.get("scales") or (1.0,)), flip=bool(cfg.get("flip", False)),
                   style=cfg.get("style") or "gald")

    def override(self, **changes) -> "EvalProtocol":
        """A copy with every change that is not ``None`` applied.

        A crop size alone switches to sliding windows; switching to whole drops crop and stride.
        """
        changes = {k: v for k, v in changes.items() if v is not None}
        if "crop_size" in changes and "mode" not in changes:
            changes["mode"] = "slide"
        if changes.get("mode") == "whole":
            changes.setdefault("crop_size", None)
            changes.setdefault("stride", None)
        elif "crop_size" in changes and "stride" not in changes:
            changes["stride"] = None  # re-derive 1/3 overlap for the new crop
        return replace(self, **changes)


def slide_windows(height: int, width: int, crop_size: tuple[int, int], stride: tuple[int, int],
                  style: str = "gald") -> Iterator[tuple[int, int, int, int]]:
    """``(y1, y2, x1, x2)`` of every tile, row by row.

    ``ceil((side - crop) / stride) + 1`` tiles per axis (at least one), starting at multiples of the stride.
    ``"gald"``: the last tile is moved back to end at the border (GALD ``predict_sliding``, mmseg
    ``slide_inference``); ``"encoding"``: it is cut at the border, to be padded (PyTorch-Encoding).
    """
    (crop_h, crop_w), (stride_h, stride_w) = crop_size, stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    for row in range(rows):
        for col in range(cols):
            y2, x2 = min(row * stride_h + crop_h, height), min(col * stride_w + crop_w, width)
            if style == "gald":
                yield max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2
            else:
                yield row * stride_h, y2, col * stride_w, x2


def _black_pixel(model: nn.Module) -> torch.Tensor | None:
    """The normalised value of a 0-valued pixel, ``-mean / std`` per channel (PyTorch-Encoding ``pad_image``)."""
    norm = getattr(model, "pretrained_cfg", {}).get("input")
    if norm is None:
        return None
    return -torch.tensor(norm["mean"], dtype=torch.float64) / torch.tensor(norm["std"], dtype=torch.float64)


def _pad_tile(tile: torch.Tensor, crop_size: tuple[int, int], value: torch.Tensor | None) -> torch.Tensor:
    pad_h, pad_w = crop_size[0] - tile.shape[-2], crop_size[1] - tile.shape[-1]
    if not pad_h and not pad_w:
        return tile
    padded = F.pad(tile, (0, pad_w, 0, pad_h))  # zeros: the mean pixel once normalised (GALD pad_image)
    if value is not None:  # one value per channel
        fill = value.to(device=tile.device, dtype=tile.dtype).view(1, -1, 1, 1)
        padded[..., tile.shape[-2]:, :] = fill
        padded[..., :, tile.shape[-1]:] = fill
    return padded


def predict_slide(model: nn.Module, x: torch.Tensor, crop_size: tuple[int, int], stride: tuple[int, int],
                  style: str = "gald", flip: bool = False) -> torch.Tensor:
    """Sliding-window scores ``[B, C, H, W]``, overlapping tiles averaged per pixel (see the module docstring).

    ``"gald"``: mean tile logits (float32); ``flip`` must be applied by the caller to the whole image.
    ``"encoding"``: mean of ``exp(f(tile) [+ flip(f(flip(tile)))])`` (float64), the reference's scores.
    """
    height, width = x.shape[-2:]
    pad_value = _black_pixel(model) if style == "encoding" else None
    total = count = None
    for y1, y2, x1, x2 in slide_windows(height, width, crop_size, stride, style):
        tile = _pad_tile(x[..., y1:y2, x1:x2], crop_size, pad_value)
        score = model(tile).float()
        if style == "encoding":
            if flip:
                score = score + model(tile.flip(-1)).float().flip(-1)
            score = score.double().exp()
        score = score[..., : y2 - y1, : x2 - x1]
        if total is None:
            total = score.new_zeros((x.shape[0], score.shape[1], height, width))
            count = score.new_zeros((1, 1, height, width))
        total[..., y1:y2, x1:x2] += score
        count[..., y1:y2, x1:x2] += 1
    return total / count


def _min_size_message(model: nn.Module, side_h: int, side_w: int, what: str) -> str | None:
    minimum = getattr(model, "min_input_size", 1)
    if min(side_h, side_w) >= minimum:
        return None
    cfg = getattr(model, "pretrained_cfg", {})
    arch = cfg.get("architecture", type(model).__name__)
    message = f"{what} {side_h}x{side_w} is smaller than {arch}'s minimum side of {minimum} px"
    spec = getattr(model, "arch_spec", None)   # the builder's docstring says why (GALD: "the 1/8 map must be ...")
    paragraphs = [" ".join(p.split()) for p in (spec.doc if spec is not None else "").split("\n\n")[1:]]
    reasons = [s.rstrip(".") for p in paragraphs for s in p.split(". ") if " px" in s]
    if reasons:
        message += ": " + "; ".join(reasons)
    return message + "; upscale the image (a larger scale) or slide a crop of at least that size"


def _check_batch(model: nn.Module, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise InputError(f"expected a normalised float tensor [B, 3, H, W], got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"expected a floating-point tensor, got dtype {x.dtype}; turn uint8 images into model "
                         "input with cityseg_zoo.data.preprocess(images, model.pretrained_cfg)")
    if x.dim() != 4 or x.shape[1] != 3:
        raise InputError(f"expected a batch [B, 3, H, W], got shape {tuple(x.shape)}")


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, mode: str | None = None,
            crop_size: int | Sequence[int] | None = None, stride: int | Sequence[int] | None = None,
            scales: Sequence[float] | None = None, flip: bool | None = None, style: str | None = None,
            protocol: EvalProtocol | None = None, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Logits ``[B, num_classes, H, W]`` (float32, on the model's device) of a normalised batch ``x``.

    Args:
        model: a zoo model (or any module mapping ``[B, 3, h, w]`` to logits at ``h, w`` in eval mode).
        x: normalised float tensor ``[B, 3, H, W]``, any H, W; moved to the model's device.
        mode, crop_size, stride, scales, flip, style: override the protocol; ``None`` keeps it.
        protocol: the base protocol; defaults to ``EvalProtocol.from_cfg(model.pretrained_cfg)``.
        amp_dtype: ``torch.bfloat16`` or ``torch.float16`` to run the network under autocast; logits are
            accumulated in float32 either way.
    """
    _check_batch(model, x)
    base = protocol or EvalProtocol.from_cfg(getattr(model, "pretrained_cfg", {}))
    proto = base.override(mode=mode, crop_size=crop_size, stride=stride,
                          scales=tuple(scales) if scales is not None else None, flip=flip, style=style)
    align_corners = getattr(model, "pretrained_cfg", {}).get("align_corners", getattr(model, "align_corners", False))
    device = _model_device(model)
    x = x.to(device)
    height, width = x.shape[-2:]
    if proto.mode == "slide":  # every tile is padded to the crop: the crop is what the network sees
        problem = _min_size_message(model, *proto.crop_size, "crop size")
        if problem:
            raise InputError(problem)
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    encoding = proto.mode == "slide" and proto.style == "encoding"
    flips = (False, True) if proto.flip and not encoding else (False,)  # Encoding flips inside each tile
    total = None
    with _eval_mode(model), autocast:
        for scale in proto.scales:
            size = (int(height * scale + 0.5), int(width * scale + 0.5))
            if proto.mode == "whole":
                what = "image" if scale == 1 else f"image {height}x{width} at scale {scale:g} ->"
                problem = _min_size_message(model, *size, what)
                if problem:
                    raise InputError(problem)
            scaled = resize(x, size, align_corners) if scale != 1 else x
            for flipped in flips:
                inp = scaled.flip(-1) if flipped else scaled
                if proto.mode == "slide":
                    out = predict_slide(model, inp, proto.crop_size, proto.stride, proto.style, proto.flip)
                else:
                    out = model(inp).float()
                if flipped:
                    out = out.flip(-1)
                out = resize(out, (height, width), align_corners)
                total = out if total is None else total + out
    mean = total / (len(proto.scales) * len(flips))
    if encoding:  # back to a logit scale: log of the score, per forward pass (argmax unchanged)
        return (mean.log() / (2 if proto.flip else 1)).float()
    return mean


def segment(model: nn.Module, images: torch.Tensor, **options) -> torch.Tensor:
    """trainIds (int64) of RGB ``uint8`` images ``[B, 3, H, W]`` -> ``[B, H, W]``, or ``[3, H, W]`` -> ``[H, W]``.

    Normalises as ``model.pretrained_cfg["input"]`` says, then :func:`predict` with ``options``.
    """
    single = isinstance(images, torch.Tensor) and images.dim() == 3
    if isinstance(images, torch.Tensor):
        images = images.to(_model_device(model))  # move uint8, a quarter of the float bytes
    x = preprocess(images, model.pretrained_cfg)
    labels = predict(model, x, **options).argmax(1)
    return labels[0] if single else labels
