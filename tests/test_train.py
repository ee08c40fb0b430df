"""Fine-tuning building blocks: losses, schedule, parameter groups, augmentation, data, checkpoints, SyncBN."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cityseg_zoo import registry
from cityseg_zoo.data.normalization import IMAGENET_RGB
from cityseg_zoo.errors import CheckpointError, InputError
from cityseg_zoo.ops.norm import ABN
from cityseg_zoo.train import (RandomScaleCropFlip, ResumableSampler, SegmentationLoss, SegmentationPairs,
                               SyncABN, build_sgd, cityscapes_pairs, convert_sync_batchnorm, cross_entropy,
                               folder_pairs, load_training_checkpoint, ohem_cross_entropy, param_groups,
                               poly_scheduler, recipe_for, save_training_checkpoint)
from cityseg_zoo.data.normalization import Normalization


def two_class_logits(true_probs):
    """Logits [1, 2, 1, N] whose class-1 softmax probability is each of ``true_probs`` (target: class 1)."""
    p = torch.tensor(true_probs, dtype=torch.float64)
    logits = torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))])[None, :, None, :]
    return logits, torch.ones(1, 1, len(true_probs), dtype=torch.long)


def mean_nll(probs):
    return sum(-math.log(p) for p in probs) / len(probs)


def test_cross_entropy_averages_over_labelled_pixels_only():
    logits, target = two_class_logits([0.2, 0.6, 0.9])
    target[0, 0, 1] = 255
    assert cross_entropy(logits, target).item() == pytest.approx(mean_nll([0.2, 0.9]), rel=1e-9)


def test_ohem_trains_on_pixels_below_0_7_when_enough_are_hard():
    probs = [0.1, 0.5, 0.69, 0.8, 0.95]
    logits, target = two_class_logits(probs)
    loss = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=2)
    assert loss.item() == pytest.approx(mean_nll([0.1, 0.5, 0.69]), rel=1e-9)


def test_ohem_raises_the_threshold_to_keep_min_kept_pixels():
    probs = [0.1, 0.5, 0.69, 0.8, 0.95]
    logits, target = two_class_logits(probs)
    loss = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=4)
    assert loss.item() == pytest.approx(mean_nll([0.1, 0.5, 0.69, 0.8]), rel=1e-9)


def test_ohem_keeps_every_labelled_pixel_when_fewer_than_min_kept():
    probs = [0.1, 0.5, 0.69, 0.8, 0.95]
    logits, target = two_class_logits(probs)
    target[0, 0, 0] = 255
    loss = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=100_000)
    assert loss.item() == pytest.approx(mean_nll(probs[1:]), rel=1e-9)


def test_ohem_never_selects_ignored_pixels():
    probs = [0.01, 0.5, 0.6, 0.9, 0.95]
    logits, target = two_class_logits(probs)
    target[0, 0, 0] = 255     # the hardest pixel is unlabelled
    loss = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=2)
    assert loss.item() == pytest.approx(mean_nll([0.5, 0.6]), rel=1e-9)


def test_loss_weights_aux_by_0_4_and_danet_branches_by_1():
    g = torch.Generator().manual_seed(0)
    outputs = {k: torch.randn(2, 3, 5, 7, generator=g) for k in ("out", "aux", "pam", "cam")}
    target = torch.randint(0, 3, (2, 5, 7), generator=g)
    total, terms = SegmentationLoss("ce")(outputs, target)
    ce = {k: nn.functional.cross_entropy(v, target) for k, v in outputs.items()}
    assert total.item() == pytest.approx((ce["out"] + 0.4 * ce["aux"] + ce["pam"] + ce["cam"]).item(), rel=1e-6)
    assert set(terms) == set(outputs)


def test_ohem_loss_applies_to_the_main_output_only():
    g = torch.Generator().manual_seed(1)
    outputs = {k: torch.randn(1, 3, 4, 4, generator=g) for k in ("out", "aux")}
    target = torch.randint(0, 3, (1, 4, 4), generator=g)
    _, terms = SegmentationLoss("ohem", thresh=0.7, min_kept=3)(outputs, target)
    assert terms["out"].item() == pytest.approx(ohem_cross_entropy(outputs["out"], target, 0.7, 3).item())
    assert terms["aux"].item() == pytest.approx(nn.functional.cross_entropy(outputs["aux"], target).item())


def test_loss_rejects_an_output_it_has_no_weight_for():
    with pytest.raises(InputError, match="edge"):
        SegmentationLoss()({"out": torch.zeros(1, 2, 3, 3), "edge": torch.zeros(1, 2, 3, 3)},
                           torch.zeros(1, 3, 3, dtype=torch.long))


class TinySegmentor(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Conv2d(4, 3, 1)
        self.pretrained_cfg = {"architecture": "tiny", "num_classes": 3}

    def forward(self, x):
        return self.head(self.backbone(x))


def test_poly_schedule_follows_the_formula_and_keeps_the_head_at_10x():
    model = TinySegmentor()
    optimizer = build_sgd(model, lr=0.01, head_lr_mult=10.0)
    scheduler = poly_scheduler(optimizer, total_steps=100, power=0.9)
    for step in range(100):
        factor = (1 - step / 100) ** 0.9
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * factor, rel=1e-12)
        assert optimizer.param_groups[1]["lr"] == pytest.approx(0.1 * factor, rel=1e-12)
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.0


def test_param_groups_put_the_backbone_apart_from_every_head():
    with torch.device("meta"):
        model = registry.arch_spec("danet_r50").builder(num_classes=3)
    groups = {g["name"]: g for g in param_groups(model, lr=0.003, head_lr_mult=10.0)}
    assert len(groups["backbone"]["params"]) == len(list(model.backbone.parameters()))
    assert len(groups["head"]["params"]) == len(list(model.parameters())) - len(groups["backbone"]["params"])
    assert groups["head"]["lr"] == pytest.approx(0.03)


def test_recipes_are_found_by_architecture_name():
    assert recipe_for("galdnet_r101").loss == "ohem" and recipe_for("galdnet_r101").lr == 0.01
    assert recipe_for("danet_r50").head_lr_mult == 10.0
    assert recipe_for("ocnet_asp_r50") is recipe_for("ocnet_base_r101")
    assert recipe_for("deeplabv3plus_r50").power == 1.0
    assert recipe_for("deeplabv3_r50") is None and recipe_for("fcn_r50") is None


def test_augmentation_keeps_image_and_label_aligned_and_pads_with_ignore():
    label = torch.arange(30 * 20).reshape(30, 20) % 7
    image = label[None].float().expand(3, -1, -1) + 1.0     # channel value = label + 1; 0 marks padding
    aug = RandomScaleCropFlip(40, scale_range=(1.0, 1.0))
    for seed in range(6):
        img, lab = aug(image, label, generator=torch.Generator().manual_seed(seed))
        assert img.shape == (3, 40, 40) and lab.shape == (40, 40)
        padded = img[0] == 0
        assert torch.all(lab[padded] == 255) and torch.equal(lab[~padded], img[0][~padded].long() - 1)


def test_rescaling_never_invents_label_values():
    label = torch.randint(0, 3, (17, 23), generator=torch.Generator().manual_seed(0))
    image = torch.randn(3, 17, 23)
    aug = RandomScaleCropFlip((16, 16), scale_range=(0.5, 2.0))
    for seed in range(5):
        img, lab = aug(image, label, generator=torch.Generator().manual_seed(seed))
        assert set(lab.unique().tolist()) <= {0, 1, 2, 255}


def write_pair(images, masks, name, mask_values):
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    mask = np.array(mask_values, dtype=np.uint8)
    Image.fromarray(np.full(mask.shape + (3,), 100, np.uint8)).save(images / f"{name}.jpg")
    Image.fromarray(mask).save(masks / f"{name}.png")


def test_folder_dataset_reads_normalised_images_and_masks(tmp_path):
    write_pair(tmp_path / "images", tmp_path / "masks", "a", [[0, 1], [2, 255]])
    norm = Normalization("RGB", 1.0, (100.0, 100.0, 100.0), (1.0, 1.0, 1.0))
    image, label = SegmentationPairs(folder_pairs(tmp_path / "images", tmp_path / "masks"), norm, 3)[0]
    assert image.shape == (3, 2, 2) and image.abs().max() <= 2   # jpeg of a flat 100 grey, minus 100
    assert label.tolist() == [[0, 1], [2, 255]]


def test_folder_pairs_names_images_without_masks(tmp_path):
    write_pair(tmp_path / "images", tmp_path / "masks", "a", [[0]])
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "images" / "lonely.png")
    with pytest.raises(InputError, match="lonely.png"):
        folder_pairs(tmp_path / "images", tmp_path / "masks")


def test_dataset_rejects_label_values_outside_the_classes(tmp_path):
    write_pair(tmp_path / "images", tmp_path / "masks", "a", [[0, 7]])
    data = SegmentationPairs(folder_pairs(tmp_path / "images", tmp_path / "masks"),
                             Normalization("RGB", 1.0, (0, 0, 0), (1, 1, 1)), num_classes=3)
    with pytest.raises(InputError, match=r"\[7\]"):
        data[0]


def test_cityscapes_layout_reads_label_ids_as_train_ids(tmp_path):
    # label ids 7 (road), 26 (car), 0 (unlabeled): trainIds 0, 13, 255, with no generated labelTrainIds files
    for city, frame in (("aachen", "aachen_000000_000019"), ("bochum", "bochum_000000_000313")):
        write_pair(tmp_path / "leftImg8bit/train" / city, tmp_path / "gtFine/train" / city, frame, [[7, 26, 0]])
        (tmp_path / "leftImg8bit/train" / city / f"{frame}.jpg").rename(
            tmp_path / "leftImg8bit/train" / city / f"{frame}_leftImg8bit.png")
        (tmp_path / "gtFine/train" / city / f"{frame}.png").rename(
            tmp_path / "gtFine/train" / city / f"{frame}_gtFine_labelIds.png")
    pairs = cityscapes_pairs(tmp_path, "train")
    assert [m.name for _, m in pairs] == ["aachen_000000_000019_gtFine_labelIds.png",
                                          "bochum_000000_000313_gtFine_labelIds.png"]
    _, label = SegmentationPairs(pairs, IMAGENET_RGB, 19)[0]
    assert label.tolist() == [[0, 13, 255]]
    (pairs[1][1]).unlink()
    with pytest.raises(InputError, match="label file missing for bochum_000000_000313_leftImg8bit.png"):
        cityscapes_pairs(tmp_path, "train")


def test_sampler_shards_an_epoch_across_ranks_and_resumes_mid_epoch():
    ranks = [list(ResumableSampler(10, seed=3, rank=r, world_size=3)) for r in range(3)]
    indices = [i for shard in ranks for i, _ in shard]
    assert len(indices) == 12 and set(indices) == set(range(10))     # padded to 4 per rank by wrapping
    resumed = ResumableSampler(10, seed=3, rank=1, world_size=3)
    resumed.set_position(epoch=0, start=2)
    assert list(resumed) == ranks[1][2:]
    resumed.set_position(epoch=1)
    assert [i for i, _ in resumed] != [i for i, _ in ranks[1]]


def test_sync_batchnorm_conversion_keeps_inplace_abn_semantics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), ABN(4), nn.BatchNorm2d(4), ABN(4, activation="identity")).train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-1, 1)      # |w| + eps differs from w for the negative ones
    x = torch.randn(2, 3, 9, 9)
    expected = model(x)
    converted = convert_sync_batchnorm(model)
    assert [type(m) for m in converted[1:]] == [SyncABN, nn.SyncBatchNorm, SyncABN]
    assert converted[1].activation == "leaky_relu" and converted[3].activation == "identity"
    assert torch.equal(converted(x), expected)   # one process: the same computation


def test_training_checkpoint_restores_optimizer_scheduler_and_rng(tmp_path):
    torch.manual_seed(0)
    model = TinySegmentor()
    optimizer = build_sgd(model, lr=0.1, head_lr_mult=10.0)
    scheduler = poly_scheduler(optimizer, 10)
    for _ in range(3):
        model(torch.randn(2, 3, 5, 5)).sum().backward()
        optimizer.step()
        scheduler.step()
    folder = save_training_checkpoint(tmp_path, model, optimizer, scheduler, step=3, settings={"note": "x"})
    expected_draw = torch.rand(3)

    fresh = TinySegmentor()
    fresh_opt = build_sgd(fresh, lr=0.1, head_lr_mult=10.0)
    fresh_sched = poly_scheduler(fresh_opt, 10)
    torch.manual_seed(123)
    record = load_training_checkpoint(tmp_path, fresh, fresh_opt, fresh_sched)
    assert record["step"] == 3 and record["settings"] == {"note": "x"} and folder.name == "checkpoint-0000003"
    assert torch.equal(torch.rand(3), expected_draw)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(optimizer.state[p]["momentum_buffer"], fresh_opt.state[q]["momentum_buffer"])
    assert [g["lr"] for g in fresh_opt.param_groups] == [g["lr"] for g in optimizer.param_groups]
    assert fresh_sched.last_epoch == 3


def test_resuming_into_a_model_of_another_class_count_is_refused(tmp_path):
    model = TinySegmentor()
    optimizer = build_sgd(model, lr=0.1)
    save_training_checkpoint(tmp_path, model, optimizer, None, step=1)
    other = TinySegmentor()
    other.pretrained_cfg = {"architecture": "tiny", "num_classes": 5}
    with pytest.raises(CheckpointError, match="num_classes"):
        load_training_checkpoint(tmp_path, other)
