"""Multi-scale deformable attention alone at Mask2Former's pixel-decoder shapes: reference vs the fast path.

The pixel decoder's encoder layers let every token of the 1/8, 1/16 and 1/32 maps query all three levels
(Q = S, 8 heads of 32 channels, 3 levels, 4 points, batch 1). Times are the median of ``--repeats`` calls after
a warm-up, the two variants interleaved in one process on the same inputs and threads; peak memory is the growth
of the resident set's high-water mark over the inputs during one call, in a fresh process per variant and size
(Linux only: ``/proc/self/status``).

    flock /tmp/cityseg_bench.lock python benchmarks/deformable_attention.py            # both sizes, forward
    python benchmarks/deformable_attention.py --sizes 512x1024 --backward              # plus forward + backward
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from cityseg_zoo.ops import deformable_attention as da

VARIANTS = {"reference": da.multi_scale_deformable_attention_reference,
            "fast": da.multi_scale_deformable_attention}           # on CPU: the embedding_bag gather path
HEADS, HEAD_DIM, POINTS = 8, 32, 4


def levels(size: str) -> list[tuple[int, int]]:
    h, w = (int(v) for v in size.split("x"))
    return [(h // stride, w // stride) for stride in (8, 16, 32)]


def inputs(size: str, requires_grad: bool = False, seed: int = 0) -> list[torch.Tensor]:
    """The op's inputs at an encoder layer: Q = S queries, locations around the maps (some outside)."""
    shapes = levels(size)
    tokens = sum(h * w for h, w in shapes)
    g = torch.Generator().manual_seed(seed)
    value = torch.randn(1, tokens, HEADS, HEAD_DIM, generator=g)
    loc = torch.rand(1, tokens, HEADS, len(shapes), POINTS, 2, generator=g) * 1.1 - 0.05
    attn = torch.randn(1, tokens, HEADS, len(shapes) * POINTS, generator=g).softmax(-1)
    attn = attn.unflatten(-1, (len(shapes), POINTS))
    return [t.requires_grad_(requires_grad) for t in (value, loc, attn)]


def call(variant: str, size: str, tensors: list[torch.Tensor], backward: bool) -> None:
    value, loc, attn = tensors
    if backward:
        VARIANTS[variant](value, levels(size), loc, attn).sum().backward()
        for t in tensors:
            t.grad = None
    else:
        with torch.no_grad():
            VARIANTS[variant](value, levels(size), loc, attn)


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024


def peak_memory_child(variant: str, size: str, backward: bool) -> None:
    """Runs in a fresh process: prints the peak resident-set growth (MiB) of one call over its inputs.

    Large blocks are mmapped and unmapped when freed (``MALLOC_MMAP_THRESHOLD_``, set by the parent), so the
    resident set follows the live tensors; the high-water mark is reset just before the call (Linux
    ``/proc/self/clear_refs``), so temporaries of the set-up are not counted.
    """
    tensors = inputs(size, requires_grad=backward)
    call("fast", "64x64", inputs("64x64", requires_grad=backward), backward)   # first-call set-up, not counted
    before = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                                          # VmHWM := VmRSS
    call(variant, size, tensors, backward)
    print(json.dumps({"peak_mib": _status_mib("VmHWM") - before}))


def peak_memory(variant: str, size: str, backward: bool, threads: int) -> float:
    cmd = [sys.executable, __file__, "--child", variant, size, "--threads", str(threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 16)}
    proc = subprocess.run(cmd + (["--backward"] if backward else []), capture_output=True, text=True, check=True,
                          env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"]


def times(size: str, backward: bool, repeats: int) -> dict[str, float]:
    tensors = inputs(size, requires_grad=backward)
    samples = {v: [] for v in VARIANTS}
    for v in VARIANTS:
        call(v, size, tensors, backward)                                      # warm-up
    for _ in range(repeats):                                                  # interleaved: same load for both
        for v in VARIANTS:
            start = time.perf_counter()
            call(v, size, tensors, backward)
            samples[v].append(time.perf_counter() - start)
    return {v: statistics.median(s) * 1000 for v, s in samples.items()}


def error(size: str) -> float:
    value, loc, attn = inputs(size)
    with torch.no_grad():
        ref = VARIANTS["reference"](value, levels(size), loc, attn)
        fast = VARIANTS["fast"](value, levels(size), loc, attn)
    return float((fast - ref).abs().max() / ref.abs().max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["512x1024", "1024x2048"], help="input images, HxW")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backward", action="store_true", help="also time forward + backward (all inputs)")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        peak_memory_child(*args.child, backward=args.backward)
        return 0

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, B=1, heads {HEADS}, "
          f"head_dim {HEAD_DIM}, L 3, P {POINTS}, Q = S; median of {args.repeats} after 1 warm-up")
    rows = ["| input | levels (H×W) | Q = S | pass | reference ms | fast ms | speed-up | reference peak MiB | "
            "fast peak MiB | max rel. error |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for size in args.sizes:
        shapes, err = levels(size), error(size)
        for backward in (False, True) if args.backward else (False,):
            ms = times(size, backward, args.repeats)
            mib = {v: peak_memory(v, size, backward, args.threads) for v in VARIANTS}
            rows.append(f"| {size} | {', '.join(f'{h}×{w}' for h, w in shapes)} | {sum(h * w for h, w in shapes)} | "
                        f"{'fwd+bwd' if backward else 'forward'} | {ms['reference']:.0f} | {ms['fast']:.0f} | "
                        f"{ms['reference'] / ms['fast']:.1f}× | {mib['reference']:.0f} | {mib['fast']:.0f} | "
                        f"{err:.1e} |")
            print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
