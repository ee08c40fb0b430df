"""PSPNet (GALD repo), DeepLabv3 (CCNet repo) and OCNet Base-OC / ASP-OC reproduce their reference code."""
import math

import pytest
import torch
import torch.nn.functional as F

from cityseg_zoo import CheckpointError, InputError, create_model
from cityseg_zoo.ops.object_context import SelfAttentionBlock
from reference import check_golden, reference_state_dict, save_container

OCNET_ALIASES = {"f_query": "f_key"}


def test_pspnet_matches_gald_repo_reference_logits(tmp_path):
    err = check_golden("pspnet_r101", "pspnet_r101_original", "bare", tmp_path, output="lowres")
    assert err <= 1e-4, err


def test_deeplabv3_matches_ccnet_repo_reference_logits(tmp_path):
    err = check_golden("deeplabv3_r101", "deeplabv3_r101_original", "bare", tmp_path, output="lowres")
    assert err <= 1e-4, err


def test_ocnet_base_oc_matches_reference_logits(tmp_path):
    err = check_golden("ocnet_base_r101", "ocnet_base_oc_r101_original", "bare", tmp_path, output="lowres",
                       aliases=OCNET_ALIASES)
    assert err <= 1e-4, err


def test_ocnet_asp_oc_matches_reference_logits(tmp_path):
    err = check_golden("ocnet_asp_r101", "ocnet_asp_oc_r101_original", "bare", tmp_path, output="lowres",
                       aliases=OCNET_ALIASES)
    assert err <= 1e-4, err


def test_ocnet_checkpoint_whose_f_query_differs_from_f_key_is_rejected(tmp_path):
    state = reference_state_dict("ocnet_base_oc_r101_original", OCNET_ALIASES)
    state["context.2.stages.0.f_query.1.running_var"] = state["context.2.stages.0.f_query.1.running_var"] + 1
    path = save_container(state, tmp_path / "ocnet.pth", "bare")
    with pytest.raises(CheckpointError, match=r"context\.2\.stages\.0\.f_query\.1\.running_var"):
        create_model("ocnet_base_r101", pretrained=str(path))


def test_object_context_shares_one_query_key_module():
    block = SelfAttentionBlock(6, 4, 5)
    assert block.f_query is block.f_key
    assert not any("f_query" in k for k in block.state_dict())


def _direct_object_context(block: SelfAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """c_i = W(sum_j softmax_j(q_i . k_j / sqrt(d_k)) v_j), written out with explicit sums over positions."""
    conv, abn = block.f_key[0], block.f_key[1]
    xs = F.max_pool2d(x, block.scale) if block.scale > 1 else x
    n, _, h, w = xs.shape
    qk = F.conv2d(xs, conv.weight, conv.bias)
    gamma = abn.weight.abs() + abn.eps  # InPlaceABN scale
    qk = (qk - abn.running_mean[:, None, None]) / torch.sqrt(abn.running_var[:, None, None] + abn.eps)
    qk = F.leaky_relu(qk * gamma[:, None, None] + abn.bias[:, None, None], 0.01)
    v = F.conv2d(xs, block.f_value.weight, block.f_value.bias)
    q, k, v = qk.reshape(n, -1, h * w), qk.reshape(n, -1, h * w), v.reshape(n, -1, h * w)
    out = torch.empty(n, v.shape[1], h * w, dtype=x.dtype)
    for b in range(n):
        for i in range(h * w):
            energy = torch.stack([(q[b, :, i] * k[b, :, j]).sum() for j in range(h * w)]) / math.sqrt(q.shape[1])
            attn = torch.exp(energy - energy.max())
            attn = attn / attn.sum()
            out[b, :, i] = (v[b] * attn[None, :]).sum(dim=1)
    context = F.conv2d(out.reshape(n, -1, h, w), block.W.weight, block.W.bias)
    if block.scale > 1:
        context = F.interpolate(context, size=x.shape[-2:], mode="bilinear", align_corners=True)
    return context


@pytest.mark.parametrize("scale", [1, 2])
def test_object_context_matches_direct_computation_on_odd_sizes(scale):
    torch.manual_seed(0)
    block = SelfAttentionBlock(6, 4, 5, out_ch=3, scale=scale).eval()
    with torch.no_grad():
        for p in block.parameters():  # W starts at zero in the reference; randomise everything
            p.copy_(torch.randn_like(p) * 0.5)
        abn = block.f_key[1]
        abn.running_mean.copy_(torch.randn(4) * 0.1)
        abn.running_var.copy_(torch.rand(4) + 0.5)
        x = torch.randn(2, 6, 7, 11)
        out = block(x)
        expected = _direct_object_context(block, x)
    assert out.shape == (2, 3, 7, 11)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["pspnet_r50", "deeplabv3_r50", "ocnet_base_r50", "ocnet_asp_r50"])
def test_r50_models_on_odd_unequal_input(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 97, 161)).shape == (1, 19, 97, 161)
        # Train mode needs batch 2 (the 1x1 image-pool branches normalise with batch statistics); a smaller
        # odd size keeps the test fast.
        outs = model.train()(torch.randn(2, 3, 33, 49))
    assert sorted(outs) == ["aux", "out"]
    assert all(v.shape == (2, 19, 33, 49) for v in outs.values())


def test_asp_oc_minimum_input_size_is_exact():
    model = create_model("ocnet_asp_r50").eval()
    assert model.min_input_size == 7
    with torch.no_grad():
        assert model(torch.randn(1, 3, 7, 9)).shape == (1, 19, 7, 9)
        with pytest.raises(InputError, match="7"):
            model(torch.randn(1, 3, 6, 9))
