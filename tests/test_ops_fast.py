"""Every fast path in cityseg_zoo.ops gives its reference's result on random, odd-sized inputs.

float32 paths agree with the float32 reference to 1e-5 (relative, Frobenius norm); bf16 runs agree with a
float64 reference to 1e-2. Every attention op takes its softmax in float32 in low precision, checked on energies
that bf16 cannot hold. The CUDA-only dispatch is checked on CUDA when one is present (skipped otherwise).
"""
import copy

import pytest
import torch

from cityseg_zoo.ops import attention, criss_cross, dilated_conv, efficient_attention, gated_fusion
from cityseg_zoo.ops.gald import GALDBlock
from cityseg_zoo.ops.gcn import DualGCN
from cityseg_zoo.ops.object_context import SelfAttentionBlock


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and norm statistics everywhere (gammas at init are 0 and would hide the ops)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return module.eval()


# ---------------------------------------------------------------- position attention (DANet PAM)

def qkv(b=2, cq=8, cv=24, n=13 * 19, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, c, n, generator=g).to(dtype) for c in (cq, cq, cv))


def test_position_attention_sdpa_split_heads_equals_explicit():
    q, k, v = qkv()
    assert rel(attention.position_attention_sdpa(q, k, v), attention.position_attention_explicit(q, k, v)) <= 1e-5


def test_position_attention_sdpa_in_bf16_is_within_1e_2_of_float64():
    q, k, v = qkv(seed=1, dtype=torch.bfloat16)
    expected = attention.position_attention_explicit(*(t.double() for t in (q, k, v)))   # same bf16 inputs
    out = attention.position_attention_sdpa(q, k, v)
    assert out.dtype == torch.bfloat16
    assert rel(out, expected) <= 1e-2


def test_position_attention_chunked_in_bf16_is_within_1e_2_of_float64():
    q, k, v = qkv(seed=2, dtype=torch.bfloat16)
    expected = attention.position_attention_explicit(*(t.double() for t in (q, k, v)))   # same bf16 inputs
    out = attention.position_attention_chunked(q, k, v, chunk_entries=1000)
    assert rel(out, expected) <= 1e-2


def test_position_attention_sdpa_rejects_value_channels_not_a_multiple_of_query_channels():
    q, k, v = qkv(cq=8, cv=20)
    with pytest.raises(ValueError, match="multiple of query channels 8"):
        attention.position_attention_sdpa(q, k, v)


def test_position_attention_in_float32_on_cpu_never_takes_the_sdpa_path(monkeypatch):
    q, k, v = qkv()
    monkeypatch.setattr(attention, "position_attention_sdpa", lambda *a: pytest.fail("SDPA path on CPU"))
    assert rel(attention.position_attention(q, k, v, memory_light=True),
               attention.position_attention_explicit(q, k, v)) <= 1e-5


def test_position_attention_module_accepts_channels_last_input():
    pam = randomised(attention.PositionAttention(16))
    x = torch.randn(2, 16, 7, 11)
    with torch.no_grad():
        assert rel(pam(x.contiguous(memory_format=torch.channels_last)), pam(x)) <= 1e-6


def test_channel_attention_accepts_channels_last_input():
    cam = randomised(attention.ChannelAttention())
    x = torch.randn(2, 6, 5, 9) * 0.3
    with torch.no_grad():
        assert rel(cam(x.contiguous(memory_format=torch.channels_last)), cam(x)) <= 1e-6


# ---------------------------------------------------------------- criss-cross attention (CCNet)

@pytest.mark.parametrize("size", [(5, 7), (1, 6), (6, 1), (13, 9)])
def test_criss_cross_fast_path_equals_reference_on_odd_sizes(size):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, c, *size, generator=g) for c in (3, 3, 5))
    with torch.no_grad():
        fast = criss_cross.criss_cross_attention_fast(q, k, v)
    assert fast.shape == (2, 5, *size)
    assert rel(fast, criss_cross.criss_cross_attention_reference(q, k, v)) <= 1e-5


