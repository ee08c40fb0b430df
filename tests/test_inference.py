"""Whole, sliding-window and multi-scale + flip prediction."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cityseg_zoo
from cityseg_zoo.data import IMAGENET_RGB, preprocess
from cityseg_zoo.errors import InputError
from cityseg_zoo.inference import EvalProtocol, predict, predict_slide, segment, slide_windows

torch.set_num_threads(1)


class ConvModel(nn.Module):
    """One convolution: translation-equivariant, records the input sizes it sees."""

    def __init__(self, kernel=(1, 1), classes=4, align_corners=False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, kernel, padding=(kernel[0] // 2, kernel[1] // 2))
        self.pretrained_cfg = {"architecture": "conv", "input": IMAGENET_RGB.as_dict(), "num_classes": classes,
                               "align_corners": align_corners}
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[-2:]))
        return self.conv(x)


class CallCounter(nn.Module):
    """Returns the constant k + 1 on its k-th call: shows how tiles are weighted."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.pretrained_cfg = {"align_corners": False}

    def forward(self, x):
        self.calls += 1
        return torch.full((x.shape[0], 1, *x.shape[-2:]), float(self.calls))


# 10 x 7 image, crop 4, stride 3: rows start at 0, 3, 6; columns at 0 and 3 (the last one ends at the border).
HAND_WINDOWS = [(0, 4, 0, 4), (0, 4, 3, 7), (3, 7, 0, 4), (3, 7, 3, 7), (6, 10, 0, 4), (6, 10, 3, 7)]


def test_slide_windows_follow_the_reference_tiling():
    assert list(slide_windows(10, 7, (4, 4), (3, 3))) == HAND_WINDOWS
    # GALD/CCNet on a Cityscapes frame: tile 832, stride ceil(832 * 2/3) = 555 -> 2 rows x 4 columns
    protocol = EvalProtocol("slide", crop_size=832)
    assert protocol.stride == (555, 555)
    windows = list(slide_windows(1024, 2048, protocol.crop_size, protocol.stride))
    assert sorted({(y1, y2) for y1, y2, _, _ in windows}) == [(0, 832), (192, 1024)]
    assert sorted({(x1, x2) for _, _, x1, x2 in windows}) == [(0, 832), (555, 1387), (1110, 1942), (1216, 2048)]
    assert list(slide_windows(5, 6, (8, 8), (4, 4))) == [(0, 5, 0, 6)]  # smaller than the crop: one padded tile


def test_encoding_style_cuts_the_last_tile_at_the_border():
    # 11 rows, crop 4, stride 3: starts 0, 3, 6, 9; GALD moves the last one back to 7, PyTorch-Encoding keeps 9..11
    assert [w[:2] for w in slide_windows(11, 4, (4, 4), (3, 3), "gald")] == [(0, 4), (3, 7), (6, 10), (7, 11)]
    assert [w[:2] for w in slide_windows(11, 4, (4, 4), (3, 3), "encoding")] == [(0, 4), (3, 7), (6, 10), (9, 11)]


def test_encoding_style_pads_with_the_black_pixel_and_flips_each_tile():
    model = ConvModel()
    x = torch.randn(1, 3, 11, 4)
    whole = predict(model, x)
    tiles = []
    model.register_forward_pre_hook(lambda module, args: tiles.append(args[0].clone()))
    out = predict(model, x, mode="slide", crop_size=4, stride=3, style="encoding", flip=True)
    torch.testing.assert_close(out, whole)  # a pointwise model: tiling and flip change nothing
    assert len(tiles) == 8  # 4 tiles, each also flipped
    black = (-torch.tensor(IMAGENET_RGB.mean) / torch.tensor(IMAGENET_RGB.std)).view(3, 1)
    last = tiles[6][0]  # rows 9..10 of the image, then 2 padded rows
    torch.testing.assert_close(last[:, :2], x[0, :, 9:11])
    torch.testing.assert_close(last[:, 2:].reshape(3, -1), black.expand(3, 8))
    torch.testing.assert_close(tiles[7], tiles[6].flip(-1))


