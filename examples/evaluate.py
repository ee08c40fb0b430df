"""Per-class IoU and mIoU of a model on a Cityscapes split, on one or several processes.

    python examples/evaluate.py --data /datasets/cityscapes --model dgcnet_r101_cityscapes
    torchrun --nproc_per_node 4 examples/evaluate.py --data /datasets/cityscapes --model dgcnet_r101_cityscapes

Each process evaluates every N-th image; the confusion matrices are summed with ``all_reduce`` (gloo on CPU,
NCCL on CUDA), so N processes print exactly the single-process numbers.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.distributed as dist

import cityseg_zoo
from cityseg_zoo.data import CityscapesDataset
from cityseg_zoo.metrics import evaluate, init_distributed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="root holding leftImg8bit/ and gtFine/")
    parser.add_argument("--split", default="val")
    parser.add_argument("--model", default="dgcnet_r101_cityscapes")
    parser.add_argument("--weights", help="local checkpoint instead of the published one")
    parser.add_argument("--random-init", action="store_true", help="untrained weights: checks the pipeline only")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rank, world_size = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    try:
        dataset = CityscapesDataset(args.data, args.split)
        pretrained = False if args.random_init else (args.weights or True)
        model = cityseg_zoo.create_model(args.model, pretrained=pretrained).eval().to(device)
    except cityseg_zoo.CitysegZooError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # the weight's own eval protocol (pretrained_cfg["eval"]) is the default; pass mode=/scales=/flip= to change it
    confusion = evaluate(model, dataset, dataset.shard(rank, world_size), progress=rank == 0)
    if rank == 0:
        print(confusion.compute().table())
    if world_size > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
