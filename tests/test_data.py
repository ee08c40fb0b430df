"""Cityscapes label table, dataset reader and preprocessing from ``pretrained_cfg``."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cityseg_zoo
from cityseg_zoo.data import (CLASS_NAMES, LABELS, PALETTE, CityscapesDataset, id_to_train_id, load_image,
                              load_label, preprocess)
from cityseg_zoo.errors import InputError


def write_fake_cityscapes(root: Path, split: str = "val", cities=(("aachen", 2), ("bochum", 1)),
                          size=(64, 96), seed: int = 0) -> list[tuple[Path, Path]]:
    """Random images and labelIds in the real layout and file naming; returns (image, label) paths."""
    rng = np.random.default_rng(seed)
    pairs = []
    for city, count in cities:
        for frame in range(count):
            stem = f"{city}_{frame:06d}_000019"
            image_dir, label_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            image[: size[0] // 2] = rng.integers(0, 256, 3, dtype=np.uint8)  # some flat regions, like sky
            label_ids = rng.integers(0, 34, size, dtype=np.uint8)
            Image.fromarray(image).save(image_dir / f"{stem}_leftImg8bit.png")
            Image.fromarray(label_ids).save(label_dir / f"{stem}_gtFine_labelIds.png")
            # the other gtFine files sit in the same folder in the real dataset and must be ignored
            Image.fromarray(label_ids).save(label_dir / f"{stem}_gtFine_instanceIds.png")
            pairs.append((image_dir / f"{stem}_leftImg8bit.png", label_dir / f"{stem}_gtFine_labelIds.png"))
    return pairs


# (id, trainId) pairs copied by hand from cityscapesScripts/helpers/labels.py
OFFICIAL_TRAIN_IDS = {0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 0, 8: 1, 9: 255, 10: 255, 11: 2,
                      12: 3, 13: 4, 14: 255, 15: 255, 16: 255, 17: 5, 18: 255, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                      24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 29: 255, 30: 255, 31: 16, 32: 17, 33: 18}


def test_label_table_has_34_ids_and_official_train_ids():
    assert [label.id for label in LABELS] == list(range(34))
    assert {label.id: label.train_id for label in LABELS} == OFFICIAL_TRAIN_IDS
    evaluated = sorted((label for label in LABELS if label.train_id != 255), key=lambda label: label.train_id)
    assert tuple(label.name for label in evaluated) == CLASS_NAMES
    assert tuple(label.color for label in evaluated) == PALETTE
    assert LABELS[26].name == "car" and LABELS[26].color == (0, 0, 142)


def test_id_to_train_id_maps_every_id():
    ids = np.arange(34, dtype=np.uint8).reshape(2, 17)
    expected = np.array([OFFICIAL_TRAIN_IDS[i] for i in range(34)]).reshape(2, 17)
    np.testing.assert_array_equal(id_to_train_id(ids), expected)


@pytest.mark.parametrize("bad", [34, 255])
def test_id_to_train_id_rejects_ids_outside_the_table(bad):
    with pytest.raises(InputError, match=rf"outside the Cityscapes table 0..33: \[{bad}\]"):
        id_to_train_id(np.array([[7, bad]], dtype=np.uint8))


def test_dataset_reads_the_cityscapes_layout_for_any_split_and_city(tmp_path):
    pairs = write_fake_cityscapes(tmp_path, split="train")
    dataset = CityscapesDataset(tmp_path, "train")
    assert len(dataset) == 3
    image, label, name = dataset[0]
    assert name == "aachen_000000_000019"
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 96)
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), np.array(Image.open(pairs[0][0])))
    ids = np.array(Image.open(pairs[0][1]))
    np.testing.assert_array_equal(label.numpy(), np.vectorize(OFFICIAL_TRAIN_IDS.get)(ids))
    assert [dataset[i][2] for i in range(3)] == ["aachen_000000_000019", "aachen_000001_000019",
                                                 "bochum_000000_000019"]
    only_bochum = CityscapesDataset(tmp_path, "train", cities=["bochum"])
    assert len(only_bochum) == 1 and only_bochum[0][2] == "bochum_000000_000019"
    assert CityscapesDataset(tmp_path, "train", labels=False)[0][1] is None


def test_dataset_shards_count_every_image_once(tmp_path):
    write_fake_cityscapes(tmp_path, cities=(("aachen", 5),))
    dataset = CityscapesDataset(tmp_path)
    shards = [dataset.shard(rank, 3) for rank in range(3)]
    assert sorted(sum(shards, [])) == list(range(5))
    assert shards == [[0, 3], [1, 4], [2]]


def test_dataset_errors_name_the_missing_piece(tmp_path):
    with pytest.raises(InputError, match="leftImg8bit/val does not exist"):
        CityscapesDataset(tmp_path / "nowhere")
    pairs = write_fake_cityscapes(tmp_path)
    with pytest.raises(InputError, match=r"no city \['berlin'\]"):
        CityscapesDataset(tmp_path, cities=["berlin"])
    pairs[0][1].unlink()
    with pytest.raises(InputError, match="label file missing for aachen_000000_000019_leftImg8bit.png"):
        CityscapesDataset(tmp_path)


def test_label_file_with_ids_outside_the_table_is_refused(tmp_path):
    path = tmp_path / "x_gtFine_labelIds.png"
    Image.fromarray(np.full((4, 5), 40, dtype=np.uint8)).save(path)
    with pytest.raises(InputError, match=r"x_gtFine_labelIds.png: label ids outside .* \[40\]"):
        load_label(path)


def test_load_image_converts_grayscale_and_rgba_with_a_warning(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    rgba = np.zeros((3, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    with pytest.warns(UserWarning, match="converted L image to RGB"):
        image = load_image(tmp_path / "gray.png")
    assert image.shape == (3, 3, 4) and all(torch.equal(image[c], torch.from_numpy(gray)) for c in range(3))
    with pytest.warns(UserWarning, match="alpha channel dropped"):
        image = load_image(tmp_path / "rgba.png")
    assert image.shape == (3, 3, 4) and image[0].eq(200).all() and image[1:].eq(0).all()


def test_load_image_refuses_missing_and_16_bit_files(tmp_path):
    with pytest.raises(InputError, match="no such image file: .*missing.png"):
        load_image(tmp_path / "missing.png")
    Image.fromarray(np.full((3, 4), 40000, dtype=np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(InputError, match="16-bit or float"):
        load_image(tmp_path / "deep.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(InputError, match="cannot read"):
        load_image(tmp_path / "notes.png")


def test_preprocess_follows_each_weights_convention():
    pixel = torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1)
    gald = cityseg_zoo.model_info("galdnet_r50")["pretrained_cfg"]  # Caffe: BGR, 0-255, minus the BGR mean
    expected_bgr = torch.tensor([30 - 104.008, 20 - 116.669, 10 - 122.679])
    torch.testing.assert_close(preprocess(pixel, gald).flatten(), expected_bgr)
    dgc = cityseg_zoo.model_info("dgcnet_r50")["pretrained_cfg"]  # torchvision: RGB, /255, ImageNet mean/std
    expected_rgb = torch.tensor([(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225])
    torch.testing.assert_close(preprocess(pixel, dgc).flatten(), expected_rgb)
    assert preprocess(pixel.expand(3, 2, 5), dgc).shape == (1, 3, 2, 5)


def test_preprocess_refuses_float_or_wrongly_shaped_images():
    cfg = cityseg_zoo.model_info("fcn_r50")["pretrained_cfg"]
    with pytest.raises(InputError, match="torch.uint8, got dtype torch.float32"):
        preprocess(torch.zeros(3, 4, 4), cfg)
    with pytest.raises(InputError, match=r"got shape \(4, 4, 3\)"):
        preprocess(torch.zeros(4, 4, 3, dtype=torch.uint8), cfg)
