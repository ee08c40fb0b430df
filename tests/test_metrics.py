"""Confusion matrix, IoU, mIoU, pixel accuracy; the 2-process (gloo) result equals the 1-process one."""
import math
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from cityseg_zoo.data import IMAGENET_RGB, CityscapesDataset
from cityseg_zoo.errors import InputError
from cityseg_zoo.metrics import ConfusionMatrix, confusion_matrix, evaluate
from test_data import write_fake_cityscapes


def test_confusion_matrix_counts_ground_truth_rows_and_predicted_columns():
    target = torch.tensor([[0, 0, 1], [2, 255, 1]])
    pred = torch.tensor([[0, 1, 1], [2, 0, 0]])
    expected = torch.tensor([[1, 1, 0],   # gt 0: one right, one called 1
                             [1, 1, 0],   # gt 1: one called 0, one right
                             [0, 0, 1]])  # gt 2: right; the 255 pixel is not counted
    assert torch.equal(confusion_matrix(pred, target, num_classes=3), expected)


def _numpy_scores(preds, targets, num_classes, ignore=255):
    """IoU written out per class, independently of the code under test."""
    ious = []
    for c in range(num_classes):
        tp = fp = fn = 0
        for p, t in zip(preds, targets):
            valid = t != ignore
            tp += np.sum((p == c) & (t == c) & valid)
            fp += np.sum((p == c) & (t != c) & valid)
            fn += np.sum((p != c) & (t == c) & valid)
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else float("nan"))
    correct = sum(np.sum((p == t) & (t != ignore)) for p, t in zip(preds, targets))
    total = sum(np.sum(t != ignore) for t in targets)
    return ious, np.nanmean(ious), correct / total


def test_streaming_miou_matches_a_per_class_count():
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 5, (7, 9)) for _ in range(3)]
    targets = [np.where(rng.random((7, 9)) < 0.1, 255, rng.integers(0, 4, (7, 9))) for _ in range(3)]
    confusion = ConfusionMatrix(num_classes=6)  # class 5 never appears: nan, left out of the mean
    for p, t in zip(preds, targets):
        confusion.update(torch.from_numpy(p), torch.from_numpy(t))
    scores = confusion.compute()
    ious, miou, accuracy = _numpy_scores(preds, targets, 6)
    np.testing.assert_allclose(scores.iou, ious, rtol=1e-12)
    assert math.isnan(scores.iou[5]) and scores.iou[4] == 0.0  # class 4 predicted, never true
    assert scores.miou == pytest.approx(miou, rel=1e-12)
    assert scores.pixel_accuracy == pytest.approx(accuracy, rel=1e-12)
    assert "n/a" in scores.table().splitlines()[7]


def test_classes_outside_the_range_are_refused():
    with pytest.raises(InputError, match=r"target has classes \[19\] outside 0..18"):
        confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 19], [255, 1]]))
    with pytest.raises(InputError, match=r"prediction has classes \[-1\]"):
        confusion_matrix(torch.tensor([[0, -1]]), torch.tensor([[0, 1]]))
    with pytest.raises(InputError, match="not float scores"):
        confusion_matrix(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.long))


class PixelClassifier(nn.Module):
    """A 1x1 convolution: a deterministic 'model' with the zoo's pretrained_cfg fields."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 19, 1)
        self.pretrained_cfg = {"architecture": "pixel_classifier", "input": IMAGENET_RGB.as_dict(),
                               "num_classes": 19, "align_corners": False}

    def forward(self, x):
        return self.conv(x)


# fork where there is one: the children then need not re-import torch (0.2 s instead of ~10 s).
START_METHOD = "fork" if "fork" in mp.get_all_start_methods() else "spawn"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _evaluate_shard(rank, world_size, port, root, out_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        dataset = CityscapesDataset(root)
        confusion = evaluate(PixelClassifier(), dataset, dataset.shard(rank, world_size))
        if rank == 0:
            torch.save(confusion.matrix, out_path)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_give_the_single_process_confusion_matrix(tmp_path):
    write_fake_cityscapes(tmp_path, cities=(("aachen", 3), ("bochum", 2)), size=(24, 32))  # 5: uneven shards
    single = evaluate(PixelClassifier(), CityscapesDataset(tmp_path)).matrix
    out_path = tmp_path / "matrix.pt"
    mp.start_processes(_evaluate_shard, args=(2, _free_port(), str(tmp_path), str(out_path)), nprocs=2,
                       start_method=START_METHOD)
    reduced = torch.load(out_path)
    assert reduced.sum() == single.sum() > 0
    assert torch.equal(reduced, single)
