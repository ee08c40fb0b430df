"""``cityseg-zoo eval --model NAME --data ROOT --split val``: per-class IoU and mIoU on a Cityscapes split.

Several processes (one machine or many) split the images and sum their confusion matrices; launch with plain
``torchrun --nproc_per_node N --no-python cityseg-zoo eval ...`` (gloo on CPU, NCCL on CUDA).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .predict import add_model_options, load_model, protocol_options, resolve_device


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="per-class IoU and mIoU on a Cityscapes split",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="Cityscapes root holding leftImg8bit/ and gtFine/")
    parser.add_argument("--split", default="val")
    parser.add_argument("--cities", nargs="+", help="only these cities (default: all)")
    parser.add_argument("--limit", type=int, help="only the first N images (sorted by path)")
    parser.add_argument("--json", type=Path, help="also write the scores and confusion matrix here")
    parser.add_argument("--no-progress", action="store_true")
    add_model_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data.dataset import CityscapesDataset
    from ..inference import EvalProtocol
    from ..metrics import evaluate, init_distributed
    dataset = CityscapesDataset(args.data, args.split, cities=args.cities)  # checked before the model loads
    rank, world_size = init_distributed(resolve_device(args.device))
    model = load_model(args)
    options = protocol_options(args)
    amp, tile_batch = options.pop("amp_dtype"), options.pop("tile_batch")
    protocol = EvalProtocol.from_cfg(model.pretrained_cfg).override(**options)
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    indices = list(range(count))[rank::world_size]
    if rank == 0:
        print(f"{args.model} on {args.data} {args.split}: {count} images, {world_size} process(es), {protocol}"
              + (f", {tile_batch} crops per forward" if tile_batch > 1 else ""), file=sys.stderr)
    try:
        confusion = evaluate(model, dataset, indices, progress=rank == 0 and not args.no_progress,
                             protocol=protocol, amp_dtype=amp, tile_batch=tile_batch)
    finally:
        if world_size > 1:
            import torch.distributed as dist
            dist.destroy_process_group()
    if rank != 0:
        return 0
    scores = confusion.compute()
    print(scores.table())
    if args.json is not None:
        args.json.write_text(json.dumps({
            "model": args.model, "split": args.split, "images": count, "protocol": repr(protocol),
            "miou": scores.miou, "pixel_accuracy": scores.pixel_accuracy,
            "iou": dict(zip(scores.class_names, scores.iou)), "confusion_matrix": confusion.matrix.tolist(),
        }, indent=1))
    return 0
