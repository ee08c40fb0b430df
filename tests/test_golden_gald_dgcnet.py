"""GALD-Net and DGCNet: reference logits, the two GALD checkpoint layouts, the GALD / GCN ops, size contract."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from reference import check_golden, reference_keys, reference_state_dict

import cityseg_zoo
from cityseg_zoo.errors import InputError
from cityseg_zoo.hub.convert import load_converted
from cityseg_zoo.ops.gald import GALDBlock, LocalAttention, SpatialCGNL
from cityseg_zoo.ops.gcn import DualGCN, SpatialGCN
from cityseg_zoo.registry import arch_spec


# ---------------------------------------------------------------------------------------------- reference logits

def test_galdnet_matches_reference_logits(tmp_path):
    err = check_golden("galdnet_r101", "gald_r101_original", "bare", tmp_path)
    assert err <= 1e-4, err   # measured 4.0e-6


def test_dgcnet_matches_reference_logits(tmp_path):
    err = check_golden("dgcnet_r101", "dgcnet_r101_original", "bare", tmp_path)
    assert err <= 1e-4, err   # measured 1.8e-6


# Dec-2019 GALDNet stem names -> master (Sequential stem) names; every other key is the same in both.
V2019_STEM = {"conv1.": "conv1.0.", "bn1.": "conv1.1.", "conv2.": "conv1.3.", "bn2.": "conv1.4.",
              "conv3.": "conv1.6.", "bn3.": "bn1."}


def _to_master_name(key: str) -> str:
    return next((new + key[len(old):] for old, new in V2019_STEM.items() if key.startswith(old)), key)


def test_galdnet_loads_v2019_flat_stem_checkpoint_like_master_layout():
    old = reference_state_dict("gald_r101_original_v2019stem")
    master = {_to_master_name(k): v for k, v in old.items()}
    assert {k: list(v.shape) for k, v in master.items()} == reference_keys("gald_r101_original")
    model = cityseg_zoo.create_model("galdnet_r101").eval()
    layouts = arch_spec("galdnet_r101").layouts
    x = torch.randn(1, 3, 111, 113, generator=torch.Generator().manual_seed(1))
    outs = []
    for state, expected_layout in ((old, "lxtgh_v2019"), (master, "lxtgh")):
        assert load_converted(model, state, layouts).layout == expected_layout   # strict: every key mapped
        with torch.no_grad():
            outs.append(model.forward_logits_lowres(x))
    assert torch.equal(outs[0], outs[1])


# ------------------------------------------------------------------------------------------------------ GALD ops

def _randomize_norms(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial affine parameters and running statistics, so that eval-mode norms are not identities."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.5
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.5
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.5
    return module.double().eval()


def _bn(x: torch.Tensor, bn) -> torch.Tensor:
    """Eval BatchNorm over dim 1 of a tensor of any rank."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (x - bn.running_mean.view(shape)) * scale.view(shape) + bn.bias.view(shape)


def test_spatial_cgnl_matches_per_group_dot_product_loop():
    torch.manual_seed(0)
    block = _randomize_norms(SpatialCGNL(16, 12, groups=4))
    x = torch.randn(2, 16, 7, 5, dtype=torch.float64)
    with torch.no_grad():
        t, p, g = block.t(x), block.p(x), block.g(x)
    y = torch.empty_like(t)
    for b in range(2):
        for k in range(4):
            c = slice(3 * k, 3 * k + 3)
            s = sum(float(p[b, ci, h, w] * g[b, ci, h, w])
                    for ci in range(3 * k, 3 * k + 3) for h in range(7) for w in range(5))
            y[b, c] = s * t[b, c]
    z = F.conv2d(y, block.z.weight, groups=4)
    expected = F.group_norm(z, 4, block.gn.weight, block.gn.bias, block.gn.eps) + x
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=1e-10, atol=1e-10)


def test_gald_block_is_two_a_plus_a_times_mask_without_the_input():
    torch.manual_seed(0)
    block = _randomize_norms(GALDBlock(8, 4, groups=2))
    u = torch.randn(2, 8, 17, 15, dtype=torch.float64)
    with torch.no_grad():
        d = block.down(u)
        assert d.shape[-2:] == (8, 7)                               # floor((H - 3) / 2) + 1, no padding
        a = F.interpolate(block.long_relation(d), size=(17, 15), mode="bilinear", align_corners=True)
        la = block.local_attention
        m = torch.sigmoid(F.interpolate(la.dconv3(la.dconv2(la.dconv1(a))), size=(17, 15), mode="bilinear",
                                        align_corners=True))
        torch.testing.assert_close(block(u), 2 * a + a * m)


def test_local_attention_needs_15_pixels():
    la = LocalAttention(4).eval()
    assert la(torch.randn(2, 4, 15, 31)).shape == (2, 4, 15, 31)
    with pytest.raises(RuntimeError):
        la(torch.randn(2, 4, 14, 31))


# ------------------------------------------------------------------------------------------------------- GCN ops

def _conv1x1(x, conv):
    """1x1 Conv2d / Conv1d as an einsum over channels."""
    y = torch.einsum("oc,nc...->no...", conv.weight.flatten(1), x)
    return y if conv.bias is None else y + conv.bias.view((1, -1) + (1,) * (x.dim() - 2))


