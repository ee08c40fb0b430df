"""Image / label-map pairs for fine-tuning, in two folder layouts.

* ``folder_pairs(images_dir, masks_dir)``: ``images/<name>.<jpg|png|...>`` with ``masks/<name>.png``; pairs are
  matched by file stem (sub-folders included, relative paths must agree).
* ``cityscapes_pairs(root, split)``: the Cityscapes layout as :class:`~cityseg_zoo.data.CityscapesDataset` reads it,
  ``leftImg8bit/<split>/<city>/<id>_leftImg8bit.png`` with ``gtFine/<split>/<city>/<id>_gtFine_labelIds.png``; the
  label ids are mapped to trainIds (0-18, 255 = ignore) on reading, so no generated ``labelTrainIds`` files are
  needed.

A mask is a single-channel PNG (mode ``L`` or ``P``) whose values are class indices ``0..K-1``, or
``ignore_index`` (255) for unlabelled pixels; a Cityscapes ``*_gtFine_labelIds.png`` is read as trainIds.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..data.cityscapes import IGNORE_INDEX
from ..data.dataset import LABEL_SUFFIX, CityscapesDataset, load_label
from ..data.normalization import Normalization
from ..data.transforms import load_image
from ..errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def folder_pairs(images_dir: str | os.PathLike, masks_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """``(image, mask)`` paths matched by relative path without suffix; a mask must be a ``.png``."""
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise InputError(f"not a folder: {folder}")
    masks = {p.relative_to(masks_dir).with_suffix(""): p for p in masks_dir.rglob("*.png")}
    pairs, unmatched = [], []
    for image in sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        mask = masks.get(image.relative_to(images_dir).with_suffix(""))
        (pairs.append((image, mask)) if mask is not None else unmatched.append(image.name))
    if unmatched:
        raise InputError(f"{len(unmatched)} image(s) in {images_dir} have no mask of the same name in {masks_dir}: "
                         f"{', '.join(unmatched[:5])}")
    if not pairs:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {images_dir}")
    return pairs


def cityscapes_pairs(root: str | os.PathLike, split: str = "train") -> list[tuple[Path, Path]]:
    """Cityscapes ``leftImg8bit`` images with their ``gtFine`` ``labelIds`` files (read as trainIds)."""
    return [(sample.image_path, sample.label_path) for sample in CityscapesDataset(root, split).samples]


class SegmentationPairs(torch.utils.data.Dataset):
    """Reads ``(image, mask)`` pairs as ``(normalised float [3, H, W], int64 [H, W])``.

    Args:
        pairs: from :func:`folder_pairs` or :func:`cityscapes_pairs`.
        normalization: the model's input normalisation (``Normalization.from_dict(model.pretrained_cfg["input"])``).
        num_classes: mask values must be ``< num_classes`` or equal ``ignore_index``; others are an error.
        transform: applied to the normalised pair (e.g. :class:`~cityseg_zoo.train.augment.RandomScaleCropFlip`).
    """

    def __init__(self, pairs: list[tuple[Path, Path]], normalization: Normalization, num_classes: int,
                 transform: Callable | None = None, ignore_index: int = IGNORE_INDEX):
        self.pairs, self.normalization, self.num_classes = list(pairs), normalization, num_classes
        self.transform, self.ignore_index = transform, ignore_index

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``key``: an index, or ``(index, draw_seed)`` from :class:`ResumableSampler` (seeds the transform)."""
        index, draw_seed = key if isinstance(key, tuple) else (key, None)
        image_path, mask_path = self.pairs[index]
        rgb = load_image(image_path)
        label = load_label(mask_path) if mask_path.name.endswith(LABEL_SUFFIX) else _read_mask(mask_path)
        if label.shape != rgb.shape[-2:]:
            raise InputError(f"{mask_path} is {tuple(label.shape)}, its image {image_path} is {tuple(rgb.shape[-2:])}")
        bad = label[(label >= self.num_classes) & (label != self.ignore_index) | (label < 0)].unique()
        if bad.numel():
            raise InputError(f"{mask_path} has label values {bad.tolist()[:10]} outside 0..{self.num_classes - 1} "
                             f"and the ignore index {self.ignore_index}")
        image = self.normalization(rgb)
        if self.transform is not None:
            generator = torch.Generator().manual_seed(draw_seed) if draw_seed is not None else None
            image, label = self.transform(image, label, generator=generator)
        return image, label


def _read_mask(path: Path) -> torch.Tensor:
    with Image.open(path) as m:
        if m.mode not in ("L", "P", "I", "I;16"):
            raise InputError(f"{path}: a mask must be a single-channel PNG of class indices, got mode {m.mode}")
        return torch.from_numpy(np.array(m, dtype=np.int64))


class ResumableSampler(torch.utils.data.Sampler):
    """Shuffled epochs, sharded across ranks, that can start mid-epoch; yields ``(index, draw_seed)``.

    Epoch ``e`` is a permutation drawn from ``seed + e`` (padded by wrapping so every rank gets the same count,
    as ``DistributedSampler``); rank ``r`` takes positions ``r, r + world, ...``. ``draw_seed`` fixes the random
    augmentation of that draw (see :class:`SegmentationPairs`), so a run resumed at any step sees the same crops
    as an unbroken one, whatever the number of loader workers.
    """

    def __init__(self, dataset_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if dataset_size <= 0:
            raise InputError("the dataset is empty")
        self.size, self.seed, self.rank, self.world_size = dataset_size, seed, rank, world_size
        self.per_rank = -(-dataset_size // world_size)
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch`` from its ``start``-th sample on this rank."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.per_rank - self.start

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        order = (order * (-(-self.per_rank * self.world_size // self.size)))[: self.per_rank * self.world_size]
        mine = order[self.rank::self.world_size]
        for position in range(self.start, self.per_rank):
            draw_seed = (self.seed * 1_000_003 + self.epoch) * 1_000_003 + position * self.world_size + self.rank
            yield mine[position], draw_seed % (2 ** 63)
