"""The benchmark measures in fresh processes and writes a Markdown table, raw JSON and a PNG plot."""
import json

import pytest
from PIL import Image

from cityseg_zoo.cli import main
from cityseg_zoo.cli.benchmark import Point, markdown_table, parse_size, plot_against_area


def test_benchmark_command_writes_table_json_and_plot(tmp_path):
    stem = tmp_path / "docs" / "bench"
    code = main(["benchmark", "--models", "fcn_r50", "--sizes", "65x97", "--modes", "eager", "optimized",
                 "--warmup", "0", "--repeats", "2", "--output", str(stem)])
    assert code == 0
    points = json.loads(stem.with_suffix(".json").read_text())
    assert [p["mode"] for p in points] == ["eager", "optimized"]
    for p in points:
        assert not p["error"] and len(p["latencies_s"]) == 2 and all(t > 0 for t in p["latencies_s"])
        # A fresh process holding torch and a ResNet-50 has at least a few hundred MiB resident.
        assert p["memory_kind"] == "peak RSS" and 0.2 < p["peak_memory_gib"] < 8
    table = stem.with_suffix(".md").read_text()
    assert "| `fcn_r50` | 65x97 | optimized |" in table and "GEMM peak measured in this run" in table
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


def _point(model, size, mode, seconds, gib):
    return Point(model=model, size=size, mode=mode, latencies_s=[seconds, seconds * 2, seconds],
                 peak_memory_gib=gib, memory_kind="peak RSS")


def test_table_reports_speedups_against_eager_and_mmseg_and_fraction_of_gemm_peak():
    points = [_point("danet_r101", (512, 1024), "eager", 6.0, 1.5),
              _point("danet_r101", (512, 1024), "optimized", 4.0, 1.3)]
    table = markdown_table(points, {("danet_r101", (512, 1024)): 800.0}, gemm=400.0)
    optimized = next(line for line in table.splitlines() if "| optimized |" in line)
    cells = [c.strip() for c in optimized.split("|")]
    # median 4.0 s; eager 6.0 / 4.0; mmseg DANet 7.6 / 4.0; 800 GFLOPs / 4 s = 200 GFLOP/s = 50% of 400.
    assert cells[4:8] == ["4.00", "3", "1.50×", "1.90× (7.6 s)"]
    assert cells[9:12] == ["800", "200", "50%"]


def test_plot_draws_one_coloured_line_per_model_and_mode(tmp_path):
    points = [_point(m, s, "optimized", t, g) for m, f in (("a", 1.0), ("b", 2.0))
              for s, t, g in (((256, 512), 1 * f, 1.0 * f), ((512, 1024), 4 * f, 1.5 * f))]
    plot_against_area(points, tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as image:
        colours = {c for _, c in image.convert("RGB").getcolors(1 << 20)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours    # the first two series' colours
