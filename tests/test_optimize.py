"""The inference switch folds every conv->norm pair exactly and leaves the logits unchanged."""
import copy

import pytest
import torch
from torch import nn

import cityseg_zoo
from cityseg_zoo.ops.norm import ABN
from cityseg_zoo.optimize import fold_batchnorms, fold_conv_norm, optimize_for_inference


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def random_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Norms with non-trivial running statistics and affine terms (the init ones would make folding trivial),
    negative ABN weights (|w| + eps must be folded, not w), and non-zero attention gammas."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g) * 0.5 + 0.8)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.5)
    return model.eval()


@pytest.mark.parametrize("norm", [nn.BatchNorm2d(6), ABN(6), ABN(6, activation="identity")],
                         ids=["batchnorm", "abn_leaky_relu", "abn_identity"])
@pytest.mark.parametrize("bias", [False, True])
def test_folded_conv_equals_conv_then_norm(norm, bias):
    conv = nn.Conv2d(4, 6, 3, padding=2, dilation=2, bias=bias)
    pair = random_statistics(nn.Sequential(conv, norm))
    with torch.no_grad():
        pair[1].weight[0] = -0.7                         # ABN folds |w| + eps, BatchNorm w itself
    x = torch.randn(2, 4, 9, 11)
    with torch.no_grad():
        expected = pair(x)
        replacement = fold_conv_norm(pair[0], pair[1])
        out = replacement(pair[0](x))
    leaky = isinstance(norm, ABN) and norm.activation == "leaky_relu"
    assert isinstance(replacement, nn.LeakyReLU if leaky else nn.Identity)
    assert rel(out, expected) <= 1e-6


def test_folding_handles_conv1d_and_batchnorm1d():
    pair = random_statistics(nn.Sequential(nn.Conv1d(5, 7, 1, bias=False), nn.BatchNorm1d(7)))
    x = torch.randn(3, 5, 10)
    with torch.no_grad():
        expected = pair(x)
        assert fold_batchnorms(pair) == 1
        assert rel(pair(x), expected) <= 1e-6


def test_norm_after_an_activation_is_not_folded():
    block = random_statistics(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.BatchNorm2d(4)))
    assert fold_batchnorms(block) == 0
    assert isinstance(block[2], nn.BatchNorm2d)


@pytest.mark.parametrize("name, kept_features", [("danet_r50", {3}), ("ccnet_r50", {3}), ("dgcnet_r50", {3}),
                                                 ("galdnet_r50", {3}), ("deeplabv3plus_r50", {0, 3})])
def test_optimized_model_gives_the_same_logits_with_every_norm_folded(name, kept_features):
    torch.manual_seed(0)
    model = random_statistics(cityseg_zoo.create_model(name))
    x = torch.randn(1, 3, 113, 121)
    with torch.no_grad():
        expected = model(x)
        optimized = copy.deepcopy(model).optimize_for_inference()
        out = optimized(x)
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert rel(out, expected) <= 1e-5
    # The ResNet, the heads and the GCN/GALD blocks have every norm right after a conv: none may be left.
    assert not [n for n, m in optimized.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert optimized.pretrained_cfg["inference_optimized"]["fold_bn"] is True
    assert next(optimized.parameters()).requires_grad is False
    # Stage outputs the head never reads are freed early (DeepLabv3+ reads layer1 and layer4).
    assert optimized.backbone.kept_features == kept_features


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """The model's own initialisation made to look trained where it matters to bf16: norm statistics and betas
    perturbed mildly (running var 0.8-1.2, means and betas ±0.1, so activations keep unit scale), every residual
    branch switched on at a quarter of the identity path (timm's last norm of a block at 0.25 instead of its zero
    init, the WiderResNet's last conv scaled by 0.25), and the attention gammas at 0.5 (0 at init would hide the
    attention ops)."""
    from timm.models.resnet import BasicBlock, Bottleneck

    from cityseg_zoo.backbones.wider_resnet import IdentityResidualBlock
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.4 + 0.8)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            if isinstance(m, (Bottleneck, BasicBlock)):
                (m.bn3 if isinstance(m, Bottleneck) else m.bn2).weight.fill_(0.25)
            elif isinstance(m, IdentityResidualBlock):
                m.convs[-1].weight.mul_(0.25)
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.5)
    return model.eval()


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|``: the benchmark's measure of the logits difference."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


# One model per head (ResNet-50 twins), both other backbone families, the mmseg re-implementations.
FAMILIES = ["fcn_r50", "pspnet_r50", "deeplabv3_r50", "deeplabv3plus_r50", "danet_r50", "ccnet_r50", "galdnet_r50",
            "dgcnet_r50", "gffnet_r50", "gffnet_wrn38", "ocnet_asp_r50", "ocnet_base_r50", "segformer_b0",
            "mmseg_fcn_r50", "mmseg_pspnet_r50", "mmseg_deeplabv3_r50", "mmseg_deeplabv3plus_r50",
            "mmseg_danet_r50", "mmseg_ccnet_r50"]


# bf16 against float32, measured: 50 layers each rounding its weights and its input activations once to bf16
# (8 significant bits) put these random-weight ResNet-50 models 0.2-0.9% (Frobenius) from the float32 switch, and
# 0.5-1.8% in the largest logit difference over the largest logit, depending on the weights drawn (FCN-R50: weights
# alone rounded 0.75%, inputs alone 0.76%). That is bf16's floor, not a softmax or upsampling in bf16 (those are
# float32, checked below and in test_ops_fast.py): the whole GALD head in float32 still gives 1.4% on another draw.
# So the bound is 1e-2 on the Frobenius measure and 2e-2 on the largest difference.
@pytest.mark.parametrize("name", FAMILIES)
def test_bfloat16_switch_gives_float32_logits_within_1e_2_of_the_float32_switch(name, monkeypatch):
    torch.manual_seed(0)
    model = trained_like(cityseg_zoo.create_model(name, num_classes=7))
    side = max(model.min_input_size, 65)                      # GALD needs 111
    x = torch.randn(1, 3, side, max(side, 97), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = copy.deepcopy(model).optimize_for_inference()(x)
        optimize_for_inference(model, dtype=torch.bfloat16)
        softmax_dtypes = []
        softmax = torch.softmax
        monkeypatch.setattr(torch, "softmax", lambda t, *a, **k: softmax_dtypes.append(t.dtype) or softmax(t, *a, **k))
        out = model(x)
    assert next(model.parameters()).dtype == torch.bfloat16      # the weights were converted, not autocast
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert rel(out, expected) <= 1e-2 and max_rel(out, expected) <= 2e-2, (rel(out, expected), max_rel(out, expected))
    # Every attention softmax (DANet, OCNet, DGCNet's GCN, criss-cross's reference) ran on float32 energies.
    assert all(dtype == torch.float32 for dtype in softmax_dtypes), softmax_dtypes


def test_optimize_rejects_an_unknown_dtype_and_a_second_pass():
    model = cityseg_zoo.create_model("fcn_r50")
    with pytest.raises(ValueError, match="dtype must be"):
        optimize_for_inference(model, dtype=torch.int8)
    optimize_for_inference(model)
    with pytest.raises(ValueError, match="already optimised"):
        model.optimize_for_inference()
