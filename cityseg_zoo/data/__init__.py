"""Cityscapes label definitions and input normalisation conventions."""
from .cityscapes import CLASS_NAMES, PALETTE, NUM_CLASSES, IGNORE_INDEX
from .normalization import Normalization, IMAGENET_RGB, CAFFE_BGR, OCNET_RGB

__all__ = ["CLASS_NAMES", "PALETTE", "NUM_CLASSES", "IGNORE_INDEX",
           "Normalization", "IMAGENET_RGB", "CAFFE_BGR", "OCNET_RGB"]
