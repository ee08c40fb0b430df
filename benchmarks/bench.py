"""The README benchmark in one command: latency at 512x1024 (eager vs the inference switch in float32 and in
bfloat16), peak memory at 1024x2048, and an area sweep (256x512 .. 1024x2048) plotted as memory and time against
image area.

Every point runs in a fresh process (see ``cityseg_zoo/cli/benchmark.py`` for what is measured and how);
GFLOPs come from ``cityseg_zoo.cli.benchmark.count_gflops`` (meta device), the GEMM ceiling each row's % is against
from ``gemm_ceiling``, measured in that row's process before and after its model, in the row's dtype. The bf16 rows
also give the logits difference and the argmax changes against the float32 switch of the same weights on the same
input. Writes ``<output>.md``, ``<output>.json`` and ``<output>.png``.

    python benchmarks/bench.py                         # the full table (15 min on the 2-core AMD EPYC of
                                                       # 2026-12-07, with the bf16 rows and per-point ceilings)
    python benchmarks/bench.py --memory-models pspnet_r101 danet_r101   # fewer 1024x2048 points
    python benchmarks/bench.py --compile               # plus a torch.compile row per model (add ~30 min)
    python benchmarks/bench.py --quick                 # a two-model smoke run at small sizes (about 2 min)
    python benchmarks/bench.py --device cuda --dtype bfloat16 --sizes-memory 1024x2048   # on a GPU
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cityseg_zoo.cli.benchmark import Point, count_gflops, markdown_table, measure, parse_size, write_outputs

MODELS = ["fcn_r101", "pspnet_r101", "deeplabv3_r101", "deeplabv3plus_r101", "danet_r101", "ccnet_r101",
          "galdnet_r101", "dgcnet_r101", "gffnet_wrn38"]
ATTENTION_MODELS = ["danet_r101", "ccnet_r101", "galdnet_r101", "dgcnet_r101"]


def plan(args: argparse.Namespace) -> dict[str, list[Point]]:
    """The three sections: latency (eager, optimised float32 and low precision), memory at the large size, the
    area sweep."""
    common = dict(device=args.device, dtype=args.dtype, threads=args.threads)
    # (mode, dtype, compiled): eager float32, the float32 switch, optionally compiled, then each low-precision switch.
    modes = [("eager", "float32", False), ("optimized", "float32", False)]
    modes += [("optimized", "float32", True)] if args.compile else []
    modes += [("optimized", dtype, False) for dtype in args.low_dtypes]
    # With --compile the warm-up call is the compilation; the timed calls reuse the compiled graphs.
    latency = [Point(m, args.size_latency, mode, warmup=1, repeats=args.repeats, compile=compiled,
                     device=args.device, dtype=dtype, threads=args.threads, compare_fp32=dtype != "float32")
               for m in args.models for mode, dtype, compiled in modes]
    # One forward is enough for the peak memory of a fresh process; its time is reported but is a cold run.
    memory_models = args.models if args.memory_models is None else args.memory_models
    memory = [Point(m, s, "optimized", warmup=0, repeats=1, **common) for s in args.sizes_memory for m in memory_models]
    memory += [Point(m, s, "eager", warmup=0, repeats=1, **common) for s in args.sizes_memory
               for m in args.eager_memory_models]
    sweep = [Point(m, s, "optimized", warmup=1, repeats=1, **common) for s in args.sizes_sweep for m in args.models]
    return {"latency": latency, "memory": memory, "sweep": sweep}


def machine() -> str:
    """CPU model and whether it has AMX / AVX-512 bf16 (what the bf16 rows' speed depends on), torch version."""
    import platform

    import torch
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name") and ":" in line:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{name}, bf16 instructions: {', '.join(bf16) or 'none'}, torch {torch.__version__}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--size-latency", type=parse_size, default=(512, 1024))
    parser.add_argument("--sizes-memory", nargs="*", type=parse_size, default=[(1024, 2048)])
    parser.add_argument("--sizes-sweep", nargs="*", type=parse_size, default=[(256, 512), (768, 1536)],
                        help="extra sizes for the plot (the latency and memory sizes are plotted too)")
    parser.add_argument("--memory-models", nargs="*", default=None,
                        help="models measured (optimised) at the memory sizes (default: every model)")
    parser.add_argument("--eager-memory-models", nargs="*", default=["danet_r101"],
                        help="models also measured eager at the memory sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="dtype of the memory and sweep sections")
    parser.add_argument("--low-dtypes", nargs="*", choices=("bfloat16", "float16"), default=["bfloat16"],
                        help="low-precision switches added to the latency section (none: float32 only)")
    parser.add_argument("--compile", action="store_true",
                        help="add a torch.compile row per model to the latency table (minutes of compilation each)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per point")
    parser.add_argument("--output", default="docs/benchmark")
    parser.add_argument("--quick", action="store_true", help="fcn_r50 + danet_r50 at 129x257 / 257x513")
    args = parser.parse_args()
    if args.quick:
        args.models, args.memory_models, args.eager_memory_models = ["fcn_r50", "danet_r50"], None, ["danet_r50"]
        args.size_latency, args.sizes_memory, args.sizes_sweep, args.repeats = (129, 257), [(257, 513)], [], 2

    load_before = os.getloadavg()[0]
    sections = {name: measure(points, timeout=args.timeout) for name, points in plan(args).items()}
    load_after = os.getloadavg()[0]
    everything = [p for points in sections.values() for p in points]
    gflops = {key: count_gflops(*key) for key in {(p.model, p.size) for p in everything}}
    low = "".join(f" and {d}" for d in args.low_dtypes)
    titles = {"latency": f"Latency at {args.size_latency[0]}x{args.size_latency[1]}: eager vs the inference "
                         f"switch in float32{low} (median of {args.repeats} after 1 warm-up)",
              "memory": "Peak memory at the large size (one cold forward per fresh process)",
              "sweep": "Area sweep (one forward after 1 warm-up)"}
    # Two shared cores: another process's load slows every row (and the ceilings measured beside them).
    command = " ".join(["python benchmarks/bench.py", *sys.argv[1:]])
    load = (f"Made by `{command}`. Machine: {machine()}, {os.cpu_count()} CPUs visible, torch threads "
            f"{args.threads or 'default'}. 1-minute load average before / after the run: {load_before:.1f} / "
            f"{load_after:.1f}.\n\n")
    table = load + "\n".join(f"### {titles[name]}\n\n{markdown_table(points, gflops)}"
                             for name, points in sections.items() if points)
    print(table)
    write_outputs(Path(args.output), everything, table)
    return 0 if all(not p.error for p in everything) else 1


if __name__ == "__main__":
    sys.exit(main())
