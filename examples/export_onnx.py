"""Export a zoo model (or a fine-tuned one) to ONNX and check it under onnxruntime; or survey torch.compile.

    python examples/export_onnx.py --model dgcnet_r101_cityscapes --height 1024 --width 2048 --out dgcnet.onnx
    python examples/export_onnx.py --model runs/curbs/checkpoint-0002000 --height 512 --width 512 --out curbs.onnx
    python examples/export_onnx.py --graph-breaks fcn_r50 danet_r50 ...   # count torch.compile graph breaks

``--model`` is a zoo name (weights from ``create_model(..., pretrained=True)``), a ``save_pretrained`` folder or a Hub
repo id. ``--random-init`` exports untrained weights (to check the pipeline). Needs ``pip install
'cityseg-zoo[export]'``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import cityseg_zoo
from cityseg_zoo.errors import CitysegZooError
from cityseg_zoo.export import example_input, graph_breaks, to_onnx
from cityseg_zoo.hf import from_pretrained


def load(name: str, random_init: bool):
    if Path(name).is_dir() or ("/" in name and name not in cityseg_zoo.list_models()):
        return from_pretrained(name)
    return cityseg_zoo.create_model(name, pretrained=not random_init)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--static", action="store_true", help="fixed H/W (default: dynamic where possible)")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--graph-breaks", nargs="+", metavar="NAME", help="architectures to trace with TorchDynamo")
    args = parser.parse_args(argv)
    try:
        if args.graph_breaks:
            for name in args.graph_breaks:
                model = cityseg_zoo.create_model(name)
                started = time.perf_counter()
                breaks = graph_breaks(model, example_input(model, args.height, args.width))
                print(f"{name}: {len(breaks)} graph break(s) {breaks} ({time.perf_counter() - started:.1f} s)")
            return 0
        if not args.model or not args.out:
            parser.error("--model and --out are required (or use --graph-breaks)")
        model = load(args.model, args.random_init)
        result = to_onnx(model, args.out, height=args.height, width=args.width,
                         dynamic_hw=False if args.static else None)
    except CitysegZooError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {result.path} ({'dynamic' if result.dynamic_hw else 'fixed'} H/W, example {result.input_shape}); "
          f"onnxruntime vs PyTorch max relative error {result.max_rel_error:.2e} on {result.checked_shapes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
