"""Cityscapes labels, the dataset reader, and input preprocessing built from ``pretrained_cfg``."""
from .cityscapes import (CLASS_NAMES, ID_TO_TRAIN_ID, IGNORE_INDEX, LABELS, NUM_CLASSES, NUM_LABEL_IDS, PALETTE,
                         Label, id_to_train_id)
from .dataset import CityscapesDataset, load_label
from .normalization import CAFFE_BGR, IMAGENET_RGB, OCNET_RGB, Normalization
from .transforms import load_image, normalization_from_cfg, preprocess

__all__ = ["CLASS_NAMES", "PALETTE", "NUM_CLASSES", "IGNORE_INDEX", "LABELS", "Label", "NUM_LABEL_IDS",
           "ID_TO_TRAIN_ID", "id_to_train_id", "CityscapesDataset", "load_label", "load_image", "preprocess",
           "normalization_from_cfg", "Normalization", "IMAGENET_RGB", "CAFFE_BGR", "OCNET_RGB"]
