"""Load a zoo model through ``torch.hub`` and segment one image.

    python examples/torch_hub.py street.png --model dgcnet_r101_cityscapes --pretrained
    python examples/torch_hub.py street.png --model fcn_r50 --weights my_checkpoint.safetensors

``--repo`` is a local checkout (default: this repository) or ``owner/name`` on GitHub (``--source github``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cityseg_zoo.data import CLASS_NAMES, load_image
from cityseg_zoo.inference import segment


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--source", choices=("local", "github"), default="local")
    parser.add_argument("--model", default="dgcnet_r101_cityscapes")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pretrained", action="store_true", help="the weight's published checkpoint")
    group.add_argument("--weights", help="a local checkpoint file instead")
    args = parser.parse_args(argv)

    pretrained = args.weights or args.pretrained
    model = torch.hub.load(args.repo, args.model, source=args.source, pretrained=pretrained).eval()
    labels = segment(model, load_image(args.image))
    counts = torch.bincount(labels.flatten(), minlength=len(CLASS_NAMES))
    print(f"{args.image}: {labels.shape[0]}x{labels.shape[1]} pixels")
    for class_id in counts.argsort(descending=True)[:5].tolist():
        print(f"  {CLASS_NAMES[class_id]:<14} {100 * counts[class_id] / labels.numel():5.1f}%")
    if not pretrained:
        print("warning: untrained weights (no --pretrained / --weights): the classes are meaningless",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
