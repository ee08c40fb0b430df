"""Print the README model table: parameters and GFLOPs at 1024x2048 for every registered architecture.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (no memory, no time):
one multiply-add = 2 FLOPs, convolutions and matmuls only (the usual convention).

    python benchmarks/model_table.py [--size 1024 2048] [--pattern '*']
"""
from __future__ import annotations

import argparse

import cityseg_zoo
from cityseg_zoo.cli.benchmark import count_gflops
from cityseg_zoo.registry import weights_for
from cityseg_zoo.specs import WeightSpec


def _metrics(weight: WeightSpec) -> str:
    numbers = [f"{k.replace('_miou', '').replace('_', ' ')} {v}" for k, v in weight.reported.items()
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
        gflops = count_gflops(name, tuple(args.size))
        info = cityseg_zoo.model_info(name)
        weights = weights_for(name)
        source = ", ".join(f"`{w.name}`" for w in weights if w.released) or "none released"
        reported = "; ".join(f"{w.name.removeprefix(name + '_')}: {_metrics(w)}" for w in weights) or "-"
        print(f"| `{name}` | {info['params'] / 1e6:.1f} | {gflops:.0f} | {info['pretrained_cfg']['reference']} | "
              f"{source} | {reported} |")


if __name__ == "__main__":
    main()