def test_criss_cross_fast_path_accepts_channels_last_and_bf16():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, c, 11, 14, generator=g) for c in (4, 4, 8))
    expected = criss_cross.criss_cross_attention_reference(q.double(), k.double(), v.double())
    with torch.no_grad():
        channels_last = [t.contiguous(memory_format=torch.channels_last) for t in (q, k, v)]
        assert rel(criss_cross.criss_cross_attention_fast(*channels_last), expected) <= 1e-5
        bf16 = [t.bfloat16() for t in (q, k, v)]
        expected_bf16 = criss_cross.criss_cross_attention_reference(*(t.double() for t in bf16))
        assert rel(criss_cross.criss_cross_attention_fast(*bf16), expected_bf16) <= 1e-2


def test_criss_cross_dispatch_keeps_gradients_with_the_reference_and_uses_fast_path_without(monkeypatch):
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, c, 6, 5, generator=g) for c in (3, 3, 4))
    q.requires_grad_(True)
    out = criss_cross.criss_cross_attention(q, k, v)          # needs a gradient: the reference
    out.sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    monkeypatch.setattr(criss_cross, "criss_cross_attention_reference", lambda *a: pytest.fail("reference"))
    with torch.no_grad():
        assert rel(criss_cross.criss_cross_attention(q, k, v), out.detach()) <= 1e-5


# ---------------------------------------------------------------- softmax in float32 under bf16 (every attention op)

def sharp(shape, dim, seed, big=16.0):
    """bf16-exact factors whose dot products along ``dim`` are ``big² + s`` with ``s`` a multiple of 1/64 in
    [-1, 1]: float32 holds every energy exactly, but bf16 rounds 256 + s to 254, 256 or 258, which would change
    attention weights by factors up to e. Channel 0 along ``dim`` is ``big``, channel 1 small, the rest 0."""
    g = torch.Generator().manual_seed(seed)
    t = torch.zeros(shape)
    t.select(dim, 0).fill_(big)
    t.select(dim, 1).copy_(torch.randint(-8, 9, t.select(dim, 1).shape, generator=g) / 8)
    return t


def _position(q, k, v):
    return attention.position_attention_explicit(q.flatten(2), k.flatten(2), v.flatten(2))


def _position_chunked(q, k, v):
    return attention.position_attention_chunked(q.flatten(2), k.flatten(2), v.flatten(2), chunk_entries=50)


def _position_dispatch(q, k, v):      # bf16 on CPU: the SDPA kernel (8 value channels = 2 heads of 4)
    return attention.position_attention(q.flatten(2), k.flatten(2), v.flatten(2))


def _channel(q, k, v):
    # E = X Xᵀ over the pixels: X = q, sharp along them. Pixel 0 (16 in every channel) comes out as 16 whatever
    # the weights; the other pixels show them.
    return attention.channel_attention(q).flatten(2)[..., 1:]


def _sdpa(q, k, v):
    # [B, C, H, W] -> one head [B, 1, HW, C]; the fused kernel scales by 1/sqrt(C): C = 4 halves the energies.
    heads = [t.flatten(2).transpose(1, 2).unsqueeze(1) for t in (q, k, v)]
    return efficient_attention.efficient_attention(*heads)


def _sdpa_reference(q, k, v):
    heads = [t.flatten(2).transpose(1, 2).unsqueeze(1) for t in (q, k, v)]
    return efficient_attention.efficient_attention_reference(*heads)


def _criss_cross_fast(q, k, v):
    with torch.no_grad():
        return criss_cross.criss_cross_attention_fast(q, k, v)


ATTENTION_OPS = {"position": _position, "position_chunked": _position_chunked,
                 "position_dispatch": _position_dispatch, "channel": _channel,
                 "sdpa_efficient_attention": _sdpa, "efficient_attention_reference": _sdpa_reference,
                 "criss_cross_fast": _criss_cross_fast, "criss_cross_reference": criss_cross.criss_cross_attention_reference}


