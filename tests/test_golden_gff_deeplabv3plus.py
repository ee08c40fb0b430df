"""GFF-Net (WideResNet-38 release and the paper's ResNet re-design) and DeepLabv3+ (DecoupleSegNets)."""
import pytest
import torch
import torch.nn.functional as F

import cityseg_zoo
from cityseg_zoo.errors import WeightsUnavailableError
from cityseg_zoo.ops.gated_fusion import gated_fully_fusion
from cityseg_zoo.registry import arch_spec
from reference import check_golden, golden_output


def test_gffnet_wrn38_matches_decouplesegnets_reference_logits(tmp_path):
    assert tuple(golden_output("gffnet_wrn38_original").shape) == (1, 19, 128, 256)
    err = check_golden("gffnet_wrn38", "gffnet_wrn38_original", "module", tmp_path, output="forward")
    assert err <= 1e-4, err  # measured 3.0e-7


def test_deeplabv3plus_matches_decouplesegnets_reference_logits(tmp_path):
    err = check_golden("deeplabv3plus_r101", "deeplabv3plus_original", "module", tmp_path, output="forward")
    assert err <= 1e-4, err  # measured 3.0e-7


def _up(x, like):
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


def _awkward_levels(channels=3, sizes=((19, 33), (7, 11), (7, 11))):
    torch.manual_seed(0)
    xs = [torch.randn(2, channels, h, w) for h, w in sizes]
    gs = [torch.rand(2, channels, h, w) for h, w in sizes]
    return xs, gs


def test_gated_fully_fusion_follows_released_sequential_update():
    (m2, m5, a), (g2, g5, ga) = _awkward_levels()
    # DecoupleSegNets WiderResNetGFFDFPHead, written out: each update reads the levels already fused.
    m2_f = m2 + g2 * m2 + (1 - g2) * (_up(g5 * m5, m2) + _up(ga * a, m2))
    m5_f = m5 + g5 * m5 + (1 - g5) * (_up(g2 * m2_f, m5) + _up(ga * a, m5))
    a_f = a + a * ga + (1 - ga) * (_up(g5 * m5_f, a) + _up(g2 * m2_f, a))
    out = gated_fully_fusion([m2, m5, a], [g2, g5, ga], sequential=True)
    for got, want in zip(out, (m2_f, m5_f, a_f)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_gated_fully_fusion_simultaneous_is_the_papers_equation():
    xs, gs = _awkward_levels(channels=2, sizes=((23, 17), (12, 9), (6, 5), (6, 5)))
    out = gated_fully_fusion(xs, gs, sequential=False)
    for l, (x, g) in enumerate(zip(xs, gs)):
        others = sum(_up(gs[i] * xs[i], x) for i in range(len(xs)) if i != l)
        torch.testing.assert_close(out[l], (1 + g) * x + (1 - g) * others, rtol=1e-5, atol=1e-5)
    sequential = gated_fully_fusion(xs, gs, sequential=True)
    torch.testing.assert_close(sequential[0], out[0])  # the first level reads raw inputs either way
    assert not torch.allclose(sequential[-1], out[-1])  # later levels see fused ones


# head output size for 97x161: stride 2 (WRN-38 GFF: cls on mod2), stride 4 (decoder / DFP on layer1).
@pytest.mark.parametrize("name,stride,head_size", [("deeplabv3plus_r50", 4, (25, 41)), ("gffnet_r50", 4, (25, 41)),
                                                   ("gffnet_wrn38", 2, (49, 81))])
def test_odd_unequal_input_gives_full_size_logits_in_eval_and_a_dict_in_train(name, stride, head_size):
    torch.manual_seed(0)
    model = cityseg_zoo.create_model(name, num_classes=5)
    assert model.pretrained_cfg["head_stride"] == stride
    head_sizes = []
    model.head.register_forward_hook(lambda mod, inp, out: head_sizes.append(tuple(out.shape[-2:])))
    x = torch.randn(2, 3, 97, 161)
    with torch.no_grad():
        out = model.eval()(x[:1])
        assert out.shape == (1, 5, 97, 161) and torch.isfinite(out).all()
        assert head_sizes == [head_size]
        outs = model.train()(x)  # batch 2: BatchNorm on the 1x1 image-pooling branch needs it
    expected = {"out", "aux"} if name == "gffnet_r50" else {"out"}
    assert set(outs) == expected
    assert all(v.shape == (2, 5, 97, 161) for v in outs.values())


def test_resnet_gffnet_is_a_paper_redesign_without_checkpoint_layout():
    for name in ("gffnet_r50", "gffnet_r101"):
        spec = arch_spec(name)
        assert spec.layouts == ()
        assert spec.reference.startswith("none: rebuilt from the paper")
        assert "No reference code and no weights exist" in spec.doc


def test_wrn38_refuses_pretrained_backbone_it_cannot_get():
    with pytest.raises(WeightsUnavailableError, match="no ImageNet WiderResNet-38 weights"):
        cityseg_zoo.create_model("gffnet_wrn38", pretrained_backbone=True)
