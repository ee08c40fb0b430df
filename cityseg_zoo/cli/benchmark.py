"""``cityseg-zoo benchmark``: latency, peak memory and achieved GFLOP/s of zoo models, eager vs optimised.

Every measurement point (model, image size, mode) runs in a **fresh Python process**, so its peak memory is its
own: peak RSS (``ru_maxrss``, the whole process: interpreter, torch, weights and activations) on CPU, and
``torch.cuda.max_memory_allocated`` on CUDA. Latency is the median of ``repeats`` timed forwards after
``warmup`` untimed ones (CUDA: CUDA events). FLOPs are counted once per (model, size) on the meta device
(convolutions and matmuls, one multiply-add = 2 FLOPs), and the achieved GFLOP/s is reported as a fraction of the
GEMM ceiling (:func:`gemm_ceiling`: the best of several large ``torch.mm`` and channels_last convolution workloads)
measured in the point's own process, with its thread settings, before and after the model, in the dtype its
convolutions run in.

Modes: ``eager`` (the model as built) and ``optimized`` (:func:`cityseg_zoo.optimize.optimize_for_inference`:
conv+BN folding and channels_last, plus ``--compile`` / ``--dtype`` when given). A low-precision optimised point
also runs the float32 switch of the same weights once on the same fixed random input, and reports the largest
logits difference (relative to the largest float32 logit) and the fraction of pixels whose argmax class changes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import CitysegZooError

# Figures to beat (issue #5): mmsegmentation 1.2.2 R-101-D8 models on the 2-core CPU, batch 1, fp32, 512x1024.
# (latency s, peak RSS GiB); None where not given. The zoo model each row is compared with is the key.
MMSEG_FIGURES_512x1024 = {
    "fcn_r101": ("FCN", 6.9, 1.19), "pspnet_r101": ("PSPNet", 6.5, 1.36),
    "deeplabv3_r101": ("DeepLabv3", 8.4, 1.23), "deeplabv3plus_r101": ("DeepLabv3+", 7.8, 1.34),
    "danet_r101": ("DANet", 7.6, 1.50), "ccnet_r101": ("CCNet", 7.3, 1.22),
}
MMSEG_FIGURES_1024x2048 = {"pspnet_r101": (31.8, 2.6), "danet_r101": (54.8, 9.8)}

GIB = 1024 ** 3


@dataclass
class Point:
    """One measurement: a model at one size in one mode, run in its own process."""
    model: str
    size: tuple[int, int]
    mode: str = "optimized"                  # "eager" | "optimized"
    warmup: int = 1
    repeats: int = 3
    device: str = "cpu"
    dtype: str = "float32"                   # dtype of the optimised mode: float32 | bfloat16 | float16
    compile: bool = False
    threads: int = 0                         # torch.set_num_threads (0: torch's default)
    ceiling: bool = True                     # measure the GEMM ceiling in this process, before and after the model
    compare_fp32: bool = False               # low-precision point: logits against the float32 switch's
    # Filled in by the worker.
    latencies_s: list[float] = field(default_factory=list)
    peak_memory_gib: float | None = None
    memory_kind: str = ""
    fast_paths: str = ""
    ceiling_dtype: str = ""                  # the ceiling's dtype: the dtype the model's convolutions run in
    ceiling_before: dict[str, float] = field(default_factory=dict)   # GFLOP/s per workload, before the model
    ceiling_after: dict[str, float] = field(default_factory=dict)    # and after it
    max_rel_diff: float | None = None        # max|logits - fp32 logits| / max|fp32 logits| (compare_fp32)
    argmax_changed: float | None = None      # fraction of pixels whose argmax class differs from fp32's
    error: str = ""

    @property
    def ceiling_gflops(self) -> float | None:
        """The GEMM ceiling of this point's process: the best workload, before or after the model."""
        rates = [*self.ceiling_before.values(), *self.ceiling_after.values()]
        return max(rates) if rates else None


# ---------------------------------------------------------------- what runs inside a worker process

