"""Every registered architecture honours the forward contract on odd, unequal input sizes."""
import pytest
import torch

from cityseg_zoo import InputError, create_model, list_models

ODD = (97, 161)


def _size_for(model) -> tuple[int, int]:
    """97x161, or the smallest odd sizes above the model's documented minimum."""
    lo = model.min_input_size
    return (max(ODD[0], lo + (lo % 2 == 0)), max(ODD[1], lo + 64 + (lo % 2 == 0)))


# The r101 builders differ from their r50 twins only in layer3's depth; they run in the golden tests.
@pytest.mark.parametrize("name", [n for n in list_models() if not n.endswith("_r101")])
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
