"""SegFormer side by side: transformers' SegformerForSemanticSegmentation (eager PyTorch, its default SDPA attention)
against the zoo's model with the inference switch (``model.optimize_for_inference()``), on the same weights.

    flock /tmp/cityseg_bench.lock python benchmarks/segformer.py     # -> docs/segformer_benchmark.md / .json

Each variant runs in its own fresh Python process, so its peak RSS (``ru_maxrss``: interpreter, libraries, weights
and activations) is its own. Every process uses the same thread count (``--threads``, default 2), float32, batch 1;
latency is the median of ``--repeats`` forwards after ``--warmup`` untimed ones. Both load one folder written by
transformers' ``save_pretrained`` (random weights): transformers with ``from_pretrained``, the zoo with
``create_model(arch, pretrained=folder)``. The same run measures the float32 GEMM ceiling of this machine
(``cityseg_zoo.cli.benchmark.gemm_ceiling``: the best of several large matmuls and channels_last convolutions)
and counts each model's FLOPs with ``FlopCounterMode`` (multiply-add = 2), to say how close to that ceiling each
variant runs. ``--profile`` adds a torch.profiler table (top ops by self CPU time) per variant.

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

TAG = "SEGFORMER_RESULT"
CASES = [("b5", (1024, 1024)), ("b0", (1024, 2048))]
VARIANTS = ["transformers", "zoo-eager", "zoo-switch"]   # zoo-eager: the zoo without the switch, for attribution


# ------------------------------------------------------------------------------------------- worker side

def _load(job: dict):
    """(callable running one forward, the model) for the variant."""
    if job["variant"].startswith("transformers"):
        from transformers import SegformerForSemanticSegmentation
        attn = "eager" if job["variant"] == "transformers-eager-attention" else "sdpa"
        model = SegformerForSemanticSegmentation.from_pretrained(job["folder"], attn_implementation=attn).eval()
        return (lambda x: model(pixel_values=x).logits), model
    import cityseg_zoo
    model = cityseg_zoo.create_model(f"segformer_{job['size_name']}", pretrained=job["folder"]).eval()
    if job["variant"] == "zoo-switch":
        model.optimize_for_inference()
    return (lambda x: model.forward_logits_lowres(x)), model


def worker(job: dict) -> dict:
    import torch
    torch.set_num_threads(job["threads"])
    started = time.perf_counter()
    forward, model = _load(job)
    result = {"load_s": time.perf_counter() - started, "rss_after_load_gib": current_rss_gib()}
    x = torch.randn(1, 3, *job["size"], generator=torch.Generator().manual_seed(0))
    latencies = []
    with torch.inference_mode():
        for i in range(job["warmup"] + job["repeats"]):
            t0 = time.perf_counter()
            out = forward(x)
            if i >= job["warmup"]:
                latencies.append(time.perf_counter() - t0)
    result.update(latencies_s=latencies, median_s=statistics.median(latencies), peak_rss_gib=peak_rss_gib(),
                  logits_shape=list(out.shape), logits_checksum=float(out.double().abs().mean()))
    if job.get("profile"):
        from torch.profiler import ProfilerActivity, profile
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            forward(x)
        result["profile"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    result["gflops"] = count_gflops(forward, model, x)   # after the timing: FlopCounterMode's dispatch overhead is not timed
    return result


# ------------------------------------------------------------------------------------------- parent side

def write_weights(variant: str, folder: Path) -> None:
    """A transformers save_pretrained folder of SegFormer-``variant`` with seeded random weights."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from cityseg_zoo.backbones.mix_transformer import MIT_CONFIGS
    from cityseg_zoo.models.segformer import DECODER_DIMS
    cfg = MIT_CONFIGS[variant]
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(SegformerConfig(
        num_labels=19, hidden_sizes=list(cfg.hidden_sizes), depths=list(cfg.depths),
        decoder_hidden_size=DECODER_DIMS[variant])).eval()
    model.save_pretrained(folder)


