"""Print the README model table: parameters and GFLOPs at 1024x2048 for every registered architecture.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (no memory, no time):
one multiply-add = 2 FLOPs, convolutions and matmuls only (the usual convention).

    python benchmarks/model_table.py [--size 1024 2048] [--pattern '*']
"""
from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

import cityseg_zoo
from cityseg_zoo.registry import weights_for


def count(name: str, size: tuple[int, int]) -> tuple[float, float]:
    with torch.device("meta"):
        model = cityseg_zoo.create_model(name).eval()
        x = torch.empty(1, 3, *size)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return params, counter.get_total_flops() / 1e9


def _metrics(weight: dict) -> str:
    numbers = [f"{k.replace('_miou', '').replace('_', ' ')} {v}" for k, v in weight.get("reported", {}).items()
               if k != "note"]
    return ", ".join(numbers) or "not stated"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 2048))
    parser.add_argument("--pattern", default="*")
    args = parser.parse_args()
    print(f"| model | params (M) | GFLOPs @{args.size[0]}x{args.size[1]} | reference code | weights | reported mIoU |")
    print("|---|---|---|---|---|---|")
    for name in cityseg_zoo.list_models(args.pattern):
        params, gflops = count(name, tuple(args.size))
        cfg = cityseg_zoo.model_info(name)["pretrained_cfg"]
        weights = weights_for(name)
        released = [w for w in weights if w.get("sources")]
        source = ", ".join(f"`{w['name']}`" for w in released) or "none released"
        reported = "; ".join(f"{w['name'].removeprefix(name + '_')}: {_metrics(w)}" for w in weights) or "-"
        print(f"| `{name}` | {params:.1f} | {gflops:.0f} | {cfg['reference']} | {source} | {reported} |")


if __name__ == "__main__":
    main()