def fast_paths(model) -> str:
    """The ops of ``model`` that dispatch to a fast path (each op's ``benchmark_label``), and what the inference
    switch did (folded conv+norm pairs, kept backbone stages)."""
    found = sorted({label for m in model.modules() if (label := getattr(type(m), "benchmark_label", None))})
    optimized = getattr(model, "record", {}).get("inference_optimized")
    if optimized:
        switch = [f"{optimized['folded_norms']} conv+norm folded"]
        if optimized["kept_features"] is not None:
            switch.append(f"backbone keeps stages {optimized['kept_features']}")
        switch += [name for name in ("channels_last", "compile") if optimized[name]]
        found.insert(0, ", ".join(switch))
    return "; ".join(found)


def _peak_rss_gib() -> float:
    import resource
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux
    return kib * 1024 / GIB


def _build(point: Point, dtype: str):
    """The point's model with the weights of ``torch.manual_seed(0)``, optimised in ``dtype`` when its mode says."""
    import torch

    import cityseg_zoo
    torch.manual_seed(0)
    model = cityseg_zoo.create_model(point.model).eval().to(point.device)
    if point.mode == "optimized":
        model.optimize_for_inference(dtype=None if dtype == "float32" else getattr(torch, dtype),
                                     compile=point.compile)
    elif point.mode != "eager":
        raise CitysegZooError(f"unknown mode {point.mode!r}: use 'eager' or 'optimized'")
    return model


