"""``cityseg-zoo predict IMAGES... --model NAME --out DIR``: trainId, colour and overlay PNGs per image.

Also holds the model and protocol options shared with ``cityseg-zoo eval``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

from ..errors import InputError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model --weights --random-init --device --amp`` and the protocol overrides."""
    model = parser.add_argument_group("model")
    model.add_argument("--model", required=True, help="architecture or weight name (see `cityseg-zoo list`)")
    model.add_argument("--weights", type=Path, help="local checkpoint (any supported layout) instead of the "
                                                    "weight's published file")
    model.add_argument("--random-init", action="store_true",
                       help="untrained weights: checks an installation only, the predictions are meaningless")
    model.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    model.add_argument("--amp", choices=sorted(AMP_DTYPES), help="run the network under bf16/fp16 autocast")
    proto = parser.add_argument_group("protocol (default: the weight's own eval protocol)")
    proto.add_argument("--mode", choices=("whole", "slide"))
    proto.add_argument("--crop", type=int, nargs="+", metavar="PX", help="sliding-window crop: SIDE or H W")
    proto.add_argument("--stride", type=int, nargs="+", metavar="PX", help="sliding-window stride: SIDE or H W "
                                                                          "(default: 2/3 of the crop)")
    proto.add_argument("--style", choices=("gald", "encoding"),
                       help="sliding-window style: GALD/CCNet/mmseg tiles, or PyTorch-Encoding's (DANet)")
    proto.add_argument("--scales", type=float, nargs="+", metavar="S", help="e.g. 0.75 1.0 1.25")
    proto.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                       help="average with the horizontally flipped prediction")


def _size(values: list[int] | None, option: str):
    if values is None:
        return None
    if len(values) not in (1, 2):
        raise InputError(f"{option} takes one side or H W, got {values}")
    return values[0] if len(values) == 1 else tuple(values)


def protocol_options(args: argparse.Namespace) -> dict:
    """Keyword overrides for :func:`cityseg_zoo.inference.predict` (``None`` = keep the weight's default)."""
    return {"mode": args.mode, "crop_size": _size(args.crop, "--crop"), "stride": _size(args.stride, "--stride"),
            "scales": args.scales, "flip": args.flip, "style": args.style, "amp_dtype": AMP_DTYPES.get(args.amp)}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available here (use --device cpu)")
    return device


def load_model(args: argparse.Namespace) -> torch.nn.Module:
    """The model named by ``--model`` with ``--weights`` / published weights / ``--random-init``, in eval mode."""
    from ..factory import build_model
    if args.weights is not None and args.random_init:
        raise InputError("--weights and --random-init exclude each other")
    if args.weights is not None and not args.weights.is_file():
        raise InputError(f"no such weights file: {args.weights}")
    pretrained = False if args.random_init else (str(args.weights) if args.weights is not None else True)
    model = build_model(args.model, pretrained=pretrained, option="--weights ")
    if args.random_init:
        print("warning: --random-init: the predictions come from UNTRAINED weights", file=sys.stderr)
    return model.eval().to(resolve_device(args.device))


def register(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="segment images; write trainId, colour and overlay PNGs",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    add_model_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data.transforms import load_image
    from ..inference import EvalProtocol, segment
    from ..visualize import colorize, overlay
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:  # before the model is built: a typo should not cost a model load
        raise InputError(f"no such image file: {', '.join(missing)}")
    model = load_model(args)
    options = protocol_options(args)
    amp = options.pop("amp_dtype")
    protocol = EvalProtocol.from_cfg(model.pretrained_cfg).override(**options)
    palette = model.pretrained_cfg.get("palette")
    if palette is None:
        raise InputError(f"{args.model} has {model.num_classes} classes and no palette to colour them with")
    print(f"{args.model}: {protocol}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        image = load_image(path)
        labels = segment(model, image, protocol=protocol, amp_dtype=amp).cpu()
        stem = path.name.rsplit(".", 1)[0]
        Image.fromarray(labels.to(torch.uint8).numpy()).save(args.out / f"{stem}_trainIds.png")
        Image.fromarray(colorize(labels, palette)).save(args.out / f"{stem}_color.png")
        Image.fromarray(overlay(image, labels, palette)).save(args.out / f"{stem}_overlay.png")
        print(f"{path} -> {args.out / stem}_{{trainIds,color,overlay}}.png")
    return 0
