"""Predict Cityscapes classes for street images and write trainId, colour and overlay PNGs.

    python examples/predict.py street.png --model dgcnet_r101_cityscapes --out out/
    python examples/predict.py street.png --model dgcnet_r101 --weights path/to/checkpoint.pth --out out/

Weights are looked up as ``create_model(..., pretrained=True)`` does (``$CITYSEG_ZOO_WEIGHTS_DIR``); when they are
not on this machine the script stops with a message naming the file and where to get it.
``--random-init`` runs the same pipeline on untrained weights, to check an installation only.
The prediction follows the weight's own eval protocol (``model.pretrained_cfg["eval"]``) unless ``--mode``,
``--crop``, ``--scales`` or ``--flip`` say otherwise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

import cityseg_zoo
from cityseg_zoo.data import load_image
from cityseg_zoo.inference import segment
from cityseg_zoo.visualize import colorize, overlay


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--model", default="dgcnet_r101_cityscapes")
    parser.add_argument("--weights", help="local checkpoint (any supported layout)")
    parser.add_argument("--out", type=Path, default=Path("predictions"))
    parser.add_argument("--random-init", action="store_true", help="untrained weights: checks the pipeline only")
    parser.add_argument("--mode", choices=("whole", "slide"))
    parser.add_argument("--crop", type=int, help="sliding-window crop side")
    parser.add_argument("--scales", type=float, nargs="+")
    parser.add_argument("--flip", action="store_true", default=None)
    args = parser.parse_args(argv)

    pretrained = False if args.random_init else (args.weights or True)
    try:
        model = cityseg_zoo.create_model(args.model, pretrained=pretrained).eval()
        args.out.mkdir(parents=True, exist_ok=True)
        for path in args.images:
            image = load_image(path)  # RGB uint8 [3, H, W]; grayscale/RGBA are converted with a warning
            labels = segment(model, image, mode=args.mode, crop_size=args.crop, scales=args.scales, flip=args.flip)
            palette = model.pretrained_cfg["palette"]
            Image.fromarray(labels.byte().numpy()).save(args.out / f"{path.stem}_trainIds.png")
            Image.fromarray(colorize(labels, palette)).save(args.out / f"{path.stem}_color.png")
            Image.fromarray(overlay(image, labels, palette)).save(args.out / f"{path.stem}_overlay.png")
            print(f"{path} -> {args.out / path.stem}_{{trainIds,color,overlay}}.png")
    except cityseg_zoo.CitysegZooError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.random_init:
        print("warning: --random-init: the predictions come from UNTRAINED weights", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