@pytest.mark.parametrize("how", ["bf16_tensors", "autocast"])
@pytest.mark.parametrize("op", sorted(ATTENTION_OPS))
def test_attention_softmax_is_float32_in_bf16_on_energies_bf16_cannot_hold(op, how):
    fn = ATTENTION_OPS[op]
    if op == "channel":       # X: [B, C, H, W] sharp along the pixels (dim 2 after flattening H·W = 5·6)
        q = sharp((2, 6, 30), 2, seed=20).view(2, 6, 5, 6)
        k = v = None
    else:
        q, k = sharp((2, 4, 5, 6), 1, seed=21), sharp((2, 4, 5, 6), 1, seed=22)
        v = (torch.randn(2, 8, 5, 6, generator=torch.Generator().manual_seed(23)) * 4).round() / 4
    args = [t for t in (q, k, v)]
    expected = fn(*[t if t is None else t.double() for t in args])       # the same (bf16-exact) values in float64
    if how == "bf16_tensors":
        out = fn(*[t if t is None else t.bfloat16() for t in args])
        assert out.dtype == torch.bfloat16
    else:                     # float32 tensors under CPU autocast, whose policy runs bmm in bf16
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(*args)
    # Energies rounded to bf16 give errors of 10-40% here; float32 energies leave the bf16 rounding of the
    # weights and of the output.
    assert rel(out, expected) <= 1e-2, rel(out, expected)


@pytest.mark.parametrize("amx", [True, False])
def test_position_attention_in_bf16_on_cpu_takes_sdpa_with_amx_and_the_chunks_without(amx, monkeypatch):
    q, k, v = qkv(dtype=torch.bfloat16)
    calls = []
    for name in ("position_attention_sdpa", "position_attention_chunked"):
        original = getattr(attention, name)
        monkeypatch.setattr(attention, name, lambda *a, name=name, original=original: calls.append(name) or original(*a))
    monkeypatch.setattr(attention, "_cpu_has_amx", lambda: amx)
    out = attention.position_attention(q, k, v, memory_light=True)
    assert calls == ["position_attention_sdpa" if amx else "position_attention_chunked"]
    assert out.dtype == torch.bfloat16
    assert rel(out, attention.position_attention_explicit(q.double(), k.double(), v.double())) <= 1e-2


def test_position_attention_chunks_on_cpu_equal_the_explicit_matrix():
    q, k, v = qkv(b=2, n=13 * 19)
    out = attention.position_attention_chunked(q, k, v, chunk_entries=(13 * 19) * 40)   # 7 chunks, the last short
    assert rel(out, attention.position_attention_explicit(q, k, v)) <= 1e-5


def test_bf16_energies_would_fail_the_float32_softmax_check():
    """The check above can fail: the same op with its energies rounded to bf16 is far off."""
    q, k = (sharp((2, 4, 30), 1, seed=s) for s in (21, 22))
    v = torch.randn(2, 8, 30, generator=torch.Generator().manual_seed(23))
    expected = attention.position_attention_explicit(q.double(), k.double(), v.double())
    energy = torch.bmm(q.transpose(1, 2), k).bfloat16().double()          # what a bf16 energy GEMM returns
    rounded = torch.bmm(v.double(), torch.softmax(energy, dim=-1).transpose(1, 2))
    assert rel(rounded, expected) > 5e-2


# ---------------------------------------------------------------- wide dilated convs as row GEMMs (bf16 ASPP)

@pytest.mark.parametrize("size, dilation", [((9, 13), 4), ((9, 13), 12), ((7, 30), 12), ((5, 6), 36), ((13, 1), 4)])
def test_dilated_conv_row_gemms_equal_the_convolution(size, dilation):
    """Odd sizes, taps that land partly, or entirely (dilation 36 on a 5x6 map), in the zero padding, batch 2."""
    g = torch.Generator().manual_seed(24)
    x = torch.randn(2, 16, *size, generator=g).bfloat16().contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(8, 16, 3, 3, generator=g).bfloat16(), torch.randn(8, generator=g).bfloat16()
    expected = torch.nn.functional.conv2d(x.double(), weight.double(), bias.double(), padding=dilation,
                                          dilation=dilation)
    out = dilated_conv.conv3x3_row_gemms(x, weight, bias, dilation)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert rel(out, expected) <= 1e-2
    assert rel(dilated_conv.conv3x3_row_gemms(x.float(), weight.float(), bias.float(), dilation), expected) <= 1e-6


