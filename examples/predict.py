"""Predict Cityscapes classes for street images and write trainId and colour PNGs.

    python examples/predict.py street.png --model dgcnet_r101_cityscapes --out out/
    python examples/predict.py street.png --model dgcnet_r101 --weights path/to/checkpoint.pth --out out/

Weights are looked up as ``create_model(..., pretrained=True)`` does (``$CITYSEG_ZOO_WEIGHTS_DIR``); when they are
not on this machine the script stops with a message naming the file and where to get it.
``--random-init`` runs the same pipeline on untrained weights, to check an installation only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import cityseg_zoo
from cityseg_zoo.data.normalization import Normalization


def load_rgb(path: Path) -> torch.Tensor:
    image = Image.open(path)
    if image.mode != "RGB":  # grayscale, palette or RGBA: the networks were trained on RGB street photos
        image = image.convert("RGB")
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--model", default="dgcnet_r101_cityscapes")
    parser.add_argument("--weights", help="local checkpoint (any supported layout)")
    parser.add_argument("--out", type=Path, default=Path("predictions"))
    parser.add_argument("--random-init", action="store_true", help="untrained weights: checks the pipeline only")
    args = parser.parse_args(argv)

    pretrained = False if args.random_init else (args.weights or True)
    try:
        model = cityseg_zoo.create_model(args.model, pretrained=pretrained).eval()
    except cityseg_zoo.CitysegZooError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.random_init:
        print("warning: --random-init: the predictions come from UNTRAINED weights", file=sys.stderr)
    cfg = model.pretrained_cfg
    normalize = Normalization(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["input"].items()})
    palette = np.array(cfg.get("palette") or cityseg_zoo.data.PALETTE, dtype=np.uint8)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        if not path.is_file():
            print(f"error: no such image: {path}", file=sys.stderr)
            return 2
        x = normalize(load_rgb(path)).unsqueeze(0)
        with torch.no_grad():
            labels = model(x).argmax(1)[0].to(torch.uint8).numpy()
        Image.fromarray(labels).save(args.out / f"{path.stem}_trainIds.png")
        Image.fromarray(palette[labels]).save(args.out / f"{path.stem}_color.png")
        print(f"{path} -> {args.out / (path.stem + '_color.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
