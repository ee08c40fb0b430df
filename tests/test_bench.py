"""The benchmark measures in fresh processes and writes a Markdown table, raw JSON and a PNG plot."""
import json

import pytest
from PIL import Image

from cityseg_zoo.cli import main
from cityseg_zoo.cli import benchmark
from cityseg_zoo.cli.benchmark import Point, gemm_ceiling, markdown_table, parse_size, plot_against_area

TINY_WORKLOADS = (("mm", (64, 48, 32)), ("conv", (8, 16, 1, 5, 7)), ("conv", (8, 8, 3, 6, 5)))


def test_benchmark_command_writes_table_json_and_plot(tmp_path):
    stem = tmp_path / "docs" / "bench"
    code = main(["benchmark", "--models", "fcn_r50", "--sizes", "65x97", "--modes", "eager", "optimized",
                 "--warmup", "0", "--repeats", "2", "--dtype", "bfloat16", "--no-ceiling", "--output", str(stem)])
    assert code == 0
    points = json.loads(stem.with_suffix(".json").read_text())
    assert [(p["mode"], p["dtype"]) for p in points] == [("eager", "float32"), ("optimized", "bfloat16")]
    for p in points:
        assert not p["error"] and len(p["latencies_s"]) == 2 and all(t > 0 for t in p["latencies_s"])
        # A fresh process holding torch and a ResNet-50 has at least a few hundred MiB resident.
        assert p["memory_kind"] == "peak RSS" and 0.2 < p["peak_memory_gib"] < 8
        assert p["ceiling_before"] == p["ceiling_after"] == {}          # --no-ceiling
    eager, bf16 = points
    assert eager["max_rel_diff"] is None and eager["argmax_changed"] is None
    # The bf16 switch against the float32 switch of the same weights, on the same input, in the same process.
    assert 0 < bf16["max_rel_diff"] < 0.05 and 0 <= bf16["argmax_changed"] < 0.2
    table = stem.with_suffix(".md").read_text()
    assert "| `fcn_r50` | 65x97 | optimized, bfloat16 |" in table and "GEMM ceiling: not measured" in table
    with Image.open(stem.with_suffix(".png")) as image:
        assert image.format == "PNG" and image.size == (1400, 760)


def test_benchmark_rejects_unknown_model_before_measuring(capsys):
    assert main(["benchmark", "--models", "fcn_r1O1"]) == 2
    assert "fcn_r101" in capsys.readouterr().err          # the close-match suggestion


@pytest.mark.parametrize("text", ["512", "512x", "axb", "0x10"])
def test_size_must_be_two_positive_integers(text):
    import argparse
    with pytest.raises(argparse.ArgumentTypeError, match="512x1024|positive"):
        parse_size(text)


def _point(model, size, mode, seconds, gib, dtype="float32", ceiling=None, **fields):
    return Point(model=model, size=size, mode=mode, dtype=dtype, latencies_s=[seconds, seconds * 2, seconds],
                 peak_memory_gib=gib, memory_kind="peak RSS", ceiling_dtype=dtype if mode == "optimized" else "float32",
                 ceiling_before=ceiling or {}, **fields)


def test_gemm_ceiling_gives_a_positive_finite_rate_per_workload():
    rates = gemm_ceiling("cpu", "float32", repeats=2, workloads=TINY_WORKLOADS)
    assert list(rates) == ["mm 64x48x32", "conv1x1 8->16 at 5x7", "conv3x3 8->8 at 6x5"]
    assert all(0 < r < float("inf") for r in rates.values())
    assert all(0 < r < float("inf") for r in gemm_ceiling("cpu", "bfloat16", 1, TINY_WORKLOADS).values())


def test_a_point_measures_its_ceiling_before_and_after_its_model_in_its_own_process(monkeypatch):
    monkeypatch.setattr(benchmark, "CEILING_WORKLOADS", TINY_WORKLOADS)
    point = benchmark.run_point(Point("fcn_r50", (65, 97), "optimized", warmup=0, repeats=1))
    assert set(point.ceiling_before) == set(point.ceiling_after) == {"mm 64x48x32", "conv1x1 8->16 at 5x7",
                                                                      "conv3x3 8->8 at 6x5"}
    assert point.ceiling_dtype == "float32"
    assert point.ceiling_gflops == max(*point.ceiling_before.values(), *point.ceiling_after.values())


def test_table_reports_speedups_and_the_fraction_of_each_rows_own_gemm_ceiling():
    ceiling = gemm_ceiling("cpu", "float32", repeats=1, workloads=TINY_WORKLOADS)
    best = max(ceiling.values())
    points = [_point("danet_r101", (512, 1024), "eager", 6.0, 1.5, ceiling={"mm": 100.0}),
              _point("danet_r101", (512, 1024), "optimized", 4.0, 1.3, ceiling=ceiling,
                     ceiling_after={"mm": best / 2}),
              _point("danet_r101", (512, 1024), "optimized", 1.6, 1.1, dtype="bfloat16", ceiling={"mm": 1000.0},
                     ceiling_after={"conv": 2000.0}, max_rel_diff=0.0042, argmax_changed=0.0123)]
    table = markdown_table(points, {("danet_r101", (512, 1024)): 800.0})
    rows = [[c.strip() for c in line.split("|")] for line in table.splitlines() if line.startswith("| `danet")]
    eager, switch, bf16 = rows
    # median 4.0 s; eager 6.0 / 4.0; mmseg DANet 7.6 / 4.0; 800 GFLOPs / 4 s = 200 GFLOP/s against this row's
    # ceiling, the best of its workloads before and after the model.
    assert switch[4:9] == ["4.00", "3", "1.50×", "", "1.90× (7.6 s)"]
    assert switch[10:13] == ["800", "200", f"{100 * 200 / best:.0f}% of {best:.0f}"]
    assert eager[12] == "133% of 100"     # the row's own ceiling: one too low shows above 100%, never clamped
    # bf16: 4.0 / 1.6 against the float32 switch; 500 GFLOP/s of its own bf16 ceiling (2000, after the model).
    assert bf16[3] == "optimized, bfloat16" and bf16[6:8] == ["3.75×", "2.50×"]
    assert bf16[12:15] == ["25% of 2000", "4.2e-03", "1.23%"]
    header = table.splitlines()[0]
    assert f"float32 {max(best, 100):.0f} GFLOP/s" in header and "bfloat16 2000 GFLOP/s" in header


def test_plot_draws_one_coloured_line_per_model_and_mode(tmp_path):
    points = [_point(m, s, "optimized", t, g) for m, f in (("a", 1.0), ("b", 2.0))
              for s, t, g in (((256, 512), 1 * f, 1.0 * f), ((512, 1024), 4 * f, 1.5 * f))]
    plot_against_area(points, tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as image:
        colours = {c for _, c in image.convert("RGB").getcolors(1 << 20)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours    # the first two series' colours