def test_only_wide_dilated_convs_take_row_gemms_and_only_in_low_precision():
    aspp = torch.nn.Conv2d(1024, 8, 3, padding=12, dilation=12)
    assert dilated_conv.takes_row_gemms(aspp)
    for conv in (torch.nn.Conv2d(512, 8, 3, padding=12, dilation=12),      # ResNet layer4 widths: oneDNN wins
                 torch.nn.Conv2d(1024, 8, 3, padding=2, dilation=2), torch.nn.Conv2d(1024, 8, 1),
                 torch.nn.Conv2d(1024, 8, 3, padding=12, dilation=12, groups=2)):
        assert not dilated_conv.takes_row_gemms(conv)
    model = torch.nn.Sequential(aspp, torch.nn.Conv2d(512, 8, 3, padding=12, dilation=12))
    assert dilated_conv.use_row_gemms(model) == 1 and isinstance(model[0], dilated_conv.DilatedConv2d)
    x = torch.randn(1, 1024, 9, 11)
    with torch.no_grad():
        assert torch.equal(model[0](x), torch.nn.functional.conv2d(x, aspp.weight, aspp.bias, padding=12, dilation=12))
        model[0].bfloat16()
        low = x.bfloat16().contiguous(memory_format=torch.channels_last)
        assert rel(model[0](low), torch.nn.functional.conv2d(low, aspp.weight, aspp.bias, padding=12,
                                                             dilation=12)) <= 1e-2


# ---------------------------------------------------------------- element-wise chains (GFF, GALD, DGCNet)

def test_gate_fuse_fast_equals_reference():
    g = torch.Generator().manual_seed(6)
    x, incoming = torch.randn(2, 5, 9, 13, generator=g), torch.randn(2, 5, 9, 13, generator=g)
    gate = torch.rand(2, 5, 9, 13, generator=g)
    expected = gated_fusion.gate_fuse_reference(x, gate, incoming)
    assert rel(gated_fusion.gate_fuse_fast(x, gate, incoming.clone()), expected) <= 1e-6


def test_gated_fully_fusion_without_gradients_equals_the_differentiable_path():
    g = torch.Generator().manual_seed(7)
    sizes = ((17, 23), (9, 12), (5, 6))
    xs = [torch.randn(2, 4, *s, generator=g).requires_grad_(True) for s in sizes]
    gs = [torch.rand(2, 4, *s, generator=g) for s in sizes]
    reference = gated_fusion.gated_fully_fusion(xs, gs, sequential=True)
    with torch.no_grad():
        fast = gated_fusion.gated_fully_fusion(xs, gs, sequential=True)
    for a, b in zip(fast, reference):
        assert rel(a, b.detach()) <= 1e-6


def test_gald_block_fused_distribution_equals_the_papers_composition():
    block = randomised(GALDBlock(16, 8, groups=4), seed=8)
    u = torch.randn(2, 16, 17, 21)
    with torch.no_grad():
        a = block.aggregate(u)
        expected = (a + a * block.local_attention.mask(a)) + a          # distribute(a) + a, as the reference
        assert rel(block(u), expected) <= 1e-6


def test_dual_gcn_in_place_residuals_equal_the_differentiable_path():
    gcn = randomised(DualGCN(16, ratio=4), seed=9)
    x = torch.randn(2, 16, 15, 19)
    reference = gcn(x.clone().requires_grad_(True)).detach()
    with torch.no_grad():
        assert rel(gcn(x), reference) <= 1e-6


def test_object_context_without_the_full_matrix_equals_explicit_attention(monkeypatch):
    block = randomised(SelfAttentionBlock(12, 6, 8, 12, scale=1), seed=10)
    x = torch.randn(2, 12, 9, 14)
    with torch.no_grad():
        xq = block.f_key(x).flatten(2)
        xv = block.f_value(x).flatten(2)
        a = torch.softmax(torch.einsum("bci,bcj->bij", xq.double(), xq.double()) / 6 ** 0.5, dim=-1)
        expected = block.W(torch.einsum("bij,bcj->bci", a, xv.double()).float().view(2, 8, 9, 14))
        monkeypatch.setattr(attention, "EXPLICIT_MAX_POSITIONS", 10)   # 126 positions: the chunked path
        assert rel(block(x), expected) <= 1e-5


