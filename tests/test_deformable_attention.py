"""Multi-scale deformable attention: every fast path gives the reference's (transformers') result.

Inputs are odd-sized on purpose: levels (13, 17), (7, 9), (4, 5), (1, 1), odd query counts, locations partly
outside [0, 1] and some exactly on the borders. float32 paths agree with the float32 reference to 1e-5 and bf16
runs with a float64 reference on the same bf16 inputs to 1e-2 (relative, Frobenius norm, as test_ops_fast.py).
"""
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from cityseg_zoo.ops import deformable_attention as da
from cityseg_zoo.ops import triton_deformable

LEVELS = [(13, 17), (7, 9), (4, 5), (1, 1)]
BORDERS = [0.0, 1.0, 0.5, 0.0, 1.0, 1.0, 0.0, 1.0 + 1e-7, -1e-7, 3.0, -2.0, 1e6, -1e6]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def inputs(shapes=LEVELS, batch=2, queries=11, heads=8, head_dim=32, points=4, seed=0, dtype=torch.float32):
    """value, sampling_locations (about 30% outside [0, 1], some exactly on a border or far away), weights."""
    g = torch.Generator().manual_seed(seed)
    tokens = sum(h * w for h, w in shapes)
    value = torch.randn(batch, tokens, heads, head_dim, generator=g)
    loc = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=g) * 1.4 - 0.2
    loc.view(-1)[:len(BORDERS)] = torch.tensor(BORDERS)
    loc[1, -1, 0, :, 0] = torch.tensor([1.0, 0.0])                  # (x, y) = (1, 0): a corner, on every level
    logits = torch.randn(batch, queries, heads, len(shapes) * points, generator=g)
    attn = logits.softmax(-1).unflatten(-1, (len(shapes), points))
    return [t.to(dtype) for t in (value, loc, attn)]


def transformers_reference():
    modeling = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
    return modeling.multi_scale_deformable_attention


# ---------------------------------------------------------------- the reference

def test_reference_is_transformers_mask2former_multi_scale_deformable_attention():
    value, loc, attn = inputs()
    expected = transformers_reference()(value, LEVELS, loc, attn)
    assert torch.equal(da.multi_scale_deformable_attention_reference(value, LEVELS, loc, attn), expected)


def test_reference_samples_pixel_centres_bilinearly_with_zero_padding():
    # One level 2 x 3, one head, one channel: value = 1 + token index. Pixel (i, j) has its centre at
    # ((j + 0.5) / 3, (i + 0.5) / 2).
    value = torch.arange(1.0, 7.0).view(1, 6, 1, 1)
    loc = torch.tensor([[0.5 / 3, 0.25], [1.0 / 3, 0.25], [1.0, 0.25], [1.5, 0.5]]).view(1, 4, 1, 1, 1, 2)
    attn = torch.ones(1, 4, 1, 1, 1)
    out = da.multi_scale_deformable_attention_reference(value, [(2, 3)], loc, attn).flatten()
    # pixel (0, 0); halfway between (0, 0) and (0, 1); half of pixel (0, 2) (the other half is padding); outside
    assert torch.allclose(out, torch.tensor([1.0, 1.5, 1.5, 0.0]), atol=1e-6)
    assert torch.allclose(da.multi_scale_deformable_attention(value, [(2, 3)], loc, attn).flatten(), out, atol=1e-6)


def test_spatial_shapes_may_be_an_int_tensor():
    value, loc, attn = inputs(queries=3)
    shapes = torch.tensor(LEVELS)
    expected = da.multi_scale_deformable_attention_reference(value, LEVELS, loc, attn)
    assert torch.equal(da.multi_scale_deformable_attention_reference(value, shapes, loc, attn), expected)
    assert rel(da.multi_scale_deformable_attention(value, shapes, loc, attn), expected) <= 1e-5


# ---------------------------------------------------------------- the CPU gather path (embedding_bag)

@pytest.mark.parametrize("heads, head_dim, points, queries", [(8, 32, 4, 11), (1, 7, 1, 37), (8, 13, 1, 5)])
def test_gather_path_equals_reference_on_odd_sizes(heads, head_dim, points, queries):
    value, loc, attn = inputs(heads=heads, head_dim=head_dim, points=points, queries=queries)
    expected = da.multi_scale_deformable_attention_reference(value, LEVELS, loc, attn)
    out = da.multi_scale_deformable_attention_gather(value, LEVELS, loc, attn)
    assert out.shape == (2, queries, heads * head_dim) and out.dtype == torch.float32
    assert rel(out, expected) <= 1e-5