def test_encoding_style_averages_exp_scores_over_overlapping_tiles():
    out = predict(CallCounter(), torch.zeros(1, 3, 11, 4), mode="slide", crop_size=4, stride=3, style="encoding")
    # tiles rows 0..3, 3..6, 6..9, 9..10 return 1, 2, 3, 4: row 3 is covered by tiles 1 and 2, row 9 by 3 and 4
    expected_rows = [1, 1, 1, (1, 2), 2, 2, (2, 3), 3, 3, (3, 4), 4]
    for row, values in enumerate(expected_rows):
        values = torch.tensor(values if isinstance(values, tuple) else (values,), dtype=torch.float64)
        torch.testing.assert_close(out[0, 0, row], values.exp().mean().log().float().expand(4))


def test_slide_inference_covers_every_pixel_exactly_as_weighted():
    model = CallCounter()
    out = predict(model, torch.zeros(1, 3, 10, 7), mode="slide", crop_size=4, stride=3)
    expected = torch.zeros(10, 7)
    count = torch.zeros(10, 7)
    for k, (y1, y2, x1, x2) in enumerate(HAND_WINDOWS):
        expected[y1:y2, x1:x2] += k + 1
        count[y1:y2, x1:x2] += 1
    assert count.min() >= 1
    torch.testing.assert_close(out[0, 0], expected / count)


@pytest.mark.parametrize("crop,stride", [((16, 20), (10, 13)), ((37, 53), (37, 53)), ((64, 64), None)])
def test_slide_equals_whole_for_a_pointwise_model(crop, stride):
    model = ConvModel()
    x = torch.randn(2, 3, 37, 53)
    whole = predict(model, x, mode="whole")
    torch.testing.assert_close(predict(model, x, mode="slide", crop_size=crop, stride=stride), whole)
    assert set(model.seen[1:]) == {crop}  # every tile, border ones included, was padded to the crop


def test_slide_matches_whole_away_from_tile_seams_for_a_3x3_conv():
    model = ConvModel(kernel=(3, 3))
    x = torch.randn(1, 3, 10, 7)
    whole = predict(model, x)
    slide = predict(model, x, mode="slide", crop_size=4, stride=3)
    # A 3x3 conv sees one pixel around; a tile differs from the whole image only on its edges inside the image.
    exact = torch.ones(10, 7, dtype=torch.bool)
    for y1, y2, x1, x2 in HAND_WINDOWS:
        for y in range(y1, y2):
            for x_ in range(x1, x2):
                on_seam = (y == y1 and y1 > 0) or (y == y2 - 1 and y2 < 10) or \
                          (x_ == x1 and x1 > 0) or (x_ == x2 - 1 and x2 < 7)
                exact[y, x_] &= not on_seam
    assert 0 < exact.sum() < exact.numel()
    torch.testing.assert_close(slide[..., exact], whole[..., exact])
    assert not torch.allclose(slide[..., ~exact], whole[..., ~exact])


def test_flip_tta_is_exactly_symmetric_for_a_symmetric_input():
    model = ConvModel(kernel=(1, 3))  # a left-right asymmetric kernel
    half = torch.randn(2, 3, 9, 8)
    x = torch.cat([half, half.flip(-1)], dim=-1)
    assert not torch.equal(predict(model, x), predict(model, x).flip(-1))
    out = predict(model, x, flip=True)
    assert torch.equal(out, out.flip(-1))


@pytest.mark.parametrize("align_corners", [False, True])
def test_multi_scale_flip_averages_rescaled_logits(align_corners):
    model = ConvModel(kernel=(3, 3), align_corners=align_corners)
    x = torch.randn(1, 3, 21, 30)
    expected = 0
    for scale in (0.5, 1.25):
        size = (int(21 * scale + 0.5), int(30 * scale + 0.5))
        xs = F.interpolate(x, size, mode="bilinear", align_corners=align_corners)
        for flip in (False, True):
            y = model.conv(xs.flip(-1)).flip(-1) if flip else model.conv(xs)
            expected = expected + F.interpolate(y, (21, 30), mode="bilinear", align_corners=align_corners) / 4
    out = predict(model, x, scales=[0.5, 1.25], flip=True)
    assert model.seen == [(11, 15), (11, 15), (26, 38), (26, 38)]
    torch.testing.assert_close(out, expected)


