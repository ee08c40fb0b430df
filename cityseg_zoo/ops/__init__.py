"""Shared building blocks. Each op keeps a readable reference implementation beside any fast path."""
from .norm import ABN, ABNIdentity, conv_bn_act
from .resize import resize
from .ppm import PyramidPooling
from .aspp import ASPP

__all__ = ["ABN", "ABNIdentity", "conv_bn_act", "resize", "PyramidPooling", "ASPP"]
