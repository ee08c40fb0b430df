"""A reader for the standard Cityscapes folder layout::

    ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from .cityscapes import id_to_train_id
from .transforms import load_image

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


@dataclass(frozen=True)
class Sample:
    image_path: Path
    label_path: Path | None


def load_label(path: str | os.PathLike) -> torch.Tensor:
    """Read a ``*_gtFine_labelIds.png`` as trainIds ``[H, W]`` (int64, 255 = ignore)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such label file: {path}")
    label_ids = np.array(Image.open(path))
    if label_ids.ndim != 2:
        raise InputError(f"{path}: a labelIds image has one channel, got shape {label_ids.shape}")
    try:
        train_ids = id_to_train_id(label_ids)
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    return torch.from_numpy(train_ids.astype(np.int64))


class CityscapesDataset(torch.utils.data.Dataset):
    """Images and trainId labels of one split (``train``, ``val``, ``test``, ...), all cities or some.

    Each item is ``(image, label, name)``: RGB ``uint8`` ``[3, H, W]``, trainIds int64 ``[H, W]`` (``None``
    with ``labels=False``) and the frame name ``<city>_<seq>_<frame>``. Samples are sorted by path, so every
    process sees the same order (see :meth:`shard`).
    """

    def __init__(self, root: str | os.PathLike, split: str = "val", cities: Sequence[str] | None = None,
                 labels: bool = True):
        self.root = Path(root)
        self.split = split
        image_dir = self.root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise InputError(f"not a Cityscapes root: {image_dir} does not exist (expected "
                             f"ROOT/leftImg8bit/{split}/<city>/*{IMAGE_SUFFIX})")
        city_dirs = sorted(p for p in image_dir.iterdir() if p.is_dir())
        if cities is not None:
            missing = sorted(set(cities) - {p.name for p in city_dirs})
            if missing:
                raise InputError(f"no city {missing} under {image_dir}; found {[p.name for p in city_dirs]}")
            city_dirs = [p for p in city_dirs if p.name in set(cities)]
        self.samples: list[Sample] = []
        for city_dir in city_dirs:
            for image_path in sorted(city_dir.glob("*" + IMAGE_SUFFIX)):
                frame = image_path.name[: -len(IMAGE_SUFFIX)]
                label_path = self.root / "gtFine" / split / city_dir.name / (frame + LABEL_SUFFIX)
                if labels and not label_path.is_file():
                    raise InputError(f"label file missing for {image_path.name}: {label_path}")
                self.samples.append(Sample(image_path, label_path if labels else None))
        if not self.samples:
            raise InputError(f"no *{IMAGE_SUFFIX} images under {image_dir}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        name = sample.image_path.name[: -len(IMAGE_SUFFIX)]
        label = load_label(sample.label_path) if sample.label_path is not None else None
        return load_image(sample.image_path), label, name

    def shard(self, rank: int, world_size: int) -> list[int]:
        """Indices this process evaluates: ``rank, rank + world_size, ...``.

        Unlike ``DistributedSampler`` nothing is repeated to even out the shards, so summed confusion matrices
        count every image exactly once.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        return list(range(rank, len(self), world_size))
