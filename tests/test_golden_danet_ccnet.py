"""DANet and CCNet reproduce their reference code; their attention ops match straightforward computations."""
import copy

import pytest
import torch

import cityseg_zoo
from cityseg_zoo import CheckpointError
from cityseg_zoo.ops import attention
from cityseg_zoo.ops.attention import ChannelAttention, PositionAttention
from cityseg_zoo.ops.criss_cross import CrissCrossAttention, criss_cross_attention
from reference import check_golden, reference_state_dict, save_container


# ---------------------------------------------------------------- golden outputs of the reference code

def test_danet_matches_reference_logits(tmp_path):
    err = check_golden("danet_r101", "danet_r101_original", "state_dict", tmp_path, output="forward")
    assert err <= 1e-4, err


def test_ccnet_matches_reference_logits_with_recurrence_2(tmp_path):
    err = check_golden("ccnet_r101", "ccnet_r101_original", "bare", tmp_path, recurrence=2)
    assert err <= 1e-4, err


# ---------------------------------------------------------------- DANet checkpoint layout

@pytest.fixture(scope="module")
def danet_r101():
    return cityseg_zoo.create_model("danet_r101")


def test_danet_layout_rejects_unknown_key_and_names_it(tmp_path, danet_r101):
    state = reference_state_dict("danet_r101_original")
    state["head.sa.extra_conv.weight"] = torch.zeros(1)
    path = save_container(state, tmp_path / "danet_extra.pth.tar", "state_dict")
    with pytest.raises(CheckpointError, match=r"head\.sa\.extra_conv\.weight"):
        cityseg_zoo.load_checkpoint(danet_r101, path)


def test_danet_layout_accepts_checkpoint_without_fc_and_num_batches_tracked(tmp_path, danet_r101):
    state = {k: v for k, v in reference_state_dict("danet_r101_original").items()
             if not k.endswith("num_batches_tracked") and not k.startswith("pretrained.fc.")}
    path = save_container(state, tmp_path / "danet_v1.pth.tar", "state_dict")
    cityseg_zoo.load_checkpoint(danet_r101, path)
    assert danet_r101.pretrained_cfg["checkpoint"]["layout"] == "danet"
    assert torch.equal(danet_r101.head.sa.gamma, state["head.sa.gamma"])
    assert torch.equal(danet_r101.backbone.layer4[2].conv2.weight, state["pretrained.layer4.2.conv2.weight"])


# ---------------------------------------------------------------- forward contract on odd sizes

ODD = (97, 161)


def test_danet_r50_odd_input_eval_logits_and_train_dict():
    torch.manual_seed(0)
    model = cityseg_zoo.create_model("danet_r50").eval()
    x = torch.randn(2, 3, *ODD)
    with torch.no_grad():
        assert model(x).shape == (2, 19, *ODD)
    outs = model.train()(x)
    assert set(outs) == {"out", "pam", "cam"}
    assert all(v.shape == (2, 19, *ODD) for v in outs.values())


@pytest.mark.parametrize("recurrence", [1, 2])
def test_ccnet_r50_odd_input_eval_logits_and_train_dict(recurrence):
    torch.manual_seed(0)
    model = cityseg_zoo.create_model("ccnet_r50", recurrence=recurrence).eval()
    assert model.head.recurrence == recurrence
    x = torch.randn(2, 3, *ODD)
    with torch.no_grad():
        assert model(x).shape == (2, 19, *ODD)
        assert model.forward_logits_lowres(x).shape == (2, 19, 13, 21)   # ceil-mode pool: 97 -> 49 -> 25 -> 13
    outs = model.train()(x)
    assert set(outs) == {"out", "aux"}
    assert all(v.shape == (2, 19, *ODD) for v in outs.values())


# ---------------------------------------------------------------- position attention (PAM)

def _randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere, gamma included (it is 0 at init, which would hide the attention)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


