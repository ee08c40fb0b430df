"""Whole, sliding-window and multi-scale + flip prediction."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cityseg_zoo
from cityseg_zoo.data import IMAGENET_RGB, preprocess
from cityseg_zoo.errors import InputError
from cityseg_zoo.inference import EvalProtocol, predict, segment, slide_windows

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