def test_the_weights_eval_protocol_is_the_default_and_options_override_it():
    model = ConvModel()
    model.pretrained_cfg["eval"] = {"mode": "slide", "crop_size": [8, 8], "stride": [4, 4], "scales": [1.0],
                                    "flip": True}
    predict(model, torch.randn(1, 3, 12, 8))
    assert model.seen == [(8, 8)] * 4  # 2 tiles x (plain + flipped)
    model.seen.clear()
    predict(model, torch.randn(1, 3, 12, 8), mode="whole", flip=False)
    assert model.seen == [(12, 8)]
    assert str(EvalProtocol.from_cfg({})) == "whole image, scales 1, no flip"
    assert str(EvalProtocol().override(crop_size=(8, 12))) == "sliding window 8x12, stride 6x8, scales 1, no flip"


def test_zoo_model_predicts_batches_at_input_size():
    model = cityseg_zoo.create_model("fcn_r50").eval()
    x = torch.randn(2, 3, 41, 57)
    whole = predict(model, x)
    assert whole.shape == (2, 19, 41, 57) and whole.dtype == torch.float32
    torch.testing.assert_close(whole[1:], predict(model, x[1:]), rtol=1e-4, atol=1e-4)
    slide = predict(model, x, mode="slide", crop_size=(32, 40))
    assert slide.shape == (2, 19, 41, 57)


def test_segment_turns_uint8_images_into_train_ids():
    model = ConvModel(classes=19)
    image = torch.randint(0, 256, (3, 6, 7), dtype=torch.uint8)
    labels = segment(model, image)
    assert labels.shape == (6, 7) and labels.dtype == torch.int64
    assert torch.equal(labels, model.conv(preprocess(image, model.pretrained_cfg))[0].argmax(0))


def test_image_below_galdnets_minimum_gets_a_clear_error():
    model = cityseg_zoo.create_model("galdnet_r50").eval()
    x = torch.randn(1, 3, 64, 96)
    with pytest.raises(InputError, match=r"image 64x96 is smaller than galdnet_r50's minimum side of 111 px: "
                                         r".*the 1/8 map must be at least 15 px"):
        predict(model, x)
    with pytest.raises(InputError, match="at scale 0.5"):
        predict(model, torch.randn(1, 3, 150, 150), scales=[0.5, 1.0])
    # a sliding crop of >= 111 px pads the small image up to a size the model accepts
    assert predict(model, x, mode="slide", crop_size=112).shape == (1, 19, 64, 96)


def test_integer_tensors_are_refused_by_the_model_and_by_predict():
    model = cityseg_zoo.create_model("fcn_r50").eval()
    image = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(InputError, match="floating-point tensor, got dtype torch.uint8"):
        model(image)
    with pytest.raises(InputError, match="cityseg_zoo.data.preprocess"):
        predict(model, image)
    with pytest.raises(InputError, match="needs a crop size"):
        predict(model, image.float(), mode="slide")


def test_bf16_autocast_returns_float32_logits_close_to_float32():
    model = ConvModel(classes=19)
    x = torch.randn(1, 3, 16, 24)
    out = predict(model, x, amp_dtype=torch.bfloat16)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, predict(model, x), rtol=0.05, atol=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", [None, torch.float16])
def test_cuda_prediction_matches_cpu(amp):
    model = cityseg_zoo.create_model("fcn_r50").eval()
    x = torch.randn(1, 3, 64, 96)
    cpu = predict(model, x, mode="slide", crop_size=48)
    gpu = predict(model.cuda(), x, mode="slide", crop_size=48, amp_dtype=amp)
    assert gpu.device.type == "cuda"
    tolerance = 1e-3 if amp is None else 5e-2
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=tolerance, atol=tolerance)