def test_position_attention_matches_softmax_of_plain_dot_products():
    torch.manual_seed(1)
    pam = _randomised(PositionAttention(16))
    x = torch.randn(2, 16, 7, 11)
    ref = copy.deepcopy(pam).double()
    xd = x.double()
    q, k, v = (conv(xd).flatten(2) for conv in (ref.query_conv, ref.key_conv, ref.value_conv))
    a = torch.softmax(torch.einsum("bci,bcj->bij", q, k), dim=-1)       # no 1/sqrt(d) scaling
    expected = ref.gamma * torch.einsum("bij,bcj->bci", a, v).view(2, 16, 7, 11) + xd
    out = pam(x)
    assert torch.allclose(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_entries", [1, 1000, 10 ** 6])
def test_position_attention_chunked_agrees_with_explicit(chunk_entries):
    torch.manual_seed(2)
    q, k, v = torch.randn(2, 8, 13 * 19), torch.randn(2, 8, 13 * 19), torch.randn(2, 24, 13 * 19)
    explicit = attention.position_attention_explicit(q, k, v)
    chunked = attention.position_attention_chunked(q, k, v, chunk_entries=chunk_entries)
    rel = float((chunked - explicit).norm() / explicit.norm())
    assert rel <= 1e-5, rel


def test_position_attention_picks_memory_light_path_for_large_inputs(monkeypatch):
    torch.manual_seed(3)
    pam = _randomised(PositionAttention(16))
    x = torch.randn(2, 16, 9, 15)
    calls = []
    chunked = attention.position_attention_chunked
    with torch.no_grad():
        explicit = pam(x)                                               # 135 positions: explicit path
        monkeypatch.setattr(attention, "EXPLICIT_MAX_POSITIONS", 100)
        monkeypatch.setattr(attention, "position_attention_chunked",
                            lambda q, k, v: calls.append(q.shape) or chunked(q, k, v, chunk_entries=500))
        light = pam(x)
    assert calls == [torch.Size([2, 2, 135])]
    rel = float((light - explicit).norm() / explicit.norm())
    assert rel <= 1e-5, rel


# ---------------------------------------------------------------- channel attention (CAM)

def test_channel_attention_matches_softmax_of_negative_gram_matrix():
    torch.manual_seed(4)
    cam = _randomised(ChannelAttention())
    x = torch.randn(2, 6, 5, 9) * 0.3
    xd = x.double().flatten(2)
    # softmax(rowmax(E) - E) == softmax(-E): an independent form of the same attention.
    a = torch.softmax(-torch.einsum("bcn,bdn->bcd", xd, xd), dim=-1)
    expected = cam.gamma.double() * torch.einsum("bcd,bdn->bcn", a, xd).view(2, 6, 5, 9) + x.double()
    assert torch.allclose(cam(x).double(), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- criss-cross attention (CCA)

def _criss_cross_brute_force(q, k, v):
    """Per pixel (i, j): row i with every pixel, column j without (i, j), one softmax, weighted sum of v."""
    b, _, h, w = q.shape
    out = torch.zeros(b, v.shape[1], h, w, dtype=q.dtype)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                cross = [(i, x) for x in range(w)] + [(y, j) for y in range(h) if y != i]
                keys = torch.stack([k[n, :, y, x] for y, x in cross])            # [H+W-1, Cq]
                values = torch.stack([v[n, :, y, x] for y, x in cross])          # [H+W-1, Cv]
                a = torch.softmax(keys @ q[n, :, i, j], dim=0)
                out[n, :, i, j] = a @ values
    return out


@pytest.mark.parametrize("size", [(5, 7), (1, 6), (6, 1)])
def test_criss_cross_attention_matches_per_pixel_loop(size):
    torch.manual_seed(5)
    q, k = torch.randn(2, 3, *size), torch.randn(2, 3, *size)
    v = torch.randn(2, 4, *size)
    expected = _criss_cross_brute_force(q.double(), k.double(), v.double())
    out = criss_cross_attention(q, k, v)
    assert torch.allclose(out.double(), expected, rtol=1e-5, atol=1e-6)


def test_criss_cross_module_is_gamma_times_attention_plus_input():
    torch.manual_seed(6)
    cca = _randomised(CrissCrossAttention(16)).double()
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    expected = cca.gamma * _criss_cross_brute_force(cca.query_conv(x), cca.key_conv(x), cca.value_conv(x)) + x
    assert torch.allclose(cca(x), expected, rtol=1e-10, atol=1e-10)