def table(rows: list[dict], gemm: float) -> str:
    lines = [f"GEMM ceiling measured in this run: {gemm:.0f} GFLOP/s (float32, best of the `gemm_ceiling` "
             "workloads).", "",
             "| model | size | implementation | median latency (s) | runs | GFLOPs | GFLOP/s | % of GEMM ceiling "
             "| RSS after load (GiB) | peak RSS (GiB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| SegFormer-{r['size_name'].upper()} | {r['size'][0]}x{r['size'][1]} | {r['variant']} | "
                         f"failed: {r['error']} | | | | | | |")
            continue
        rate = r["gflops"] / r["median_s"]
        lines.append(f"| SegFormer-{r['size_name'].upper()} | {r['size'][0]}x{r['size'][1]} | {r['variant']} | "
                     f"{r['median_s']:.2f} | {len(r['latencies_s'])} | {r['gflops']:.0f} | {rate:.0f} | "
                     f"{100 * rate / gemm:.0f}% | {r['rss_after_load_gib']:.2f} | {r['peak_rss_gib']:.2f} |")
    lines += ["", "| model | size | speed-up (transformers / zoo-switch latency) | peak RSS (zoo-switch / transformers) "
              "| goal |", "|---|---|---|---|---|"]
    for size_name, size in dict.fromkeys((r["size_name"], tuple(r["size"])) for r in rows):   # run order
        by = {r["variant"]: r for r in rows if r["size_name"] == size_name and tuple(r["size"]) == size}
        hf, zoo = by.get("transformers"), by.get("zoo-switch")
        if not hf or not zoo or "error" in hf or "error" in zoo:
            continue
        speed, memory = hf["median_s"] / zoo["median_s"], zoo["peak_rss_gib"] / hf["peak_rss_gib"]
        goal = ("met" if speed >= 1.5 and memory <= 0.7 else "speed " + ("met" if speed >= 1.5 else "missed")
                + ", memory " + ("met" if memory <= 0.7 else "missed"))
        lines.append(f"| SegFormer-{size_name.upper()} | {size[0]}x{size[1]} | {speed:.2f}× | {memory:.2f}× | "
                     f"≥ 1.5× faster, ≤ 0.7× memory: {goal} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=VARIANTS,
                        choices=VARIANTS + ["transformers-eager-attention"])
    parser.add_argument("--cases", nargs="+", default=[f"{v}@{h}x{w}" for v, (h, w) in CASES],
                        help="SIZE@HxW, e.g. b5@1024x1024")
    parser.add_argument("--profile", action="store_true", help="also record a torch.profiler table per variant")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--output", default=str(ROOT / "docs" / "segformer_benchmark"))
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
    with tempfile.TemporaryDirectory(prefix="segformer-bench-") as tmp:
        gemm = spawn(__file__, TAG, {"kind": "gemm", "threads": args.threads}, args.timeout)["gemm_gflops"]
        print(f"GEMM peak: {gemm:.0f} GFLOP/s", flush=True)
        for name, size in cases:
            folder = Path(tmp) / name
            if not folder.exists():
                write_weights(name, folder)
            for variant in args.variants:
                job = {"variant": variant, "size_name": name, "size": list(size), "folder": str(folder),
                       "threads": args.threads, "warmup": args.warmup, "repeats": args.repeats,
                       "profile": args.profile}
                result = {**job, **spawn(__file__, TAG, job, args.timeout)}
                rows.append(result)
                print(f"SegFormer-{name.upper()} {size[0]}x{size[1]} {variant}: "
                      + (result.get("error") or f"{result['median_s']:.2f} s, peak RSS {result['peak_rss_gib']:.2f} GiB, "
                                                 f"{result['gflops']:.0f} GFLOPs"), flush=True)
                if result.get("profile"):
                    print(result["profile"], flush=True)
        gemm_after = spawn(__file__, TAG, {"kind": "gemm", "threads": args.threads}, args.timeout)["gemm_gflops"]
    gemm_before, gemm = gemm, max(gemm, gemm_after)
    text = table(rows, gemm)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
               f"torch threads {args.threads}, float32, batch 1, warm-up {args.warmup}, median of {args.repeats}")
    import torch
    import transformers
    header = (f"# SegFormer: transformers vs cityseg_zoo (inference switch)\n\nMade by `python benchmarks/segformer.py"
              f"{' ' + ' '.join(argv) if argv else ''}` ({machine}; torch {torch.__version__}, transformers "
              f"{transformers.__version__}). GEMM measured before and after the models: {gemm_before:.0f} / "
              f"{gemm_after:.0f} GFLOP/s (the higher is used). 1-minute load average before / after: {load_before:.1f} / "
              f"{os.getloadavg()[0]:.1f} (the machine is shared; other processes' load slows every variant).\n\n")
    print(text)
    write_report(args.output, header, text, {"gemm_gflops": [gemm_before, gemm_after], "threads": args.threads,
                                            "rows": rows})
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
