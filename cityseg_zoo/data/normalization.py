"""How each family of reference weights expects its input pixels.

A model takes a float tensor that is already normalised; these records say how, so that
preprocessing is built from a model's ``pretrained_cfg`` and never hand-coded.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Normalization:
    channel_order: str            # "RGB" or "BGR": order of the channels fed to the network
    scale: float                  # 1.0 for 0-255 pixels, 255.0 for pixels divided to 0-1 first
    mean: tuple[float, float, float]   # in the network's channel order, after scaling
    std: tuple[float, float, float]

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, cfg: dict) -> "Normalization":
        """Inverse of :meth:`as_dict`; accepts the JSON form (lists for mean/std) kept in ``pretrained_cfg``."""
        return cls(channel_order=str(cfg["channel_order"]).upper(), scale=float(cfg["scale"]),
                   mean=tuple(float(v) for v in cfg["mean"]), std=tuple(float(v) for v in cfg["std"]))

    def __call__(self, rgb_uint8: torch.Tensor) -> torch.Tensor:
        """Normalise an RGB image tensor ``[..., 3, H, W]`` of 0-255 values."""
        x = rgb_uint8.float()
        if self.channel_order == "BGR":
            x = x.flip(-3)
        x = x / self.scale
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x - mean) / std


# torchvision / timm convention: RGB, /255, ImageNet mean and std (DGCNet, DANet, DecoupleSegNets).
IMAGENET_RGB = Normalization("RGB", 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Caffe convention: BGR, 0-255, minus the BGR pixel mean, no std (GALD scripts, CCNet).
CAFFE_BGR = Normalization("BGR", 1.0, (104.008, 116.669, 122.679), (1.0, 1.0, 1.0))
# OCNet.pytorch: BGR image flipped to RGB, 0-255, minus (102.98, 115.95, 122.77), no std. That mean
# is Caffe's BGR mean, yet the repo subtracts it from RGB channels; kept as trained.
OCNET_RGB = Normalization("RGB", 1.0, (102.98, 115.95, 122.77), (1.0, 1.0, 1.0))
# mmsegmentation SegDataPreProcessor: RGB (bgr_to_rgb=True), 0-255, ImageNet mean/std scaled by 255.
MMSEG_RGB = Normalization("RGB", 1.0, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
# detectron2's Mask2Former configs (MODEL.PIXEL_MEAN / PIXEL_STD, INPUT.FORMAT "RGB"): 0-255 RGB, the same numbers
# as mmsegmentation's.
DETECTRON2_RGB = MMSEG_RGB
