"""Paired training augmentation of an image and its label map: random rescale, pad, random crop, random flip.

As the reference training loaders do it (GALD/CCNet ``CSDataSet``): the image is already normalised, so padding
it with 0 pads with the mean colour; the label is padded with the ignore index; the image is resized bilinearly
and the label with nearest neighbour, so no label value is ever invented.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.cityscapes import IGNORE_INDEX


class RandomScaleCropFlip:
    """Callable ``(image [3, H, W] float, label [H, W] int64) -> (image [3, c, c], label [c, c])``.

    Args:
        crop_size: side of the square crop (an ``(h, w)`` pair also works).
        scale_range: the rescale factor is drawn uniformly from this range (``(1, 1)`` disables it).
        flip: mirror left-right with probability 0.5.
        ignore_index: label of padded pixels.
        generator: a ``torch.Generator`` for reproducible draws (default: the global one); a call may pass its
            own (the fine-tuning loader seeds one per draw).
    """

    def __init__(self, crop_size: int | tuple[int, int], scale_range: tuple[float, float] = (0.5, 2.0),
                 flip: bool = True, ignore_index: int = IGNORE_INDEX, generator: torch.Generator | None = None):
        self.crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        if min(self.crop) <= 0 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"need a positive crop and 0 < min scale <= max scale; got {crop_size}, {scale_range}")
        self.scale_range, self.flip, self.ignore_index = scale_range, flip, ignore_index
        self.generator = generator

    def __call__(self, image: torch.Tensor, label: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        generator = generator if generator is not None else self.generator
        if image.shape[-2:] != label.shape[-2:]:
            raise ValueError(f"image {tuple(image.shape)} and label {tuple(label.shape)} differ in size")
        lo, hi = self.scale_range
        scale = lo + (hi - lo) * float(torch.rand((), generator=generator))
        h, w = image.shape[-2:]
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if size != (h, w):
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].to(label.dtype)
        pad_h, pad_w = max(self.crop[0] - size[0], 0), max(self.crop[1] - size[1], 0)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            label = F.pad(label, (0, pad_w, 0, pad_h), value=self.ignore_index)
        top = int(torch.randint(0, image.shape[-2] - self.crop[0] + 1, (), generator=generator))
        left = int(torch.randint(0, image.shape[-1] - self.crop[1] + 1, (), generator=generator))
        image = image[:, top:top + self.crop[0], left:left + self.crop[1]]
        label = label[top:top + self.crop[0], left:left + self.crop[1]]
        if self.flip and float(torch.rand((), generator=generator)) < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image.contiguous(), label.contiguous()
