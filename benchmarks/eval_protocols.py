"""Seconds per 1024x2048 image for every eval protocol in the weights manifest: tile by tile vs batched tiles.

The distinct protocols are collected from ``cityseg_zoo/weights_manifest.json`` (each weight's ``eval``); each is
measured with the cheapest architecture (fewest GFLOPs per forward) among the weights that use it, random
weights, float32, ``model.optimize_for_inference()`` (BN folding, channels_last), in this one process with one
thread setting. For each protocol:

1. a sweep of the crop forward alone: seconds per crop at batch 1 and at batch N (``--tile-batch``), the
   network's own throughput, which picks the N used below (lowest seconds per crop);
2. the whole protocol on one image (:func:`cityseg_zoo.inference.predict`), ``tile_batch=1`` and ``tile_batch=N``
   interleaved: each scale is predicted on its own by both variants in turn, the order alternating (A B, B A,
   ...) over scales and repeats, after a warm-up forward of each batch size; a variant's seconds per image are
   the sum over its scales (median over ``--repeats`` / ``--repeats-multiscale``), and the two results of each
   scale are compared (Frobenius relative error, the worst scale reported).

Whole-image protocols without flip have one forward per image and nothing to batch (reported, not re-timed).
GFLOP/s are counted on the meta device (convolutions and matmuls) and compared with a square float32 GEMM timed
in the same process: where the convolutions already run near that ceiling, batching cannot add much.

    python benchmarks/eval_protocols.py --lock /tmp/cityseg_bench.lock          # all protocols (over 1 h, 2 cores)
    flock /tmp/cityseg_bench.lock python benchmarks/eval_protocols.py --quick --only danet_r101_cityscapes

``--lock FILE`` takes that file's exclusive lock (as ``flock FILE`` does) around each timed unit (the GEMM, a
protocol's sweep, each interleaved pair of runs) instead of the whole run, so other benchmarks that use the same
lock can run in between but never during a measurement (do not also wrap the command in ``flock FILE``).

Writes ``--output`` ``.md`` and ``.json`` (default ``docs/eval_protocols``; ``--quick``: nothing unless given).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import cityseg_zoo
from cityseg_zoo.cli.benchmark import count_gflops
from cityseg_zoo.inference import EvalProtocol, predict, slide_windows

MANIFEST = Path(cityseg_zoo.__file__).parent / "weights_manifest.json"


@dataclass
class Row:
    protocol: str
    weights: list[str]
    model: str
    crops_per_image: int                  # network forwards of one image, tile by tile
    crop_size: list[int]                  # what each forward sees (the image itself in whole mode)
    gflops_per_image: float
    tile_batch: int = 1                   # N of the batched run (1: nothing to batch)
    sweep_s_per_crop: dict = field(default_factory=dict)    # N -> seconds per crop of one batch-N forward
    tile_by_tile_s: list[float] = field(default_factory=list)
    batched_s: list[float] = field(default_factory=list)
    cpu_s: dict = field(default_factory=dict)   # N -> process CPU seconds per image (all threads), per run
    load_average: list[float] = field(default_factory=list)   # 1-min load average before and after
    rel_error: float | None = None        # batched vs tile by tile, Frobenius


def manifest_protocols() -> dict[EvalProtocol, list[tuple[str, str]]]:
    """Distinct eval protocols -> [(weight name, architecture)] that use them (notes and the identity
    ``resize`` of mmseg's 1024x2048 pipeline do not change the computation)."""
    weights = json.loads(MANIFEST.read_text())["weights"]
    found: dict[EvalProtocol, list[tuple[str, str]]] = {}
    for entry in weights:
        protocol = EvalProtocol.from_cfg({"eval": entry["eval"]})
        found.setdefault(protocol, []).append((entry["name"], entry["architecture"]))
    return found


def scaled_protocol(protocol: EvalProtocol, factor: int) -> EvalProtocol:
    """``--quick``: crop and stride divided by ``factor`` (as the image is), so the tiling stays alike."""
    if protocol.mode != "slide" or factor == 1:
        return protocol
    return protocol.override(crop_size=tuple(max(1, c // factor) for c in protocol.crop_size),
                             stride=tuple(max(1, s // factor) for s in protocol.stride))


def crops_per_scale(protocol: EvalProtocol, height: int, width: int) -> list[int]:
    """Network forwards per scale for one image, flipped copies included."""
    counts = []
    for scale in protocol.scales:
        h, w = int(height * scale + 0.5), int(width * scale + 0.5)
        tiles = 1 if protocol.mode == "whole" else len(list(
            slide_windows(h, w, protocol.crop_size, protocol.stride, protocol.style)))
        counts.append(tiles * (2 if protocol.flip else 1))
    return counts


def estimated_pixels(protocol: EvalProtocol, size: tuple[int, int]) -> int:
    """Pixels the network sees per image: orders the protocols cheapest first."""
    if protocol.mode == "whole":
        return sum(int(size[0] * s + 0.5) * int(size[1] * s + 0.5) for s in protocol.scales) * (1 + protocol.flip)
    return sum(crops_per_scale(protocol, *size)) * protocol.crop_size[0] * protocol.crop_size[1]


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


LOCK: str | None = None


@contextlib.contextmanager
def bench_lock():
    """The exclusive lock of ``--lock`` while a timed unit runs (nothing without ``--lock``)."""
    if LOCK is None:
        yield
        return
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def timed(fn, cpu: list | None = None) -> tuple[float, object]:
    """Wall seconds of ``fn()`` and its result; its process CPU seconds are added to ``cpu[-1]`` if given."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    if cpu is not None:
        cpu[-1] += time.process_time() - c0
    return seconds, out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def measure(protocol: EvalProtocol, users: list[tuple[str, str]], size: tuple[int, int], candidates: list[int],
            repeats: int, repeats_multiscale: int, log) -> Row:
    height, width = size
    crop = tuple(protocol.crop_size) if protocol.mode == "slide" else None
    counts = crops_per_scale(protocol, height, width)
    if crop is not None:
        costs = {arch: count_gflops(arch, crop) for arch in sorted({a for _, a in users})}
        arch = min(costs, key=costs.get)
        gflops = costs[arch] * sum(counts)
    else:  # one forward per scale at the scaled image size
        sizes = [(int(height * s + 0.5), int(width * s + 0.5)) for s in protocol.scales]
        costs = {arch: sum(count_gflops(arch, s) for s in sizes) for arch in sorted({a for _, a in users})}
        arch = min(costs, key=costs.get)
        gflops = costs[arch] * (2 if protocol.flip else 1)
    row = Row(str(protocol), [w for w, _ in users], arch, sum(counts), list(crop or size), gflops)
    row.load_average.append(os.getloadavg()[0])
    log(f"== {protocol}: {arch}, {row.crops_per_image} forwards/image, {gflops:.0f} GFLOPs/image")
    torch.manual_seed(0)
    model = cityseg_zoo.create_model(arch).eval()
    model.optimize_for_inference()
    x = torch.randn(1, 3, height, width)
    largest = max(counts)  # crops of one scale: a batch never mixes scales
    candidates = sorted({min(n, largest) for n in candidates if n > 1 and largest > 1})
    with torch.inference_mode(), contextlib.ExitStack() as held:
        held.enter_context(bench_lock())  # the sweep, the warm-ups and a single run: one unit
        if candidates and crop is not None:  # the network alone at the crop size: seconds per crop
            sweep = {}
            for n in [1, *candidates, *reversed(candidates), 1]:  # palindromic order, best of two
                tile = torch.randn(n, 3, *crop)
                if n not in sweep:
                    model(tile)  # warm-up (oneDNN primitives for this batch size)
                seconds, _ = timed(lambda: model(tile))
                sweep.setdefault(n, []).append(seconds / n)
            row.sweep_s_per_crop = {n: min(times) for n, times in sweep.items()}
            log("   crop forward alone, s per crop: " + ", ".join(
                f"batch {n}: {t:.2f}" for n, t in row.sweep_s_per_crop.items()))
            row.tile_batch = min(candidates, key=lambda n: row.sweep_s_per_crop[n])
        elif candidates:  # whole image + flip: the pair is the only batch there is
            row.tile_batch = 2
            model(torch.cat([x, x]))  # warm-up of the batch-2 forward
        if crop is None:
            model(x)  # warm-up
        if row.tile_batch == 1:
            row.cpu_s[1] = [0.0]
            seconds, _ = timed(lambda: predict(model, x, protocol=protocol), row.cpu_s[1])
            row.tile_by_tile_s.append(seconds)
            row.load_average.append(os.getloadavg()[0])
            log(f"   tile by tile: {seconds:.1f} s (nothing to batch)")
            return row
        held.close()
        repeats = repeats if len(protocol.scales) == 1 else repeats_multiscale
        # Interleaved: every scale is timed on its own, both variants in turn (A B, B A, ...), so a change of
        # load on the machine hits both; the seconds of the scales add up to the seconds of the protocol.
        errors, step = [], 0
        for _ in range(repeats):
            totals = {1: 0.0, row.tile_batch: 0.0}
            for n in totals:
                row.cpu_s.setdefault(n, []).append(0.0)
            for scale in protocol.scales:
                one_scale = protocol.override(scales=(scale,))
                order = (1, row.tile_batch) if step % 2 == 0 else (row.tile_batch, 1)
                step += 1
                outputs = {}
                with bench_lock():  # one interleaved pair
                    for n in order:
                        seconds, outputs[n] = timed(lambda: predict(model, x, protocol=one_scale, tile_batch=n),
                                                    row.cpu_s[n])
                        totals[n] += seconds
                errors.append(rel(outputs[row.tile_batch], outputs[1]))
                log(f"   scale {scale:g}: " + ", ".join(f"tile_batch={n} {totals[n]:.1f} s so far" for n in order))
            row.tile_by_tile_s.append(totals[1])
            row.batched_s.append(totals[row.tile_batch])
            log(f"   one image: tile by tile {totals[1]:.1f} s, batched (N={row.tile_batch}) "
                f"{totals[row.tile_batch]:.1f} s")
        row.rel_error = max(errors)
    row.load_average.append(os.getloadavg()[0])
    return row


def markdown(rows: list[Row], info: dict) -> str:
    lines = [f"Seconds per {info['size'][0]}x{info['size'][1]} image, float32, `optimize_for_inference()`, "
             f"{info['threads']} threads, {info['cpu']}; square float32 GEMM ceiling in this run: "
             f"{info['gemm_gflops']:.0f} GFLOP/s"
             + (f" at the start, {info['gemm_gflops_end']:.0f} at the end" if "gemm_gflops_end" in info else "")
             + f". Random weights (the time does not depend on them); median over "
             f"{info['repeats']} run(s) per variant ({info['repeats_multiscale']} for multi-scale), interleaved scale "
             f"by scale in alternating order. `python benchmarks/eval_protocols.py"
             f"{' --quick' if info['quick'] else ''}`.", "",
             "| protocol | model (weights using the protocol) | forwards per image | GFLOPs per image "
             "| s/image tile-by-tile | s/image batched (N) | speed-up | GFLOP/s tile-by-tile (% of GEMM) "
             "| s per crop at batch 1 / N (network alone) | CPU s/image tile-by-tile / batched "
             "| batched vs tile-by-tile (rel.) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        single = statistics.median(r.tile_by_tile_s)
        rate = r.gflops_per_image / single
        if r.batched_s:
            batched = statistics.median(r.batched_s)
            batched_text, speedup = f"{batched:.1f} (N={r.tile_batch})", f"{single / batched:.2f}×"
        else:
            batched_text, speedup = "— (one forward: nothing to batch)", "—"
        sweep = " / ".join(f"{r.sweep_s_per_crop[n]:.2f}" for n in sorted(r.sweep_s_per_crop, key=int))
        sweep = f"{sweep} (N={'/'.join(str(n) for n in sorted(r.sweep_s_per_crop, key=int))})" if sweep else ""
        error = f"{r.rel_error:.1e}" if r.rel_error is not None else ""
        cpu = " / ".join(f"{statistics.median(r.cpu_s[n]):.0f}" for n in sorted(r.cpu_s, key=int))
        users = ", ".join(f"`{w}`" for w in r.weights[:3]) + (f" + {len(r.weights) - 3} more"
                                                              if len(r.weights) > 3 else "")
        lines.append(f"| {r.protocol} | `{r.model}` ({users}) | "
                     f"{r.crops_per_image} | {r.gflops_per_image:.0f} | {single:.1f} | {batched_text} | {speedup} | "
                     f"{rate:.0f} ({100 * rate / info['gemm_gflops']:.0f}%) | {sweep} | {cpu} | {error} |")
    lines += ["", READING.format(**info, load=", ".join(f"{v:.1f}" for r in rows for v in r.load_average[:1]))]
    return "\n".join(lines) + "\n"


READING = """\
*Reading the table.* "forwards per image" counts network passes tile by tile (tiles × flips, summed over
scales). "s per crop at batch 1 / N" times the network alone on crops of the protocol's size: if it barely drops
with N, the convolutions already run near the CPU's GEMM throughput and stacking tiles can only save per-call
overheads (thread fork/join per op, small non-GEMM ops, oneDNN reorders, the channels_last conversion). The
rest of a protocol (padding, cropping, accumulating, resizing logits, exp/log for the encoding style) is the same
in both variants. "CPU s/image" is the process's CPU time (all threads): wall time well above CPU time / threads
means the cores were shared with other work during the run (1-min load average at the start of each row:
{load}); the variants were interleaved scale by scale so that both saw the same load."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a 256x512 image with crops and strides divided by 4: a smoke run of minutes")
    parser.add_argument("--tile-batch", type=int, nargs="+", default=[2, 4], metavar="N",
                        help="batch sizes to try (the best by the crop sweep is used for the full protocol)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs per variant of a single-scale protocol, alternating the order")
    parser.add_argument("--repeats-multiscale", type=int, default=1,
                        help="runs per variant of a multi-scale protocol (the order already alternates over scales)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--only", nargs="+", metavar="ARCH_OR_WEIGHT",
                        help="only the protocols used by these weights or architectures")
    parser.add_argument("--lock", metavar="FILE", help="take FILE's exclusive lock around each timed unit")
    parser.add_argument("--output", default=None, metavar="STEM",
                        help="write STEM.md and STEM.json (default docs/eval_protocols; with --quick: none)")
    args = parser.parse_args()
    global LOCK
    LOCK = args.lock
    if args.threads:
        torch.set_num_threads(args.threads)
    factor = 4 if args.quick else 1
    size = (1024 // factor, 2048 // factor)
    output = args.output or (None if args.quick else "docs/eval_protocols")
    protocols = manifest_protocols()
    if args.only:
        protocols = {p: users for p, users in protocols.items()
                     if any(w in args.only or a in args.only for w, a in users)}
    plan = [(scaled_protocol(p, factor), users) for p, users in protocols.items()]
    plan.sort(key=lambda item: estimated_pixels(item[0], size))  # cheap first

    def log(text):
        print(text, file=sys.stderr, flush=True)

    info = {"size": size, "threads": torch.get_num_threads(), "cpu": cpu_name(),
            "torch": torch.__version__, "repeats": args.repeats, "repeats_multiscale": args.repeats_multiscale,
            "quick": args.quick,
            "candidates": args.tile_batch}
    with bench_lock():
        info["gemm_gflops"] = gemm_gflops()
    log(f"GEMM ceiling: {info['gemm_gflops']:.0f} GFLOP/s, {info['threads']} threads")
    rows = []
    for protocol, users in plan:
        rows.append(measure(protocol, users, size, args.tile_batch, args.repeats, args.repeats_multiscale, log))
        table = markdown(rows, info)
        if output:  # after every protocol: a long run that stops early keeps what it measured
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            Path(output).with_suffix(".md").write_text(table, encoding="utf-8")
            Path(output).with_suffix(".json").write_text(
                json.dumps({"info": info, "rows": [asdict(r) for r in rows]}, indent=1), encoding="utf-8")
    with bench_lock():
        info["gemm_gflops_end"] = gemm_gflops()
    table = markdown(rows, info)
    print(table)
    if output:
        Path(output).with_suffix(".md").write_text(table, encoding="utf-8")
        Path(output).with_suffix(".json").write_text(
            json.dumps({"info": info, "rows": [asdict(r) for r in rows]}, indent=1), encoding="utf-8")
        log(f"wrote {Path(output).with_suffix('.md')} and {Path(output).with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