def test_gather_path_in_chunks_of_queries_equals_one_chunk():
    value, loc, attn = inputs(queries=13, heads=2, head_dim=5)
    whole = da.multi_scale_deformable_attention_gather(value, LEVELS, loc, attn)
    rows_per_query = 2 * 2 * len(LEVELS) * 4 * 4                        # batch · heads · L · P · 4 corners
    chunked = da.multi_scale_deformable_attention_gather(value, LEVELS, loc, attn, chunk_rows=3 * rows_per_query)
    assert torch.equal(chunked, whole)


def test_gather_path_in_bf16_is_within_1e_2_of_float64():
    value, loc, attn = inputs(seed=1, dtype=torch.bfloat16)
    expected = da.multi_scale_deformable_attention_reference(value.double(), LEVELS, loc.double(), attn.double())
    out = da.multi_scale_deformable_attention_gather(value, LEVELS, loc, attn)
    assert out.dtype == torch.bfloat16
    assert rel(out, expected) <= 1e-2


def test_gather_path_in_float64_equals_reference_to_float64_precision():
    value, loc, attn = inputs(seed=2, queries=5, dtype=torch.float64)
    expected = da.multi_scale_deformable_attention_reference(value, LEVELS, loc, attn)
    assert rel(da.multi_scale_deformable_attention_gather(value, LEVELS, loc, attn), expected) <= 1e-12


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_gather_path_gradients_equal_the_reference_gradients(dtype, tolerance):
    value, loc, attn = inputs(seed=3, queries=5, heads=3, head_dim=7, points=2, dtype=dtype)
    loc = loc.clamp(-1.0, 2.0)         # far-away points have no gradient; keep the ones that do near the maps
    grad_out = torch.randn(2, 5, 3 * 7, generator=torch.Generator().manual_seed(4), dtype=dtype)
    grads = []
    for op in (da.multi_scale_deformable_attention_reference, da.multi_scale_deformable_attention_gather):
        leaves = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
        op(leaves[0], LEVELS, leaves[1], leaves[2]).backward(grad_out)
        grads.append([t.grad for t in leaves])
    for name, got, expected in zip(("value", "sampling_locations", "attention_weights"), grads[1], grads[0]):
        assert rel(got, expected) <= tolerance, name


def test_op_rejects_inputs_whose_shapes_do_not_fit():
    value, loc, attn = inputs(queries=3)
    with pytest.raises(ValueError, match="spatial_shapes"):
        da.multi_scale_deformable_attention(value, LEVELS[:3], loc, attn)
    with pytest.raises(ValueError, match="attention_weights"):
        da.multi_scale_deformable_attention(value, LEVELS, loc, attn[..., :1])
    with pytest.raises(ValueError, match="expected"):
        da.multi_scale_deformable_attention(value, LEVELS, loc[..., 0, :], attn)


# ---------------------------------------------------------------- dispatch

def test_op_on_cpu_takes_the_gather_path_with_and_without_gradients(monkeypatch):
    value, loc, attn = inputs(queries=7)
    expected = da.multi_scale_deformable_attention_reference(value, LEVELS, loc, attn)
    monkeypatch.setattr(da, "multi_scale_deformable_attention_reference", lambda *a: pytest.fail("reference"))
    assert rel(da.multi_scale_deformable_attention(value, LEVELS, loc, attn), expected) <= 1e-5
    value.requires_grad_(True)
    out = da.multi_scale_deformable_attention(value, LEVELS, loc, attn)   # the gather path has its own autograd
    out.sum().backward()
    assert value.grad is not None and value.grad.abs().sum() > 0


def test_triton_kernel_is_only_chosen_for_cuda_tensors():
    value, loc, attn = inputs(queries=3)
    assert not triton_deformable.available(value, loc, attn)


