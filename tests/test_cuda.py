"""CUDA-only checks: every Triton kernel against its reference, the SDPA attention paths, fp16/bf16 autocast parity.

Each test skips without a CUDA device (``benchmarks/gpu_check.sh`` runs them, with the other CUDA tests, on a GPU
machine). float32 comparisons run with TF32 off, so CUDA and CPU float32 agree to float rounding; bf16/fp16 are
compared with the float32 CPU result. Tolerances are relative errors (Frobenius norm): float32 1e-4 end to end
(1e-6 for a single element-wise kernel), fp16 5e-3, bf16 2e-2 (bf16 autocast on CPU gives 2e-3 .. 5.4e-3 on
these models at this size).
"""
import contextlib
import copy

import pytest
import torch

import cityseg_zoo
from cityseg_zoo.inference import predict
from cityseg_zoo.ops import attention, gated_fusion, triton_kernels
from cityseg_zoo.ops.gald import GALDBlock
from cityseg_zoo.ops.object_context import SelfAttentionBlock
from test_ops_fast import randomised

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

LOW_PRECISION = {torch.float16: 5e-3, torch.bfloat16: 2e-2}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float((a - b).norm() / b.norm())


@contextlib.contextmanager
def ieee_float32():
    """float32 convolutions and matmuls without TF32 (cuDNN convolutions use TF32 by default)."""
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


# ---------------------------------------------------------------- Triton kernels on the GPU

SHAPES = [(2, 3, 5, 7), (2, 64, 33, 65), (1, 256, 128, 256)]   # one partial block .. a 1/8 map of 1024x2048


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_triton_kernels_equal_their_references(dtype, channels_last):
    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(13)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    tolerance = 1e-6 if dtype == torch.float32 else LOW_PRECISION[dtype] / 5   # one rounding of the output
    for shape in SHAPES:
        x, incoming, logits = (torch.randn(shape, generator=g).to("cuda", dtype).contiguous(memory_format=fmt)
                               for _ in range(3))
        gate = torch.rand(shape, generator=g).to("cuda", dtype).contiguous(memory_format=fmt)
        assert triton_kernels.available(x, gate, incoming)
        expected = gated_fusion.gate_fuse_reference(x.double(), gate.double(), incoming.double())
        out = triton_kernels.gate_fuse_triton(x, gate, incoming)
        assert out.dtype == dtype and out.is_contiguous(memory_format=fmt)
        assert rel(out, expected) <= tolerance, ("gate_fuse", shape, rel(out, expected))
        a = x.double()
        expected = (a + a * torch.sigmoid(logits.double())) + a
        out = triton_kernels.gald_distribute_triton(x, logits)
        assert out.dtype == dtype and out.is_contiguous(memory_format=fmt)
        assert rel(out, expected) <= tolerance, ("gald_distribute", shape, rel(out, expected))