def run_point(point: Point) -> Point:
    """Build the model, optimise it if asked, and time it (in this process: call it in a fresh one).

    With ``point.ceiling``, :func:`gemm_ceiling` runs before the model is built and after it has run (same process,
    same threads), in the dtype its convolutions run in. With ``point.compare_fp32``, the float32 switch of the
    same weights then runs once on the same input, after the peak memory has been read, for the logits difference.
    """
    import torch
    if point.threads:
        torch.set_num_threads(point.threads)
    device = torch.device(point.device)
    point.ceiling_dtype = point.dtype if point.mode == "optimized" else "float32"
    if point.ceiling:
        point.ceiling_before = gemm_ceiling(point.device, point.ceiling_dtype)
    model = _build(point, point.dtype)
    point.fast_paths = fast_paths(model)
    x = torch.randn(1, 3, *point.size, generator=torch.Generator().manual_seed(1)).to(device)   # fixed input
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        out = None
        for _ in range(point.warmup):
            out = model(x)
        for _ in range(point.repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = model(x)
                end.record()
                torch.cuda.synchronize(device)
                point.latencies_s.append(start.elapsed_time(end) / 1000)
            else:
                t0 = time.perf_counter()
                out = model(x)
                point.latencies_s.append(time.perf_counter() - t0)
    if cuda:
        point.peak_memory_gib, point.memory_kind = torch.cuda.max_memory_allocated(device) / GIB, "CUDA allocated"
    else:
        point.peak_memory_gib, point.memory_kind = _peak_rss_gib(), "peak RSS"
    if point.compare_fp32 and out is not None:
        del model
        with torch.inference_mode():
            reference = _build(point, "float32")(x)
        point.max_rel_diff = float((out.float() - reference).abs().max() / reference.abs().max())
        point.argmax_changed = float((out.argmax(1) != reference.argmax(1)).float().mean())
    if point.ceiling:
        point.ceiling_after = gemm_ceiling(point.device, point.ceiling_dtype)
    return point


# The workloads of the GEMM ceiling: ("mm", (m, k, n)) is ``torch.mm`` of ``[m, k] @ [k, n]`` (MKL / cuBLAS);
# ("conv", (c_in, c_out, kernel, h, w)) a channels_last ``conv2d`` of a ``[1, c_in, h, w]`` map (oneDNN / cuDNN, the
# library the models' convolutions run in: a 1x1 conv is its own GEMM, a 3x3 one an implicit GEMM that beats the
# BLAS in bf16 on AMX). The convs are the models' own shapes: head, layer4 and layer3 convs at 1/8 of 512x1024
# (64x128) and of 256x512 (32x64), and the 64-channel layer1 3x3 at 1/4 of 512x1024. On one AMX core the best
# were the small-map 3x3 convs (fp32 ~135 GFLOP/s, bf16 ~950, where the 2048³ bf16 matmul gave ~570).
CEILING_WORKLOADS = (
    ("mm", (2048, 2048, 2048)),
    ("conv", (2048, 512, 1, 64, 128)), ("conv", (1024, 256, 1, 32, 64)),
    ("conv", (512, 512, 3, 64, 128)), ("conv", (512, 512, 3, 32, 64)),
    ("conv", (256, 256, 3, 64, 128)), ("conv", (256, 256, 3, 32, 64)), ("conv", (64, 64, 3, 128, 256)),
)


def workload_label(kind: str, shape: tuple[int, ...]) -> str:
    if kind == "mm":
        return "mm {}x{}x{}".format(*shape)
    c_in, c_out, kernel, h, w = shape
    return f"conv{kernel}x{kernel} {c_in}->{c_out} at {h}x{w}"


def gemm_ceiling(device: str = "cpu", dtype: str = "float32", repeats: int = 3,
                 workloads: tuple | None = None) -> dict[str, float]:
    """The practical GEMM ceiling of ``device`` in ``dtype``: GFLOP/s achieved by each large GEMM-shaped workload.

    Every workload of ``workloads`` (default ``CEILING_WORKLOADS``: ``torch.mm`` products and channels_last 1x1 / 3x3
    convolutions, inputs and weights in ``dtype``, so the bf16 ceiling is that of bf16 tensors) runs once to warm
    up and then ``repeats`` times; its figure is ``2 · multiply-adds`` over its fastest run. The ceiling is the
    best figure, ``max(result.values())``: nothing the models run should go faster. It is only a ceiling for
    the process and thread settings it was measured in, so the benchmark measures it in each point's own process,
    before and after the model runs. Returns ``{workload label: GFLOP/s}``.
    """
    import torch
    import torch.nn.functional as F
    dev, dt = torch.device(device), getattr(torch, dtype)
    cuda = dev.type == "cuda"
    result = {}
    with torch.inference_mode():
        for kind, shape in CEILING_WORKLOADS if workloads is None else workloads:
            g = torch.Generator().manual_seed(0)
            if kind == "mm":
                m, k, n = shape
                a, b = (torch.randn(r, c, generator=g).to(dev, dt) for r, c in ((m, k), (k, n)))
                run, flops = (lambda: torch.mm(a, b)), 2 * m * k * n
            else:
                c_in, c_out, kernel, h, w = shape
                x = torch.randn(1, c_in, h, w, generator=g).to(dev, dt).contiguous(memory_format=torch.channels_last)
                weight = (torch.randn(c_out, c_in, kernel, kernel, generator=g) / (c_in * kernel * kernel) ** 0.5
                          ).to(dev, dt).contiguous(memory_format=torch.channels_last)
                run, flops = (lambda: F.conv2d(x, weight, padding=kernel // 2)), 2 * c_in * c_out * kernel ** 2 * h * w
            times = []
            for i in range(repeats + 1):
                if cuda:
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                run()
                if cuda:
                    torch.cuda.synchronize(dev)
                if i:                                    # the first run warms up (allocations, oneDNN primitives)
                    times.append(time.perf_counter() - t0)
            result[workload_label(kind, shape)] = flops / min(times) / 1e9
    return result


def count_gflops(name: str, size: tuple[int, int]) -> float:
    """Forward GFLOPs at batch 1 (conv and matmul, multiply-add = 2), counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import cityseg_zoo
    with torch.device("meta"):
        model = cityseg_zoo.create_model(name).eval()
        x = torch.empty(1, 3, *size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 1e9


def _worker_main(spec: str) -> None:
    """Entry point of a worker process: one JSON spec in, one JSON line out (prefixed, to find it)."""
    job = json.loads(spec)
    point = Point(**{**job["point"], "size": tuple(job["point"]["size"])})
    try:
        result = asdict(run_point(point))
    except Exception as err:   # reported in the table rather than aborting a long run
        point.error = f"{type(err).__name__}: {err}"
        result = asdict(point)
    print("BENCH_RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- the parent: fresh processes, table, plot

def _spawn(job: dict, timeout: float | None) -> dict:
    cmd = [sys.executable, "-m", "cityseg_zoo.cli.benchmark", "--worker", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"worker exited with {proc.returncode}: {tail[0]}"}


def measure(points: list[Point], timeout: float | None = None, log=print) -> list[Point]:
    """Run every point in its own process; failures are recorded in ``Point.error``."""
    done = []
    for i, point in enumerate(points, 1):
        result = _spawn({"kind": "point", "point": asdict(point)}, timeout)
        if "model" in result:
            point = Point(**{**result, "size": tuple(result["size"])})
        else:
            point.error = result.get("error", "unknown failure")
        ceiling = f", ceiling {point.ceiling_gflops:.0f} GFLOP/s" if point.ceiling_gflops else ""
        diff = f", max rel. diff {point.max_rel_diff:.1e}" if point.max_rel_diff is not None else ""
        log(f"[{i}/{len(points)}] {point.model} {point.size[0]}x{point.size[1]} {point.mode} {point.dtype}: "
            + (point.error or f"{median(point):.2f} s, {point.peak_memory_gib:.2f} GiB {point.memory_kind}"
                              f"{ceiling}{diff}"))
        done.append(point)
    return done


def median(point: Point) -> float:
    return statistics.median(point.latencies_s) if point.latencies_s else float("nan")


def ceiling_summary(points: list[Point]) -> str:
    """One line per dtype: the highest GEMM ceiling of the points' processes, their range and the best workload."""
    by_dtype: dict[str, list[Point]] = {}
    for p in points:
        if p.ceiling_gflops is not None:
            by_dtype.setdefault(p.ceiling_dtype, []).append(p)
    if not by_dtype:
        return "GEMM ceiling: not measured."
    parts = []
    for dtype, measured in by_dtype.items():
        rates = [p.ceiling_gflops for p in measured]
        best = max(measured, key=lambda p: p.ceiling_gflops)
        runs = {**best.ceiling_before, **{k: max(v, best.ceiling_before.get(k, 0.0))
                                          for k, v in best.ceiling_after.items()}}
        parts.append(f"{dtype} {max(rates):.0f} GFLOP/s (range over the rows' processes {min(rates):.0f}-"
                     f"{max(rates):.0f}; best workload: {max(runs, key=runs.get)})")
    workloads = len(CEILING_WORKLOADS)
    return (f"GEMM ceiling measured in this run: {'; '.join(parts)}. Each row's process measures the best of "
            f"{workloads} GEMM workloads (torch.mm and channels_last 1x1 / 3x3 convolutions, in the dtype the "
            f"row's convolutions run in) before and after its model; the row's % is against its own ceiling.")


def markdown_table(points: list[Point], gflops: dict[tuple[str, tuple[int, int]], float]) -> str:
    """One row per point; speed-up against the eager point of the same model and size, against the float32
    switch (low-precision rows) and against mmseg; achieved GFLOP/s as a fraction of the row's GEMM ceiling."""
    ok = [p for p in points if not p.error and p.latencies_s]
    eager = {(p.model, p.size): median(p) for p in ok if p.mode == "eager"}
    switch = {(p.model, p.size): median(p) for p in ok
              if p.mode == "optimized" and p.dtype == "float32" and not p.compile}
    lines = [ceiling_summary(points), "",
             "| model | size | mode | median latency (s) | runs | vs eager | vs fp32 switch | vs mmseg 1.2.2 "
             "(issue 5's figures, measured on the machine of that time) "
             "| peak memory (GiB) | GFLOPs | GFLOP/s | % of GEMM ceiling | logits vs fp32: max rel. diff "
             "| argmax changed | fast paths |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        size, key = f"{p.size[0]}x{p.size[1]}", (p.model, p.size)
        if p.error:
            lines.append(f"| `{p.model}` | {size} | {p.mode} | failed: {p.error} |" + " |" * 11)
            continue
        t = median(p)
        g = gflops.get(key, float("nan"))
        vs_eager = f"{eager[key] / t:.2f}×" if key in eager and p.mode != "eager" else ""
        low = p.mode == "optimized" and p.dtype != "float32"
        vs_switch = f"{switch[key] / t:.2f}×" if key in switch and low else ""
        ref = None
        if p.size == (512, 1024) and p.model in MMSEG_FIGURES_512x1024:
            ref = MMSEG_FIGURES_512x1024[p.model][1]
        elif p.size == (1024, 2048) and p.model in MMSEG_FIGURES_1024x2048:
            ref = MMSEG_FIGURES_1024x2048[p.model][0]
        vs_mmseg = f"{ref / t:.2f}× ({ref} s)" if ref else ""
        mode = p.mode + ("" if p.mode == "eager" else
                         (f", {p.dtype}" if p.dtype != "float32" else "") + (", compiled" if p.compile else ""))
        ceiling = p.ceiling_gflops
        share = f"{100 * g / t / ceiling:.0f}% of {ceiling:.0f}" if ceiling else ""
        diff = f"{p.max_rel_diff:.1e}" if p.max_rel_diff is not None else ""
        changed = f"{100 * p.argmax_changed:.2f}%" if p.argmax_changed is not None else ""
        lines.append(f"| `{p.model}` | {size} | {mode} | {t:.2f} | {len(p.latencies_s)} | {vs_eager} | {vs_switch} | "
                     f"{vs_mmseg} | {p.peak_memory_gib:.2f} ({p.memory_kind}) | {g:.0f} | {g / t:.0f} | {share} | "
                     f"{diff} | {changed} | {p.fast_paths} |")
    return "\n".join(lines) + "\n"


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512x1024, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return h, w


def run(args: argparse.Namespace) -> int:
    """The sub-command: measure the grid (models × sizes × modes), write the table and the plot."""
    from ..registry import resolve
    for name in args.models:
        resolve(name)    # UnknownModelError (with suggestions) before any process is started
    low = args.dtype != "float32"
    points = [Point(model=m, size=s, mode=mode, warmup=args.warmup, repeats=args.repeats, device=args.device,
                    dtype=args.dtype if mode == "optimized" else "float32", compile=args.compile,
                    threads=args.threads, ceiling=not args.no_ceiling,
                    compare_fp32=low and mode == "optimized" and not args.no_compare)
              for s in args.sizes for m in args.models for mode in args.modes]
    results = measure(points, timeout=args.timeout)
    gflops = {(p.model, p.size): count_gflops(p.model, p.size) for p in results}
    table = markdown_table(results, gflops)
    print(table)
    if args.output:
        write_outputs(Path(args.output), results, table)
    return 0 if all(not p.error for p in results) else 1


def write_outputs(stem: Path, points: list[Point], table: str) -> None:
    """``<stem>.md`` (the table), ``<stem>.json`` (every raw number) and ``<stem>.png`` (against image area)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text(table, encoding="utf-8")
    stem.with_suffix(".json").write_text(json.dumps([asdict(p) for p in points], indent=1), encoding="utf-8")
    plot_against_area(points, stem.with_suffix(".png"))
    print(f"wrote {stem.with_suffix('.md')}, {stem.with_suffix('.json')}, {stem.with_suffix('.png')}")


# ---------------------------------------------------------------- the PNG: drawn with pillow, no matplotlib

_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def _nice_max(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k that is >= ``value`` (axis top)."""
    import math
    if value <= 0:
        return 1.0
    base = 10 ** math.floor(math.log10(value))
    return next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= value)


def plot_against_area(points: list[Point], path: Path, width: int = 1400, height: int = 760) -> None:
    """Two line plots side by side, peak memory and median latency against image area (Mpx), one line per
    (model, mode); sizes of one line are joined in order of area. Failed points are left out."""
    from PIL import Image, ImageDraw, ImageFont
    series: dict[str, list[tuple[float, float, float]]] = {}
    for p in points:
        if p.error or not p.latencies_s:
            continue
        variant = [v for v in (p.mode if p.mode != "optimized" else "", p.dtype if p.dtype != "float32" else "") if v]
        label = p.model + (f" ({', '.join(variant)})" if variant else "")
        series.setdefault(label, []).append((p.size[0] * p.size[1] / 1e6, p.peak_memory_gib, median(p)))
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    legend_h = 20 * ((len(series) + 2) // 3) + 20
    panels = (("peak memory (GiB)", 1), ("median latency (s)", 2))
    x_max = _nice_max(max((v[0] for pts in series.values() for v in pts), default=1.0))
    panel_w = width // 2
    for k, (title, index) in enumerate(panels):
        left, top = k * panel_w + 70, 40
        right, bottom = (k + 1) * panel_w - 30, height - legend_h - 50
        y_max = _nice_max(max((v[index] for pts in series.values() for v in pts), default=1.0))
        draw.text((left, 12), f"{title} vs image area", fill="black", font=font)
        draw.rectangle((left, top, right, bottom), outline="black")
        for t in range(6):   # gridlines and tick labels
            fx, fy = t / 5, t / 5
            gx = left + fx * (right - left)
            gy = bottom - fy * (bottom - top)
            draw.line((gx, top, gx, bottom), fill=(225, 225, 225))
            draw.line((left, gy, right, gy), fill=(225, 225, 225))
            draw.text((gx - 10, bottom + 6), f"{fx * x_max:.3g}", fill="black", font=font)
            draw.text((left - 45, gy - 6), f"{fy * y_max:.3g}", fill="black", font=font)
        draw.text(((left + right) // 2 - 60, bottom + 24), "image area (Mpx, batch 1)", fill="black", font=font)
        for n, (label, pts) in enumerate(sorted(series.items())):
            colour = _COLOURS[n % len(_COLOURS)]
            xy = [(left + a / x_max * (right - left), bottom - v / y_max * (bottom - top))
                  for a, *vals in sorted(pts) for v in [vals[index - 1]]]
            if len(xy) > 1:
                draw.line(xy, fill=colour, width=2)
            for x, y in xy:
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    for n, label in enumerate(sorted(series)):   # legend, three columns
        x = 70 + (n % 3) * (width - 100) // 3
        y = height - legend_h + 10 + 20 * (n // 3)
        colour = _COLOURS[n % len(_COLOURS)]
        draw.line((x, y + 6, x + 24, y + 6), fill=colour, width=3)
        draw.text((x + 30, y), label, fill="black", font=font)
    image.save(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=["fcn_r101", "danet_r101"], metavar="NAME")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(512, 1024)], metavar="HxW")
    parser.add_argument("--modes", nargs="+", choices=("eager", "optimized"), default=["eager", "optimized"])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="dtype of the optimized mode (optimize_for_inference(dtype=...))")
    parser.add_argument("--no-ceiling", action="store_true",
                        help="skip the GEMM ceiling measured in each point's process (the %% column stays empty)")
    parser.add_argument("--no-compare", action="store_true",
                        help="with a low --dtype: skip the float32 forward that gives the logits difference")
    parser.add_argument("--compile", action="store_true", help="torch.compile in the optimized mode")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per point before it is abandoned")
    parser.add_argument("--output", default=None, metavar="STEM",
                        help="write STEM.md, STEM.json and STEM.png (e.g. docs/benchmark)")


def register(subparsers) -> None:
    parser = subparsers.add_parser("benchmark", help="latency, peak memory and GFLOP/s, eager vs optimised",
                                   description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.set_defaults(run=run)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2])
    else:
        sys.exit(f"usage: python -m cityseg_zoo.cli.benchmark --worker JSON (internal); "
                 f"use `cityseg-zoo benchmark` (pid {os.getpid()})")
