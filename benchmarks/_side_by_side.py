"""What the side-by-side benchmarks (``segformer.py``, ``mask2former.py``) share: one fresh worker process per
variant, its memory figures, its FLOP count, and the float32 GEMM ceiling measured in the same run.

A benchmark script calls itself with ``--worker JSON``; the worker prints one ``<TAG> {json}`` line, which
``spawn`` finds among whatever else the libraries print.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

GIB = 1024 ** 3
ROOT = Path(__file__).resolve().parents[1]


def peak_rss_gib() -> float:
    """This process's resident-set high-water mark (``ru_maxrss``: interpreter, libraries, weights, activations)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def current_rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GIB


def count_gflops(run, model, x, in_place_blocks: tuple[str, ...] | None = None) -> float:
    """GFLOPs of ``run(x)`` (convolutions, matmuls and attention; multiply-add = 2).

    FlopCounterMode does not count the in-place GEMMs (``addmm_``, ``addmm(out=)``) of the zoo's inference paths, so
    the blocks that have one (``inference`` flag set; only the classes named in ``in_place_blocks`` if given) are
    counted on their out-of-place path, which computes the same products.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_flash_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)   # the CPU kernel FlopCounterMode has no formula for

    blocks = [m for m in model.modules() if getattr(m, "inference", False) is True
              and (in_place_blocks is None or type(m).__name__ in in_place_blocks)]
    for block in blocks:
        block.inference = False
    try:
        mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash_attention}
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter, torch.inference_mode():
            run(x)
    finally:
        for block in blocks:
            block.inference = True
    return counter.get_total_flops() / 1e9


def gemm_worker(job: dict) -> dict:
    """The float32 GEMM ceiling (``cityseg_zoo.cli.benchmark.gemm_ceiling``, best workload) at the job's threads."""
    import torch

    from cityseg_zoo.cli.benchmark import gemm_ceiling
    torch.set_num_threads(job["threads"])
    return {"gemm_gflops": max(gemm_ceiling("cpu", "float32").values())}


def spawn(script: str, tag: str, job: dict, timeout: float) -> dict:
    """Run ``script --worker JSON(job)`` in a fresh interpreter; its ``<tag> {json}`` line, or ``{"error": ...}``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, str(Path(script).resolve()), "--worker", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:] or ["no output"]
    return {"error": f"worker exited with {proc.returncode}: {' | '.join(tail)}"}


def parse_cases(texts: list[str]) -> list[tuple[str, tuple[int, int]]]:
    """``["b5@1024x1024", ...]`` -> ``[("b5", (1024, 1024)), ...]``."""
    cases = []
    for text in texts:
        name, size = text.split("@")
        cases.append((name, tuple(int(v) for v in size.split("x"))))
    return cases


def write_report(output: str | Path, header: str, table: str, payload: dict) -> None:
    """``output``.md (header + table) and ``output``.json (the raw rows, without the temporary weight folders)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".md").write_text(header + table, encoding="utf-8")
    payload = {**payload, "rows": [{k: v for k, v in r.items() if k != "folder"} for r in payload["rows"]]}
    output.with_suffix(".json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    print(f"wrote {output.with_suffix('.md')} and {output.with_suffix('.json')}")