# ---------------------------------------------------------------- on CUDA, when there is one

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_ops_match_reference_on_cuda():
    q, k, v = (t.cuda() for t in qkv(cq=8, cv=64, n=23 * 29))
    assert attention._sdpa_fits(q, v)
    assert rel(attention.position_attention(q, k, v), attention.position_attention_explicit(q, k, v)) <= 1e-5
    q, k, v = (t.bfloat16() for t in (q, k, v))
    bf16 = attention.position_attention(q, k, v)
    assert rel(bf16, attention.position_attention_explicit(q.double(), k.double(), v.double())) <= 1e-2
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(2, c, 13, 9, generator=g).cuda() for c in (3, 3, 5))
    with torch.no_grad():
        assert rel(criss_cross.criss_cross_attention_fast(q, k, v),
                   criss_cross.criss_cross_attention_reference(q, k, v)) <= 1e-5
    module = randomised(GALDBlock(16, 8, groups=4), seed=12)
    u = torch.randn(2, 16, 17, 21)
    with torch.no_grad():
        expected = module(u)
        assert rel(copy.deepcopy(module).cuda()(u.cuda()).cpu(), expected) <= 1e-5


# ---------------------------------------------------------------- Triton kernels, run by Triton's CPU interpreter

TRITON_CHECK = """
import torch
from cityseg_zoo.ops import triton_kernels as tk
from cityseg_zoo.ops.gated_fusion import gate_fuse_reference
g = torch.Generator().manual_seed(13)
worst = 0.0
for shape in [(2, 3, 5, 7), (2, 4, 17, 19)]:          # 210 and 2584 elements: one partial and several blocks
    x, incoming, logits = (torch.randn(shape, generator=g) for _ in range(3))
    gate = torch.rand(shape, generator=g)
    expected = gate_fuse_reference(x, gate, incoming)
    worst = max(worst, float((tk.gate_fuse_triton(x, gate, incoming) - expected).norm() / expected.norm()))
    a = x.contiguous(memory_format=torch.channels_last)
    logits = logits.contiguous(memory_format=torch.channels_last)
    expected = (a + a * torch.sigmoid(logits)) + a
    out = tk.gald_distribute_triton(a, logits)
    assert out.is_contiguous(memory_format=torch.channels_last)
    worst = max(worst, float((out - expected).norm() / expected.norm()))
print("WORST", worst)
"""


def test_triton_kernels_equal_the_references_under_the_interpreter():
    import os
    import subprocess
    import sys
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", TRITON_CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    worst = float(proc.stdout.split("WORST")[-1])
    assert worst <= 1e-6, worst


def test_triton_kernels_are_only_chosen_for_cuda_tensors_of_one_dense_layout():
    from cityseg_zoo.ops import triton_kernels
    x = torch.randn(2, 3, 4, 5)
    assert not triton_kernels.available(x, x)                                        # CPU: PyTorch paths
    assert triton_kernels.same_dense_layout(x, torch.randn(2, 3, 4, 5))
    assert not triton_kernels.same_dense_layout(x, x.contiguous(memory_format=torch.channels_last))
    assert not triton_kernels.same_dense_layout(x[..., :4], x[..., :4].contiguous())          # a strided view


# ---------------------------------------------------------------- linear as a oneDNN 1x1 convolution

@pytest.mark.parametrize("shape", [(37, 24), (2, 5, 7, 24), (1, 0, 24)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_through_onednn_is_f_linear(shape, with_bias):
    from cityseg_zoo.ops import linear
    g = torch.Generator().manual_seed(0)
    x, weight, bias = torch.randn(shape, generator=g), torch.randn(11, 24, generator=g), torch.randn(11, generator=g)
    bias = bias if with_bias else None
    out = linear.linear(x, weight, bias)
    expected = linear.linear_reference(x, weight, bias)
    assert out.shape == expected.shape == (*shape[:-1], 11)
    if expected.numel():
        assert rel(out, expected) < 1e-6
    strided = torch.randn(24, 37, generator=g).t()                     # a transposed (non-contiguous) input
    assert rel(linear.linear(strided, weight, bias), linear.linear_reference(strided, weight, bias)) < 1e-6
    assert linear.takes_onednn(x) == torch.backends.mkldnn.is_available()
    low = linear.linear(x.bfloat16(), weight.bfloat16(), None)          # other dtypes: F.linear itself
    assert low.dtype == torch.bfloat16 and torch.equal(low, torch.nn.functional.linear(x.bfloat16(), weight.bfloat16()))