def _spatial_gcn_reference(gcn: SpatialGCN, x: torch.Tensor) -> torch.Tensor:
    n, _, h, w = x.shape
    k, q, v = (_conv1x1(x, c).flatten(2) for c in (gcn.node_k, gcn.node_q, gcn.node_v))   # [N, c, P]
    adjacency = torch.softmax(torch.einsum("nip,njp->nij", q, v), dim=2)                # softmax over j
    r = torch.einsum("nip,nij->njp", k, adjacency)                                        # K A, transposed
    r = _bn(_conv1x1(r, gcn.conv_wg), gcn.bn_wg).reshape(n, -1, h, w)
    return torch.relu(_bn(_conv1x1(r, gcn.out[0]), gcn.out[1]) + x)


def test_spatial_gcn_matches_einsum_reference():
    torch.manual_seed(0)
    gcn = _randomize_norms(SpatialGCN(12))
    x = torch.randn(2, 12, 5, 9, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(gcn(x), _spatial_gcn_reference(gcn, x))


def test_dual_gcn_matches_einsum_reference():
    torch.manual_seed(0)
    dual = _randomize_norms(DualGCN(16, ratio=4))
    x = torch.randn(2, 16, 13, 7, dtype=torch.float64)
    n, _, h, w = x.shape
    with torch.no_grad():
        # coordinate space: three depthwise stride-2 convs (padding 1, BN, no ReLU) -> SpatialGCN -> up
        local = x
        for i in (0, 2, 4):
            local = _bn(F.conv2d(local, dual.local[i].weight, stride=2, padding=1, groups=16), dual.local[i + 1])
        assert local.shape[-2:] == (2, 1)
        local = F.interpolate(_spatial_gcn_reference(dual.gcn_local_attention, local), size=(h, w),
                              mode="bilinear", align_corners=True)
        coordinate = x * local + x
        # feature space: project onto 4 nodes, GCN over nodes then states, re-project
        b = _bn(_conv1x1(x, dual.theta), dual.bn_theta).flatten(2)                    # [N, 4, P]
        p = _bn(_conv1x1(x, dual.phi), dual.bn_phi).flatten(2)                        # [N, 8, P]
        z = torch.einsum("nsp,nkp->nsk", p, b)                                        # [N, 8, 4]
        z = z + _bn(torch.einsum("lk,nsk->nls", dual.conv_adj.weight[..., 0], z), dual.bn_adj).transpose(1, 2)
        z = _bn(torch.einsum("ts,nsk->ntk", dual.conv_wg.weight[..., 0], z), dual.bn_wg)
        y = torch.einsum("ntk,nkp->ntp", z, b).reshape(n, -1, h, w)
        feature = torch.relu(x + _bn(_conv1x1(y, dual.conv3), dual.bn3))
        expected = _bn(_conv1x1(torch.cat([coordinate, feature], 1), dual.final[0]), dual.final[1])
        torch.testing.assert_close(dual.coordinate_gcn(x), coordinate)
        torch.testing.assert_close(dual.feature_gcn(x), feature)
        torch.testing.assert_close(dual(x), expected)


# ------------------------------------------------------------------------------------------- size and train contract

def test_galdnet_minimum_input_is_111_and_exact():
    model = cityseg_zoo.create_model("galdnet_r50", num_classes=5).eval()
    assert model.min_input_size == 111
    with torch.no_grad():
        out = model(torch.randn(1, 3, 111, 113))
        assert out.shape == (1, 5, 111, 113) and torch.isfinite(out).all()
        with pytest.raises(InputError, match="111"):
            model(torch.randn(1, 3, 110, 113))
        # without the check the network itself fails at 110 px
        model.arch_spec = dataclasses.replace(model.arch_spec, min_input_size=1)
        with pytest.raises(RuntimeError):
            model.forward_logits_lowres(torch.randn(1, 3, 110, 113))


def test_dgcnet_handles_odd_unequal_input():
    model = cityseg_zoo.create_model("dgcnet_r50", num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 97, 161))
    assert out.shape == (1, 5, 97, 161) and torch.isfinite(out).all()


# Batch 2: at the minimum GALD size the local attention's last BN sees 1x1 maps, and BN in train mode needs > 1 value.
@pytest.mark.parametrize("name, size", [("galdnet_r50", (111, 113)), ("dgcnet_r50", (49, 67))])
def test_train_mode_returns_out_and_aux_at_input_size(name, size):
    model = cityseg_zoo.create_model(name, num_classes=5).train()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, *size))
    assert set(outs) == {"out", "aux"}
    assert all(v.shape == (2, 5, *size) for v in outs.values())


def test_cfg_records_reference_input_normalisation():
    gald = cityseg_zoo.create_model("galdnet_r50").pretrained_cfg
    dgc = cityseg_zoo.create_model("dgcnet_r50").pretrained_cfg
    assert gald["input"]["channel_order"] == "BGR" and dgc["input"]["channel_order"] == "RGB"
    assert gald["align_corners"] and dgc["align_corners"] and gald["head_stride"] == dgc["head_stride"] == 8
