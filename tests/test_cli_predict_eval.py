"""``cityseg-zoo predict`` and ``cityseg-zoo eval`` on a tiny dataset in the real Cityscapes layout."""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import cityseg_zoo
from cityseg_zoo.cli import main
from cityseg_zoo.data import PALETTE
from test_data import OFFICIAL_TRAIN_IDS, write_fake_cityscapes
from test_metrics import _numpy_scores

torch.set_num_threads(1)
SLIDE = ["--mode", "slide", "--crop", "48", "--stride", "32"]


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    return root, write_fake_cityscapes(root, cities=(("aachen", 2), ("bochum", 1)))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "fcn_r50_random.safetensors"
    save_file(cityseg_zoo.create_model("fcn_r50").state_dict(), str(path))
    return path


def test_eval_miou_equals_an_independent_count_over_the_predicted_pngs(cityscapes, weights, tmp_path, capsys):
    root, pairs = cityscapes
    model = ["--model", "fcn_r50", "--weights", str(weights)]
    assert main(["predict", *(str(image) for image, _ in pairs), "--out", str(tmp_path / "pred"), *model,
                 *SLIDE]) == 0
    assert main(["eval", "--data", str(root), "--split", "val", "--json", str(tmp_path / "scores.json"), *model,
                 *SLIDE]) == 0
    printed = capsys.readouterr()
    preds = [np.array(Image.open(tmp_path / "pred" / f"{image.name[:-4]}_trainIds.png")) for image, _ in pairs]
    targets = [np.vectorize(OFFICIAL_TRAIN_IDS.get)(np.array(Image.open(label))) for _, label in pairs]
    ious, miou, accuracy = _numpy_scores(preds, targets, 19)
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["images"] == 3
    assert scores["miou"] == pytest.approx(miou, rel=1e-12, abs=0)
    assert scores["pixel_accuracy"] == pytest.approx(accuracy, rel=1e-12, abs=0)
    np.testing.assert_allclose(list(scores["iou"].values()), ious, rtol=1e-12)
    assert re.search(rf"^mIoU +{100 * miou:.2f}$", printed.out, re.MULTILINE)
    assert "road" in printed.out and "3/3" in printed.err  # per-class table and progress bar


# tqdm's "n/total [elapsed<remaining, rate]": the ETA and images/s (s/img when slower than one a second)
PROGRESS = re.compile(r"eval: +100%.*\| 3/3 \[\d\d:\d\d<\d\d:\d\d, +\d+(\.\d+)?(img/s|s/img)\]")


def test_tile_batch_gives_the_same_scores_and_pngs_and_progress_shows_eta_and_rate(cityscapes, weights, tmp_path,
                                                                                   capsys):
    root, pairs = cityscapes
    model = ["--model", "fcn_r50", "--weights", str(weights), *SLIDE, "--flip"]  # 6 tiles x 2 orientations
    for n in ("1", "5"):
        assert main(["eval", "--data", str(root), "--json", str(tmp_path / f"scores{n}.json"), *model,
                     "--tile-batch", n]) == 0
        err = capsys.readouterr().err
        assert PROGRESS.search(err), err
        assert ("5 crops per forward" in err) == (n == "5")
        assert main(["predict", str(pairs[0][0]), "--out", str(tmp_path / n), *model, "--tile-batch", n]) == 0
    one, five = (json.loads((tmp_path / f"scores{n}.json").read_text()) for n in ("1", "5"))
    assert five["confusion_matrix"] == one["confusion_matrix"]
    stem = pairs[0][0].name[:-4]
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "5" / f"{stem}_trainIds.png")),
                                  np.array(Image.open(tmp_path / "1" / f"{stem}_trainIds.png")))
    with pytest.raises(SystemExit):
        main(["eval", "--data", str(root), *model, "--tile-batch", "0"])
    assert "--tile-batch: must be a positive integer, got '0'" in capsys.readouterr().err


def test_predict_writes_train_ids_colours_and_a_side_by_side_overlay(cityscapes, weights, tmp_path):
    image_path = cityscapes[1][0][0]
    gray, rgba = tmp_path / "gray.png", tmp_path / "rgba.png"
    Image.open(image_path).convert("L").save(gray)
    Image.open(image_path).convert("RGBA").save(rgba)
    with pytest.warns(UserWarning, match="converted"):
        assert main(["predict", str(image_path), str(gray), str(rgba), "--out", str(tmp_path / "out"),
                     "--model", "fcn_r50", "--weights", str(weights), "--scales", "0.75", "1", "--flip"]) == 0
    stem = image_path.name[:-4]
    train_ids = np.array(Image.open(tmp_path / "out" / f"{stem}_trainIds.png"))
    color = np.array(Image.open(tmp_path / "out" / f"{stem}_color.png"))
    side_by_side = np.array(Image.open(tmp_path / "out" / f"{stem}_overlay.png"))
    assert train_ids.shape == (64, 96) and train_ids.max() < 19
    np.testing.assert_array_equal(color, np.array(PALETTE, dtype=np.uint8)[train_ids])
    assert side_by_side.shape == (64, 192, 3)
    np.testing.assert_array_equal(side_by_side[:, :96], np.array(Image.open(image_path)))
    for name in ("gray", "rgba"):
        assert Image.open(tmp_path / "out" / f"{name}_color.png").size == (96, 64)


def test_bad_inputs_stop_with_one_line_errors(cityscapes, weights, tmp_path, capsys):
    root, pairs = cityscapes
    out = ["--out", str(tmp_path / "out")]
    assert main(["predict", str(tmp_path / "missing.png"), *out, "--model", "fcn_r50"]) == 2
    assert "cityseg-zoo predict: error: no such image file: " in capsys.readouterr().err
    assert main(["predict", str(pairs[0][0]), *out, "--model", "fcn_r50", "--weights", str(tmp_path / "w")]) == 2
    assert "no such weights file" in capsys.readouterr().err
    assert main(["predict", str(pairs[0][0]), *out, "--model", "galdnet_r50", "--random-init"]) == 2
    err = capsys.readouterr().err
    assert "smaller than galdnet_r50's minimum side of 111 px" in err and "at least 15 px" in err
    assert main(["eval", "--data", str(tmp_path), "--model", "fcn_r50"]) == 2
    assert "not a Cityscapes root" in capsys.readouterr().err

    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    label = broken / "gtFine" / "val" / "bochum" / pairs[2][1].name
    Image.fromarray(np.full((64, 96), 77, dtype=np.uint8)).save(label)
    assert main(["eval", "--data", str(broken), "--model", "fcn_r50", "--weights", str(weights),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "bochum_000000_000019_gtFine_labelIds.png: label ids outside the Cityscapes table 0..33: [77]" in err


def test_console_script_reports_errors_without_a_traceback(tmp_path):
    result = subprocess.run([shutil.which("cityseg-zoo") or "cityseg-zoo", "predict", str(tmp_path / "x.png"),
                             "--model", "fcn_r50", "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"cityseg-zoo predict: error: no such image file: {tmp_path}/x.png"]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_eval_under_torchrun_with_two_gloo_processes_matches_one_process(cityscapes, weights, tmp_path):
    root, _ = cityscapes
    args = ["eval", "--data", str(root), "--model", "fcn_r50", "--weights", str(weights), "--no-progress",
            "--device", "cpu"]
    assert main([*args, "--json", str(tmp_path / "one.json")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([shutil.which("torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python",
                             shutil.which("cityseg-zoo"), *args, "--json", str(tmp_path / "two.json")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert "2 process(es)" in result.stderr
    assert two["confusion_matrix"] == one["confusion_matrix"] and two["miou"] == one["miou"]
