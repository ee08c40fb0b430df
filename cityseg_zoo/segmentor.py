"""Backbone + decode head + optional auxiliary head, and the forward contract every zoo model follows.

Forward contract
----------------
``model(x)`` takes a float tensor ``[B, 3, H, W]``, normalised as ``model.pretrained_cfg["input"]`` says.

* eval mode: returns the main logits ``[B, num_classes, H, W]`` (bilinear upsampling of the head's output with
  the reference's ``align_corners``).
* train mode: returns a ``dict[str, Tensor]``, every tensor ``[B, num_classes, H, W]``:
  ``"out"`` the main logits, plus one entry per auxiliary prediction: ``"aux"`` for the layer3 (dsn) head,
  ``"pam"`` / ``"cam"`` for DANet's single-branch classifiers. The loss weight of each is the recipe's
  (models.md): 0.4 for ``"aux"``, 1.0 for ``"pam"``/``"cam"``.

``model.forward_logits_lowres(x)`` returns the main logits at the head's own resolution (1/8 for most models)
with no upsampling: the tensor the reference code returns, for exact comparisons.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

import torch
from torch import nn

from .errors import InputError
from .ops.norm import conv_bn_act
from .ops.resize import resize
from .specs import ArchSpec, WeightSpec, default_classes, pretrained_cfg


class AuxHead(nn.Sequential):
    """The layer3 "dsn" head: conv3x3 (bias) -> norm [-> act] -> Dropout2d -> conv1x1.

    ``act``: ``"relu"`` (GALD, PSPNet: keys 0, 1, 4), ``"none"`` (DGCNet: keys 0, 1, 3),
    ``"abn"`` (InPlaceABN + LeakyReLU, CCNet/OCNet/DeepLabv3: keys 0, 1, 3).
    """

    def __init__(self, in_ch: int, mid_ch: int, num_classes: int, act: str = "relu", dropout: float = 0.1):
        layers = list(conv_bn_act(in_ch, mid_ch, 3, bias=True, act=act))
        layers += [nn.Dropout2d(dropout), nn.Conv2d(mid_ch, num_classes, 1)]
        super().__init__(*layers)


class Segmentor(nn.Module):
    """A semantic segmentation network: ``head(backbone(x))`` upsampled to the input size.

    Args:
        backbone: module returning a list of feature maps.
        head: module taking that list; returns main logits (a tensor), or in train mode optionally a dict
            with ``"out"`` and named auxiliary logits.
        aux_head: optional head on ``features[aux_index]``, used in train mode only.

    The architecture's facts (``align_corners`` of the final upsampling, the smallest input side) are read from
    ``model.arch_spec``, the :class:`~cityseg_zoo.specs.ArchSpec` that ``register_model`` attaches; a Segmentor
    built by hand without one uses the spec defaults (``align_corners=True``, no minimum size).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, aux_head: nn.Module | None = None,
                 aux_index: int = 2):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.aux_index = aux_index
        self.arch_spec: ArchSpec | None = None          # set by registry.register_model
        self.weight_spec: WeightSpec | None = None      # the published weights this model's facts come from
        self.class_names: tuple[str, ...] | None = None  # None: the defaults for the class count
        self.palette: tuple[tuple[int, int, int], ...] | None = None
        self.model_kwargs: dict = {}                    # builder arguments, to rebuild the same model
        self.record: dict = {}                          # what happened to this instance (checkpoint, reinit...)
        self.inference_dtype: torch.dtype | None = None   # dtype of converted weights (optimize_for_inference)

    @property
    def align_corners(self) -> bool:
        return self.arch_spec.align_corners if self.arch_spec is not None else True

    @property
    def min_input_size(self) -> int:
        return self.arch_spec.min_input_size if self.arch_spec is not None else 1

    @property
    def num_classes(self) -> int:
        for name in (self.arch_spec.classifiers if self.arch_spec is not None else ()):
            module = self.get_submodule(name)
            outputs = getattr(module, "out_channels", None) or getattr(module, "out_features")
            return outputs - self.arch_spec.classifier_extra_outputs   # Mask2Former: K + 1 ("no object")
        raise AttributeError("a Segmentor without an ArchSpec does not know its classifier")

    @property
    def pretrained_cfg(self) -> Mapping:
        """Read-only view of the model's facts (:func:`cityseg_zoo.specs.pretrained_cfg`)."""
        if self.arch_spec is None:
            return MappingProxyType({})
        n = self.num_classes
        names, palette = (self.class_names, self.palette) if self.class_names is not None else default_classes(n)
        return pretrained_cfg(self.arch_spec, self.weight_spec, num_classes=n, classes=names, palette=palette,
                              model_kwargs=self.model_kwargs, record=self.record)

    def set_classes(self, names, palette=None) -> None:
        """Name the model's classes (a list as long as its class count) and optionally give their colours."""
        names = tuple(str(n) for n in names)
        if len(names) != self.num_classes:
            raise InputError(f"{len(names)} class names for a model with {self.num_classes} classes")
        if palette is not None and len(palette) != len(names):
            raise InputError(f"{len(palette)} palette colours for {len(names)} classes")
        self.class_names = names
        self.palette = tuple(tuple(int(v) for v in c) for c in palette) if palette is not None else None

    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"expected a torch.Tensor [B, 3, H, W], got {type(x).__name__}")
        if not x.is_floating_point():
            raise InputError(f"expected a floating-point tensor, got dtype {x.dtype}; convert with x.float() and "
                             "normalise it as model.pretrained_cfg['input'] says")
        if x.dim() != 4:
            raise InputError(f"expected a 4-D tensor [B, 3, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != 3:
            raise InputError(f"expected 3 input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        h, w = x.shape[-2:]
        if min(h, w) < self.min_input_size:
            raise InputError(f"input {h}x{w} is smaller than this model's minimum side of {self.min_input_size} px")

    def mark_finetuned(self, started_from: str | None) -> None:
        """Record that the weights were trained further (from the weight or file ``started_from``): the published
        weight's name and metrics then no longer describe the model (``pretrained_cfg["finetuned_from"]``)."""
        self.record = {**self.record, "finetuned_from": started_from or "random initialisation"}

    def forward_logits_lowres(self, x: torch.Tensor) -> torch.Tensor:
        """Main logits at the head's resolution, as the reference code returns them (no upsampling)."""
        self._check_input(x)
        out = self.head(self.backbone(self._network_input(x)))
        return (out["out"] if isinstance(out, dict) else out).to(x.dtype)

    def optimize_for_inference(self, **kwargs) -> "Segmentor":
        """Fold norms into convs, go channels_last, optionally compile / go bf16; see :mod:`cityseg_zoo.optimize`."""
        from .optimize import optimize_for_inference
        return optimize_for_inference(self, **kwargs)

    def save_pretrained(self, save_directory) -> "Path":
        """Write ``model.safetensors`` + ``config.json`` (see :func:`cityseg_zoo.hf.save_pretrained`)."""
        from .hf import save_pretrained
        return save_pretrained(self, save_directory)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Upload to a Hugging Face Hub repo (see :func:`cityseg_zoo.hf.push_to_hub`)."""
        from .hf import push_to_hub
        return push_to_hub(self, repo_id, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path, **kwargs) -> "Segmentor":
        """Load a folder or Hub repo written by :meth:`save_pretrained` (see :func:`cityseg_zoo.hf.from_pretrained`)."""
        from .hf import from_pretrained
        return from_pretrained(name_or_path, **kwargs)

    def _network_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the dtype of the network's weights: ``inference_dtype`` once the low-precision switch has
        converted them (``optimize_for_inference(dtype=...)``), else as given."""
        return x if self.inference_dtype is None else x.to(self.inference_dtype)

    def forward(self, x: torch.Tensor):
        self._check_input(x)
        size = x.shape[-2:]
        features = self.backbone(self._network_input(x))
        out = self.head(features)
        if not self.training:
            logits = out["out"] if isinstance(out, dict) else out
            # Low precision: the logits return to the input's dtype (float32) before the final upsampling.
            return resize(logits.to(x.dtype), size, self.align_corners)
        outputs = dict(out) if isinstance(out, dict) else {"out": out}
        if self.aux_head is not None:
            outputs["aux"] = self.aux_head(features[self.aux_index])
        return {name: resize(logits, size, self.align_corners) for name, logits in outputs.items()}
