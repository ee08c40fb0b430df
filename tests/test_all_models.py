"""Every registered architecture honours the forward contract on odd, unequal input sizes."""
import pytest
import torch

from cityseg_zoo import InputError, create_model, list_models

ODD = (97, 161)


def _size_for(model) -> tuple[int, int]:
    """97x161, or the smallest odd sizes above the model's documented minimum."""
    lo = model.min_input_size
    return (max(ODD[0], lo + (lo % 2 == 0)), max(ODD[1], lo + 64 + (lo % 2 == 0)))


def _checked_here(name: str) -> bool:
    # The r101 builders differ from their r50 twins only in layer3's depth; they run in the golden tests.
    # Mask2Former-S/B/L differ from Swin-T only in widths and depths; they run in tests/test_mask2former.py.
    return not name.endswith("_r101") and name not in ("mask2former_swin_s", "mask2former_swin_b",
                                                       "mask2former_swin_l")


def _check_set_prediction(outs: dict, batch: int, num_classes: int, h: int, w: int) -> None:
    """Mask2Former's train contract: per-query class and mask logits of the last and of every earlier layer."""
    for pred in [outs, *outs["aux_outputs"]]:
        queries = pred["pred_logits"].shape[1]
        assert pred["pred_logits"].shape == (batch, queries, num_classes + 1)   # + the "no object" class
        assert pred["pred_masks"].shape == (batch, queries, -(-h // 4), -(-w // 4))
    assert len(outs["aux_outputs"]) >= 1


@pytest.mark.parametrize("name", [n for n in list_models() if _checked_here(n)])
def test_contract_on_odd_unequal_input(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    h, w = _size_for(model)
    x = torch.randn(2, 3, h, w)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7, h, w)
    assert torch.isfinite(out).all()
    model.train()
    outs = model(x)
    if isinstance(outs, dict) and "pred_logits" in outs:
        _check_set_prediction(outs, 2, 7, h, w)
    else:
        assert isinstance(outs, dict) and "out" in outs
        assert all(v.shape == (2, 7, h, w) for v in outs.values()), {k: v.shape for k, v in outs.items()}
    cfg = model.pretrained_cfg
    for key in ("architecture", "reference", "input", "align_corners", "head_stride", "num_classes"):
        assert key in cfg, key
    assert cfg["input"]["channel_order"] in ("RGB", "BGR")


@pytest.mark.parametrize("name", [n for n in list_models() if n.startswith("galdnet")])
def test_too_small_input_is_a_clear_error(name):
    model = create_model(name).eval()
    if model.min_input_size <= 1:
        pytest.skip("no minimum input size")
    s = model.min_input_size - 1
    with pytest.raises(InputError, match=str(model.min_input_size)):
        model(torch.randn(1, 3, s, s))