class PixelDecoderLayerOp(torch.nn.Module):
    """Every token of three levels of ``x`` queries all levels (an encoder layer's sampling, without linears)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        feats = [x, F.avg_pool2d(x, 2), F.avg_pool2d(x, 4)]
        value = torch.cat([f.flatten(2).transpose(1, 2) for f in feats], 1).unflatten(2, (2, c // 2))
        loc = torch.sigmoid(value[..., :24] * 3).unflatten(-1, (3, 4, 2)) * 1.2 - 0.1
        attn = torch.softmax(value[..., 24:36], -1).unflatten(-1, (3, 4))
        return da.multi_scale_deformable_attention(value, [f.shape[-2:] for f in feats], loc, attn)


def test_op_exports_to_onnx_through_the_reference_with_dynamic_sizes_and_queries(tmp_path):
    """Under export the op is the reference: ONNX GridSample (opset >= 16), with symbolic level sizes and Q.

    (The gather path does not belong in an export: torchlib lowers embedding_bag to an ONNX Loop with one
    iteration per bag, and its query chunking fixes Q.)
    """
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    dim = torch.export.Dim
    example = torch.randn(1, 80, 16, 24)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(PixelDecoderLayerOp(), (example,), dynamo=True, verbose=False,
                                    dynamic_shapes=({2: 4 * dim("h4", min=2, max=256),
                                                     3: 4 * dim("w4", min=2, max=256)},))
    path = tmp_path / "op.onnx"
    program.save(str(path))
    assert "GridSample" in {node.op_type for node in onnx.load(str(path)).graph.node}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 80, 16, 24), (1, 80, 36, 20)]:                  # S = Q = 504, then 945
        x = torch.randn(shape, generator=torch.Generator().manual_seed(5))
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        with torch.no_grad():
            expected = PixelDecoderLayerOp()(x)
        assert got.shape == expected.shape
        assert float((got - expected).abs().max() / expected.abs().max()) <= 1e-4


# ---------------------------------------------------------------- the Triton kernel, by Triton's CPU interpreter

TRITON_CHECK = """
import torch
from cityseg_zoo.ops import deformable_attention as da, triton_deformable as td
from test_deformable_attention import LEVELS, inputs, rel
worst = 0.0
for heads, head_dim, points, queries in [(8, 32, 4, 5), (1, 7, 1, 37)]:    # one partial and two query blocks
    value, loc, attn = inputs(heads=heads, head_dim=head_dim, points=points, queries=queries)
    expected = da.multi_scale_deformable_attention_reference(value, LEVELS, loc, attn)
    worst = max(worst, rel(td.deformable_attention_triton(value, LEVELS, loc, attn), expected))
value, loc, attn = inputs(heads=2, head_dim=16, points=2, queries=9, seed=6, dtype=torch.bfloat16)
expected = da.multi_scale_deformable_attention_reference(value.double(), LEVELS, loc.double(), attn.double())
out = td.deformable_attention_triton(value, LEVELS, loc, attn)
assert out.dtype == torch.bfloat16
print("WORST", worst, "BF16", rel(out, expected))
leaves = [t.requires_grad_(True) for t in inputs(heads=2, head_dim=3, points=2, queries=4, seed=7)]
td.deformable_attention_triton(leaves[0], LEVELS, leaves[1], leaves[2]).square().sum().backward()
assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in leaves)
"""


def test_triton_kernel_equals_the_reference_under_the_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", TRITON_CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fp32, bf16 = (float(part.split()[0]) for part in proc.stdout.split("WORST")[-1].split("BF16"))
    assert fp32 <= 1e-5, fp32
    assert bf16 <= 1e-2, bf16


# ---------------------------------------------------------------- on CUDA, when there is one

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("heads, head_dim, points, queries", [(8, 32, 4, 1001), (1, 7, 1, 37)])
def test_op_on_cuda_equals_reference_in_fp32_and_bf16(heads, head_dim, points, queries):
    pytest.importorskip("triton")
    value, loc, attn = (t.cuda() for t in inputs(heads=heads, head_dim=head_dim, points=points, queries=queries))
    assert triton_deformable.available(value, loc, attn)
    expected = da.multi_scale_deformable_attention_reference(value, LEVELS, loc, attn)
    assert rel(da.multi_scale_deformable_attention(value, LEVELS, loc, attn), expected) <= 1e-5
    value, loc, attn = (t.bfloat16() for t in (value, loc, attn))
    expected = da.multi_scale_deformable_attention_reference(value.double(), LEVELS, loc.double(), attn.double())
    out = da.multi_scale_deformable_attention(value, LEVELS, loc, attn)
    assert out.dtype == torch.bfloat16 and rel(out, expected) <= 1e-2


@cuda
def test_op_on_cuda_gradients_equal_the_reference_gradients():
    pytest.importorskip("triton")
    value, loc, attn = (t.cuda() for t in inputs(seed=8, queries=9, heads=3, head_dim=7, points=2))
    grad_out = torch.randn(2, 9, 21, device="cuda", generator=torch.Generator("cuda").manual_seed(9))
    grads = []
    for op in (da.multi_scale_deformable_attention_reference, da.multi_scale_deformable_attention):
        leaves = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
        op(leaves[0], LEVELS, leaves[1], leaves[2]).backward(grad_out)
        grads.append([t.grad for t in leaves])
    for got, expected in zip(grads[1], grads[0]):
        assert rel(got, expected) <= 1e-5
