"""Backbones returning a list of four feature maps (strides 4, 8, 8, 8 for dilated ResNets)."""
from .resnet import DilatedResNet, dilated_resnet

__all__ = ["DilatedResNet", "dilated_resnet"]