def test_cuda_ops_dispatch_to_the_triton_kernels(monkeypatch):
    pytest.importorskip("triton")
    calls = []
    for name in ("gate_fuse_triton", "gald_distribute_triton"):
        original = getattr(triton_kernels, name)
        monkeypatch.setattr(triton_kernels, name,
                            lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    x, gate, incoming = (torch.rand(2, 8, 9, 11, device="cuda") for _ in range(3))
    with torch.no_grad():
        expected = gated_fusion.gate_fuse_reference(x, gate, incoming)
        assert rel(gated_fusion.gate_fuse(x, gate, incoming.clone()), expected) <= 1e-6
        module = randomised(GALDBlock(16, 8, groups=4), seed=12)
        u = torch.randn(2, 16, 17, 21)
        reference = module(u)
        with ieee_float32():
            out = copy.deepcopy(module).cuda()(u.cuda())
    assert calls[0] == "gate_fuse_triton" and "gald_distribute_triton" in calls
    assert rel(out, reference) <= 1e-5


# ---------------------------------------------------------------- SDPA attention on the GPU

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_sdpa_position_attention_equals_the_explicit_reference(dtype, monkeypatch):
    sdpa_calls = []
    original = attention.position_attention_sdpa
    monkeypatch.setattr(attention, "position_attention_sdpa", lambda *a: sdpa_calls.append(1) or original(*a))
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, c, 37 * 53, generator=g).to(dtype) for c in (8, 8, 64))   # odd N, 8 heads of 8
    expected = attention.position_attention_explicit(q.double(), k.double(), v.double())   # same rounded inputs
    with ieee_float32():
        out = attention.position_attention(*(t.cuda() for t in (q, k, v)))
    assert sdpa_calls and out.dtype == dtype
    assert rel(out, expected) <= (1e-5 if dtype == torch.float32 else LOW_PRECISION[dtype])
    # OCNet's object context shares the dispatcher (key 32, value 64 channels: 2 heads)
    block = randomised(SelfAttentionBlock(48, 32, 64, scale=2), seed=4)
    x = torch.randn(2, 48, 30, 42)
    with torch.no_grad():
        reference = block(x)
        with ieee_float32():
            out = copy.deepcopy(block).cuda()(x.cuda())
    assert rel(out, reference) <= 1e-5


def test_cuda_position_attention_at_a_cityscapes_frame_never_builds_the_n_by_n_matrix():
    # DANet's PAM on the 1/8 map of a 1024x2048 frame: N = 32768, an explicit fp32 N x N matrix is 4 GiB
    module = attention.PositionAttention(512).cuda().eval()
    x = torch.randn(1, 512, 128, 256, device="cuda", dtype=torch.bfloat16)
    module = module.to(torch.bfloat16)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    with torch.no_grad():
        out = module(x)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert extra < 512 * 2 ** 20, f"{extra / 2 ** 20:.0f} MiB above the input"


# ---------------------------------------------------------------- every architecture: CUDA and autocast parity

PARITY_MODELS = sorted(cityseg_zoo.list_models("*_r50")) + ["gffnet_wrn38"]   # every head, both backbone families


@pytest.mark.parametrize("arch", PARITY_MODELS)
def test_cuda_float32_and_autocast_match_float32_on_cpu(arch):
    torch.manual_seed(0)
    model = cityseg_zoo.create_model(arch).eval()
    x = torch.randn(1, 3, 128, 160)   # above every minimum input size (GALD: 111)
    with torch.no_grad():
        reference = model(x)
        with ieee_float32():
            eager = copy.deepcopy(model).cuda()(x.cuda())
            optimized = copy.deepcopy(model).cuda().optimize_for_inference()(x.cuda())
        low = {dtype: copy.deepcopy(model).cuda().optimize_for_inference(dtype=dtype)(x.cuda())
               for dtype in LOW_PRECISION}
    assert rel(eager, reference) <= 1e-4, ("eager", rel(eager, reference))
    assert rel(optimized, reference) <= 1e-4, ("optimized", rel(optimized, reference))
    for dtype, out in low.items():
        assert out.dtype == torch.float32 and torch.isfinite(out).all(), dtype
        assert rel(out, reference) <= LOW_PRECISION[dtype], (dtype, rel(out, reference))


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
def test_cuda_sliding_window_prediction_under_autocast_with_tile_batch(amp):
    torch.manual_seed(0)
    model = cityseg_zoo.create_model("danet_r50").eval()
    x = torch.randn(1, 3, 97, 131)
    options = dict(mode="slide", crop_size=65, style="encoding", flip=True, scales=(0.75, 1.0))
    reference = predict(model, x, **options)
    model = model.cuda()
    tile_by_tile = predict(model, x, amp_dtype=amp, **options)
    batched = predict(model, x, amp_dtype=amp, tile_batch=4, **options)
    assert tile_by_tile.dtype == batched.dtype == torch.float32
    assert rel(tile_by_tile, reference) <= LOW_PRECISION[amp]
    assert rel(batched, tile_by_tile) <= LOW_PRECISION[amp]
