"""Mask2Former-Swin side by side: transformers' Mask2FormerForUniversalSegmentation (eager PyTorch, its default SDPA
attention in the Swin backbone) against the zoo's model with the inference switch (``model.optimize_for_inference()``),
on the same weights, producing the same thing: per-class semantic scores at the input size.

    flock /tmp/cityseg_bench.lock python benchmarks/mask2former.py     # -> docs/mask2former_benchmark.md / .json

What each variant runs on a ``1 x 3 x H x W`` float32 input:

* ``transformers``: ``model(pixel_values=x)``, then detectron2's ``semantic_inference`` (the recipe behind the
  reported val mIoU) written as a transformers user would: the 100 mask logits upsampled to ``H x W`` (bilinear,
  ``align_corners=False``), sigmoid, einsum with ``softmax(class)[..., :-1]``. Its forward alone is timed too.
* ``zoo-eager``: ``create_model(arch, pretrained=folder)(x)`` without the switch (for attribution);
* ``zoo-switch``: the same after ``optimize_for_inference()``.

Each variant runs in its own fresh Python process, so its peak RSS (``ru_maxrss``: interpreter, libraries, weights
and activations) is its own. Every process uses the same thread count (``--threads``, default 2), float32, batch 1;
latency is the median of ``--repeats`` runs after ``--warmup`` untimed ones (Swin-L at 1024x2048: 1 + 2). All load
one folder written by transformers' ``save_pretrained`` (seeded random weights). The same run measures the float32
GEMM ceiling of this machine before and after the models (``cityseg_zoo.cli.benchmark.gemm_ceiling``: the best of
several large matmuls and channels_last convolutions) and counts each variant's FLOPs with ``FlopCounterMode``
(multiply-add = 2; the zoo's in-place GEMMs ``addmm_`` / ``addmm(out=)`` are not counted by it, so its Swin blocks
and deformable encoder layers are counted on their out-of-place path: the same products). One extra forward per
variant times its parts (backbone, pixel decoder, transformer decoder, the rest) with forward hooks.

transformers is imported only by its own worker processes (and by this parent to write the weights).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _side_by_side import (ROOT, count_gflops, current_rss_gib, gemm_worker, parse_cases, peak_rss_gib, spawn,
                           write_report)

TAG = "MASK2FORMER_RESULT"
CASES = [("t", (512, 1024)), ("t", (1024, 2048)), ("l", (512, 1024)), ("l", (1024, 2048))]
VARIANTS = ["transformers", "zoo-eager", "zoo-switch"]
PARTS = {"transformers": {"backbone": "model.pixel_level_module.encoder",
                          "pixel decoder": "model.pixel_level_module.decoder",
                          "transformer decoder": "model.transformer_module"},
         "zoo": {"backbone": "backbone", "pixel decoder": "head.pixel_decoder",
                 "transformer decoder": "head.decoder"}}
NAMES = {"t": "Swin-T", "l": "Swin-L"}


# ------------------------------------------------------------------------------------------- worker side

def _load(job: dict):
    """(callable returning the semantic scores, callable running the network forward only, the model)."""
    import torch
    import torch.nn.functional as F
    if job["variant"] == "transformers":
        from transformers import Mask2FormerForUniversalSegmentation
        model = Mask2FormerForUniversalSegmentation.from_pretrained(job["folder"]).eval()

        def scores(x):
            out = model(pixel_values=x)
            masks = F.interpolate(out.masks_queries_logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
            return torch.einsum("bqc,bqhw->bchw", out.class_queries_logits.softmax(-1)[..., :-1], masks.sigmoid())
        return scores, (lambda x: model(pixel_values=x)), model
    import cityseg_zoo
    model = cityseg_zoo.create_model(f"mask2former_swin_{job['size_name']}", pretrained=job["folder"]).eval()
    if job["variant"] == "zoo-switch":
        model.optimize_for_inference()
    return model, (lambda x: model.head(model.backbone(x))), model


def _part_times(run, model, parts: dict[str, str], x) -> dict[str, float]:
    """Seconds spent in each named submodule during one ``run(x)``, and in the rest (``other``)."""
    starts, times, handles = {}, {}, []
    for label, path in parts.items():
        module = model.get_submodule(path)
        handles.append(module.register_forward_pre_hook(lambda m, a, label=label: starts.__setitem__(
            label, time.perf_counter())))
        handles.append(module.register_forward_hook(lambda m, a, o, label=label: times.__setitem__(
            label, time.perf_counter() - starts[label])))
    try:
        t0 = time.perf_counter()
        run(x)
        total = time.perf_counter() - t0
    finally:
        for handle in handles:
            handle.remove()
    return {**times, "other": total - sum(times.values())}


def worker(job: dict) -> dict:
    import torch
    torch.set_num_threads(job["threads"])
    started = time.perf_counter()
    scores, forward, model = _load(job)
    result = {"load_s": time.perf_counter() - started, "rss_after_load_gib": current_rss_gib()}
    x = torch.randn(1, 3, *job["size"], generator=torch.Generator().manual_seed(0))
    latencies, forward_latencies = [], []
    with torch.inference_mode():
        for i in range(job["warmup"] + job["repeats"]):
            t0 = time.perf_counter()
            out = scores(x)
            if i >= job["warmup"]:
                latencies.append(time.perf_counter() - t0)
        peak = peak_rss_gib()
        if job["variant"] == "transformers":   # its network forward alone, after the timed runs
            for _ in range(job["repeats"]):
                t0 = time.perf_counter()
                forward(x)
                forward_latencies.append(time.perf_counter() - t0)
        parts = PARTS["transformers" if job["variant"] == "transformers" else "zoo"]
        part_times = _part_times(scores, model, parts, x)
    result.update(latencies_s=latencies, median_s=statistics.median(latencies), peak_rss_gib=peak,
                  logits_shape=list(out.shape), logits_checksum=float(out.double().abs().mean()),
                  part_times_s=part_times)
    if forward_latencies:
        result["forward_median_s"] = statistics.median(forward_latencies)
    if job.get("flops", True):
        # After the timing: FlopCounterMode's overhead is not timed.
        result["gflops"] = count_gflops(scores, model, x, ("SwinBlock", "DeformableEncoderLayer"))
    return result


# ------------------------------------------------------------------------------------------- parent side

def write_weights(variant: str, folder: Path) -> None:
    """A transformers save_pretrained folder of Mask2Former-Swin-``variant`` with seeded random weights."""
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    from cityseg_zoo.backbones.swin import SWIN_CONFIGS
    cfg = SWIN_CONFIGS[variant]
    backbone = SwinConfig(embed_dim=cfg.embed_dim, depths=list(cfg.depths), num_heads=list(cfg.num_heads),
                          window_size=cfg.window_size, drop_path_rate=0.3,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(Mask2FormerConfig(backbone_config=backbone, num_labels=19,
                                                                  decoder_layers=10)).eval()
    model.save_pretrained(folder)


def table(rows: list[dict], gemm: float) -> str:
    lines = [f"GEMM ceiling measured in this run: {gemm:.0f} GFLOP/s (float32, best of the `gemm_ceiling` workloads).", "",
             "| model | size | implementation | median latency (s) | runs | GFLOPs | GFLOP/s | % of GEMM peak "
             "| RSS after load (GiB) | peak RSS (GiB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        label = f"Mask2Former-{NAMES[r['size_name']]} | {r['size'][0]}x{r['size'][1]} | {r['variant']}"
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error']} | | | | | | |")
            continue
        gflops = r.get("gflops")
        rate = gflops / r["median_s"] if gflops else None
        lines.append(f"| {label} | {r['median_s']:.2f} | {len(r['latencies_s'])} | "
                     + (f"{gflops:.0f} | {rate:.0f} | {100 * rate / gemm:.0f}% | " if rate else "- | - | - | ")
                     + f"{r['rss_after_load_gib']:.2f} | {r['peak_rss_gib']:.2f} |")
    lines += ["", "Where the time goes (seconds in one run, measured with forward hooks; `other`: the rest, e.g. the "
              "semantic inference at the input size):", "",
              "| model | size | implementation | backbone | pixel decoder | transformer decoder | other | "
              "transformers forward alone |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            continue
        p = r["part_times_s"]
        fwd = f"{r['forward_median_s']:.2f}" if "forward_median_s" in r else ""
        lines.append(f"| Mask2Former-{NAMES[r['size_name']]} | {r['size'][0]}x{r['size'][1]} | {r['variant']} | "
                     f"{p['backbone']:.2f} | {p['pixel decoder']:.2f} | {p['transformer decoder']:.2f} | "
                     f"{p['other']:.2f} | {fwd} |")
    lines += ["", "| model | size | speed-up (transformers / zoo-switch latency) | peak RSS (zoo-switch / "
              "transformers) | goal |", "|---|---|---|---|---|"]
    for size_name, size in dict.fromkeys((r["size_name"], tuple(r["size"])) for r in rows):   # run order
        by = {r["variant"]: r for r in rows if r["size_name"] == size_name and tuple(r["size"]) == size}
        hf, zoo = by.get("transformers"), by.get("zoo-switch")
        if not hf or not zoo or "error" in hf or "error" in zoo:
            continue
        speed, memory = hf["median_s"] / zoo["median_s"], zoo["peak_rss_gib"] / hf["peak_rss_gib"]
        goal = ("met" if speed >= 1.5 and memory <= 0.7 else "speed " + ("met" if speed >= 1.5 else "missed")
                + ", memory " + ("met" if memory <= 0.7 else "missed"))
        lines.append(f"| Mask2Former-{NAMES[size_name]} | {size[0]}x{size[1]} | {speed:.2f}× | {memory:.2f}× | "
                     f"≥ 1.5× faster, ≤ 0.7× memory: {goal} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large-repeats", type=int, default=2,
                        help="timed runs of Swin-L at 1024x2048 (the slowest point)")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--cases", nargs="+", default=[f"{v}@{h}x{w}" for v, (h, w) in CASES],
                        help="SWIN@HxW, e.g. t@512x1024")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP counts (one more forward each)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--output", default=str(ROOT / "docs" / "mask2former_benchmark"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        result = gemm_worker(job) if job.get("kind") == "gemm" else worker(job)
        print(TAG + " " + json.dumps(result), flush=True)
        return 0

    cases = parse_cases(args.cases)
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="mask2former-bench-") as tmp:
        gemm = spawn(__file__, TAG, {"kind": "gemm", "threads": args.threads}, args.timeout)["gemm_gflops"]
        print(f"GEMM peak: {gemm:.0f} GFLOP/s", flush=True)
        for name, size in cases:
            folder = Path(tmp) / name
            if not folder.exists():
                write_weights(name, folder)
            repeats = args.large_repeats if (name, size) == ("l", (1024, 2048)) else args.repeats
            for variant in args.variants:
                job = {"variant": variant, "size_name": name, "size": list(size), "folder": str(folder),
                       "threads": args.threads, "warmup": args.warmup, "repeats": repeats, "flops": not args.no_flops}
                result = {**job, **spawn(__file__, TAG, job, args.timeout)}
                rows.append(result)
                print(f"Mask2Former-{NAMES[name]} {size[0]}x{size[1]} {variant}: "
                      + (result.get("error") or f"{result['median_s']:.2f} s, peak RSS {result['peak_rss_gib']:.2f} GiB, "
                                                 f"parts {({k: round(v, 2) for k, v in result['part_times_s'].items()})}"),
                      flush=True)
        gemm_after = spawn(__file__, TAG, {"kind": "gemm", "threads": args.threads}, args.timeout)["gemm_gflops"]
    gemm_before, gemm = gemm, max(gemm, gemm_after)
    text = table(rows, gemm)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
               f"torch threads {args.threads}, float32, batch 1, warm-up {args.warmup}, median of {args.repeats} "
               f"({args.large_repeats} for Swin-L at 1024x2048)")
    import torch
    import transformers
    header = (f"# Mask2Former: transformers vs cityseg_zoo (inference switch)\n\nMade by `flock /tmp/cityseg_bench.lock "
              f"python benchmarks/mask2former.py{' ' + ' '.join(argv) if argv else ''}` ({machine}; torch "
              f"{torch.__version__}, transformers {transformers.__version__}). GEMM measured before and after the "
              f"models: {gemm_before:.0f} / {gemm_after:.0f} GFLOP/s (the higher is used). 1-minute load average "
              f"before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} (the machine is shared; other processes' "
              "load slows every variant).\n\n")
    print(text)
    write_report(args.output, header, text, {"gemm_gflops": [gemm_before, gemm_after], "threads": args.threads,
                                            "rows": rows})
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