def test_every_published_weight_has_a_readable_eval_protocol():
    protocols = {name: EvalProtocol.from_cfg(cityseg_zoo.model_info(name)["pretrained_cfg"])
                 for name in cityseg_zoo.list_pretrained()}
    assert protocols and all(p.mode in ("whole", "slide") for p in protocols.values())
    # models.md §1/§2: GALD/DGCNet eval.py slides 832 px tiles with 1/3 overlap, single scale
    assert str(protocols["dgcnet_r101_cityscapes"]) == "sliding window 832x832, stride 555x555, scales 1, no flip"


# ---------------------------------------------------------------- tile_batch: several crops per forward pass

def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error, Frobenius norm (as in the golden tests)."""
    return float((a.double() - b.double()).norm() / b.double().norm())


def record_batches(model: nn.Module) -> list[int]:
    sizes = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    return sizes


def expected_forwards(height, width, protocol: EvalProtocol, batch: int, tile_batch: int) -> list[int]:
    """Batch sizes of the forward passes: per scale, every crop (tiles x flips) in chunks of ``tile_batch``."""
    sizes = []
    for scale in protocol.scales:
        h, w = int(height * scale + 0.5), int(width * scale + 0.5)
        crops = 1 if protocol.mode == "whole" else len(list(slide_windows(h, w, protocol.crop_size,
                                                                          protocol.stride, protocol.style)))
        crops *= 2 if protocol.flip else 1
        sizes += [min(tile_batch, crops - start) * batch for start in range(0, crops, tile_batch)]
    return sizes


TILE_CASES = {  # batch, height, width, scales; crop 16, stride 11
    "one image": (1, 37, 53, (1.0,)),
    "two images, three scales": (2, 37, 53, (0.75, 1.0, 1.5)),
    "smaller than the crop": (1, 11, 13, (1.0, 1.25)),
}


@pytest.mark.parametrize("case", TILE_CASES)
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("style", ["gald", "encoding"])
def test_tile_batch_equals_tile_by_tile_for_a_conv_model(style, flip, case):
    batch, height, width, scales = TILE_CASES[case]
    model = ConvModel(kernel=(3, 3), classes=5)  # a 3x3 conv: tiles differ from the whole image at seams
    sizes = record_batches(model)
    x = torch.randn(batch, 3, height, width)
    options = dict(mode="slide", crop_size=16, stride=11, style=style, flip=flip, scales=scales)
    protocol = EvalProtocol().override(**options)
    reference = predict(model, x, **options)
    assert sizes == expected_forwards(height, width, protocol, batch, 1)  # tile_batch=1: one crop per forward
    for tile_batch in (2, 5, 64):  # 5 divides none of the crop counts; 64 takes every crop of a scale at once
        sizes.clear()
        out = predict(model, x, tile_batch=tile_batch, **options)
        assert sizes == expected_forwards(height, width, protocol, batch, tile_batch)
        assert max(sizes) <= tile_batch * batch  # memory bounded by the batch
        assert out.shape == reference.shape and out.dtype == torch.float32
        assert rel(out, reference) <= 1e-6, (tile_batch, rel(out, reference))


@pytest.mark.parametrize("scales", [(1.0,), (0.5, 1.25)])
def test_tile_batch_runs_the_whole_image_and_its_flip_together(scales):
    model = ConvModel(kernel=(1, 3))  # left-right asymmetric: the flipped half matters
    sizes = record_batches(model)
    x = torch.randn(2, 3, 21, 30)
    reference = predict(model, x, flip=True, scales=scales)
    assert sizes == [2, 2] * len(scales)
    sizes.clear()
    out = predict(model, x, flip=True, scales=scales, tile_batch=2)
    assert sizes == [4] * len(scales)  # image + flipped copy of both images in one pass; scales never mixed
    assert rel(out, reference) <= 1e-6
    sizes.clear()
    torch.testing.assert_close(predict(model, x, scales=scales, tile_batch=8), predict(model, x, scales=scales))
    assert sizes == [2] * 2 * len(scales)  # no flip: nothing to batch


def test_encoding_flip_halves_split_across_batches_are_paired():
    # 4 tiles x 2 flips = 8 crops in batches of 3: tile 2's plain and flipped halves land in different batches
    model = CallCounter()
    x = torch.zeros(1, 3, 11, 4)
    options = dict(mode="slide", crop_size=4, stride=3, style="encoding", flip=True)
    reference = predict(model, x, **options)
    model.calls = 0
    out = predict(model, x, tile_batch=3, **options)
    assert model.calls == 3
    # CallCounter returns one constant per call: every crop of a batch gets the batch's value, so only the
    # pairing of halves and the tile weights are checked here, against the values it must give
    values = [1, 1, 1, 2, 2, 2, 3, 3]  # crop k in batch k // 3 + 1; crops 2k, 2k + 1 are tile k and its flip
    scores = [torch.tensor(float(values[2 * k] + values[2 * k + 1]), dtype=torch.float64).exp() for k in range(4)]
    rows = [(0,), (0,), (0,), (0, 1), (1,), (1,), (1, 2), (2,), (2,), (2, 3), (3,)]
    for row, tiles in enumerate(rows):
        expected = (torch.stack([scores[k] for k in tiles]).mean().log() / 2).float()
        torch.testing.assert_close(out[0, 0, row], expected.expand(4))
    assert reference.shape == out.shape


def test_tile_batch_must_be_a_positive_int():
    model = ConvModel()
    x = torch.randn(1, 3, 8, 8)
    for bad in (0, -2, 1.5, True, "4"):
        with pytest.raises(InputError, match="tile_batch must be a positive int"):
            predict(model, x, mode="slide", crop_size=4, tile_batch=bad)
    torch.testing.assert_close(predict_slide(model, x, (4, 4), (3, 3), tile_batch=3),
                               predict_slide(model, x, (4, 4), (3, 3)))


@pytest.mark.parametrize("style", ["gald", "encoding"])
def test_tile_batch_on_a_zoo_model_equals_tile_by_tile(style):
    torch.manual_seed(0)
    model = cityseg_zoo.create_model("pspnet_r50").eval()
    x = torch.randn(1, 3, 97, 131)
    options = dict(mode="slide", crop_size=65, style=style, flip=True, scales=(0.75, 1.0))
    reference = predict(model, x, **options)  # 4 + 6 tiles, each twice (flip): 20 crops, 4 batches of 5
    out = predict(model, x, tile_batch=5, **options)
    # float32: oneDNN picks other convolution kernels for batch 1 and batch 5, which round differently
    # (measured 1.8e-7 gald, 7.0e-7 encoding); eval-mode BatchNorm itself is batch-independent
    assert rel(out, reference) <= 5e-6, rel(out, reference)


def test_tile_batch_on_a_zoo_model_in_float64_is_exact():
    # float64 shows the batching itself changes nothing: the logits, rounded to float32, came out bit-identical
    # here; 1e-9 leaves room for a rare one-ulp float32 rounding flip on another CPU
    torch.manual_seed(0)
    model = cityseg_zoo.create_model("pspnet_r50").eval().double()
    x = torch.randn(1, 3, 40, 45, dtype=torch.float64)
    for style, flip in (("gald", False), ("encoding", True)):  # 4 tiles, 4 or 8 crops, batches of 3
        options = dict(mode="slide", crop_size=33, style=style, flip=flip)
        assert rel(predict(model, x, tile_batch=3, **options), predict(model, x, **options)) <= 1e-9


def test_tile_batch_on_a_zoo_model_for_two_images_smaller_than_the_crop():
    torch.manual_seed(0)
    model = cityseg_zoo.create_model("pspnet_r50").eval()
    x = torch.randn(2, 3, 50, 60)
    for options in (dict(mode="slide", crop_size=65, flip=True), dict(mode="slide", crop_size=65, flip=True,
                                                                      style="encoding"), dict(flip=True)):
        reference = predict(model, x, **options)  # one padded tile (or the whole image), twice
        out = predict(model, x, tile_batch=2, **options)
        assert rel(out, reference) <= 5e-6, (options, rel(out, reference))
