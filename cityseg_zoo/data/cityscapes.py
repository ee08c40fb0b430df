"""Cityscapes label definitions: the 34 label ids, the 19 evaluation classes (trainIds 0..18), the official
palette, and the id -> trainId mapping (copied from cityscapesScripts ``helpers/labels.py``)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import InputError

NUM_CLASSES = 19
IGNORE_INDEX = 255


class Label(NamedTuple):
    name: str
    id: int                   # the value stored in ``*_gtFine_labelIds.png``
    train_id: int             # 0..18 for the evaluated classes, 255 (IGNORE_INDEX) otherwise
    category: str
    ignore_in_eval: bool
    color: tuple[int, int, int]


# cityscapesScripts/helpers/labels.py, ids 0..33. ("license plate", id -1, never appears in labelIds images.)
LABELS = (
    Label("unlabeled", 0, 255, "void", True, (0, 0, 0)),
    Label("ego vehicle", 1, 255, "void", True, (0, 0, 0)),
    Label("rectification border", 2, 255, "void", True, (0, 0, 0)),
    Label("out of roi", 3, 255, "void", True, (0, 0, 0)),
    Label("static", 4, 255, "void", True, (0, 0, 0)),
    Label("dynamic", 5, 255, "void", True, (111, 74, 0)),
    Label("ground", 6, 255, "void", True, (81, 0, 81)),
    Label("road", 7, 0, "flat", False, (128, 64, 128)),
    Label("sidewalk", 8, 1, "flat", False, (244, 35, 232)),
    Label("parking", 9, 255, "flat", True, (250, 170, 160)),
    Label("rail track", 10, 255, "flat", True, (230, 150, 140)),
    Label("building", 11, 2, "construction", False, (70, 70, 70)),
    Label("wall", 12, 3, "construction", False, (102, 102, 156)),
    Label("fence", 13, 4, "construction", False, (190, 153, 153)),
    Label("guard rail", 14, 255, "construction", True, (180, 165, 180)),
    Label("bridge", 15, 255, "construction", True, (150, 100, 100)),
    Label("tunnel", 16, 255, "construction", True, (150, 120, 90)),
    Label("pole", 17, 5, "object", False, (153, 153, 153)),
    Label("polegroup", 18, 255, "object", True, (153, 153, 153)),
    Label("traffic light", 19, 6, "object", False, (250, 170, 30)),
    Label("traffic sign", 20, 7, "object", False, (220, 220, 0)),
    Label("vegetation", 21, 8, "nature", False, (107, 142, 35)),
    Label("terrain", 22, 9, "nature", False, (152, 251, 152)),
    Label("sky", 23, 10, "sky", False, (70, 130, 180)),
    Label("person", 24, 11, "human", False, (220, 20, 60)),
    Label("rider", 25, 12, "human", False, (255, 0, 0)),
    Label("car", 26, 13, "vehicle", False, (0, 0, 142)),
    Label("truck", 27, 14, "vehicle", False, (0, 0, 70)),
    Label("bus", 28, 15, "vehicle", False, (0, 60, 100)),
    Label("caravan", 29, 255, "vehicle", True, (0, 0, 90)),
    Label("trailer", 30, 255, "vehicle", True, (0, 0, 110)),
    Label("train", 31, 16, "vehicle", False, (0, 80, 100)),
    Label("motorcycle", 32, 17, "vehicle", False, (0, 0, 230)),
    Label("bicycle", 33, 18, "vehicle", False, (119, 11, 32)),
)
NUM_LABEL_IDS = len(LABELS)  # 34

CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

# cityscapesScripts/helpers/labels.py, in trainId order.
PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

# Lookup table: ID_TO_TRAIN_ID[label_id] -> trainId (255 for ids not evaluated).
ID_TO_TRAIN_ID = np.array([label.train_id for label in LABELS], dtype=np.uint8)


def id_to_train_id(label_ids: np.ndarray) -> np.ndarray:
    """Map a ``*_gtFine_labelIds.png`` array (values 0..33) to trainIds (0..18, 255 = ignore).

    Raises :class:`InputError` for any value outside the 34 Cityscapes label ids, naming the values found.
    """
    label_ids = np.asarray(label_ids)
    if label_ids.dtype.kind not in "ui":
        raise InputError(f"label ids must be integers, got dtype {label_ids.dtype}")
    bad = (label_ids < 0) | (label_ids >= NUM_LABEL_IDS)
    if bad.any():
        values = np.unique(label_ids[bad])
        raise InputError(f"label ids outside the Cityscapes table 0..{NUM_LABEL_IDS - 1}: {values[:10].tolist()}"
                         f"{' ...' if values.size > 10 else ''} (is this a labelIds image, not a color or "
                         "instanceIds image?)")
    return ID_TO_TRAIN_ID[label_ids]
