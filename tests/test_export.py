"""ONNX export parity under onnxruntime, the dynamic-size contract, and graph breaks under torch.compile."""

import pytest
import torch

import cityseg_zoo
from cityseg_zoo.export import ExportError, graph_breaks, to_onnx

try:
    import onnx  # noqa: F401
    import onnxruntime as ort
    import onnxscript  # noqa: F401   (torch.onnx.export(dynamo=True) needs it)
    HAVE_ONNX = True
except ImportError:
    HAVE_ONNX = False
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="needs the 'export' extra: onnx, onnxscript, onnxruntime")

EXPORTED = ["fcn_r50", "pspnet_r50", "deeplabv3plus_r50", "danet_r50", "ccnet_r50", "galdnet_r50", "dgcnet_r50",
            "gffnet_r50"]
SIZE = 128   # GALD needs >= 111 px; every other model accepts it too


def build(name):
    torch.manual_seed(0)
    return cityseg_zoo.create_model(name).eval()


def onnxruntime_logits(path, x):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@needs_onnx
@pytest.mark.parametrize("name", EXPORTED)
def test_onnxruntime_logits_match_pytorch(name, tmp_path):
    model = build(name)
    result = to_onnx(model, tmp_path / f"{name}.onnx", height=SIZE, width=SIZE, dynamic_hw=False, check=False)
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    got = onnxruntime_logits(result.path, x)
    assert got.shape == expected.shape == (1, 19, SIZE, SIZE)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.onnx"]   # weights inside the one file


@needs_onnx
def test_dynamic_export_accepts_other_sizes(tmp_path):
    model = build("fcn_r50")
    result = to_onnx(model, tmp_path / "fcn.onnx", height=SIZE, width=SIZE, dynamic_hw=True, check=False)
    x = torch.randn(1, 3, SIZE + 16, SIZE + 40)   # not the probe size to_onnx checks itself
    with torch.no_grad():
        expected = model(x)
    assert result.dynamic_hw
    got = onnxruntime_logits(result.path, x)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-4


@needs_onnx
def test_a_size_that_cannot_be_dynamic_is_explained(tmp_path):
    # At 128 px GALD's global-aggregation branch pools its 1/8 map down to 1x1 and the traced code depends on that.
    with pytest.raises(ExportError, match="cannot be exported with dynamic height/width: the traced code fixes"):
        to_onnx(build("galdnet_r50"), tmp_path / "gald.onnx", height=SIZE, width=SIZE, dynamic_hw=True)
    assert not (tmp_path / "gald.onnx").exists()


@needs_onnx
def test_export_falls_back_to_a_fixed_size_with_a_warning_saying_why(tmp_path):
    with pytest.warns(UserWarning, match="Exporting at the fixed size 128x128"):
        result = to_onnx(build("galdnet_r50"), tmp_path / "gald.onnx", height=SIZE, width=SIZE)
    assert not result.dynamic_hw and "dynamic height/width" in result.static_reason
    assert result.max_rel_error <= 1e-4 and result.checked_shapes == [(1, 3, SIZE, SIZE)]   # its own parity check


@needs_onnx
def test_export_refuses_inputs_below_the_model_minimum(tmp_path):
    with pytest.raises(ExportError, match="at least 111 px"):
        to_onnx(build("galdnet_r50"), tmp_path / "gald.onnx", height=96, width=96, dynamic_hw=False)


@pytest.mark.parametrize("name", ["danet_r50", "ccnet_r50"])
def test_torch_compile_sees_no_graph_breaks(name):
    assert graph_breaks(build(name), torch.randn(1, 3, SIZE, SIZE)) == []


def test_graph_break_counter_sees_a_break():
    class Breaks(torch.nn.Module):
        def forward(self, x):
            x = x + 1
            torch._dynamo.graph_break()
            return x * 2

    assert len(graph_breaks(Breaks(), torch.randn(2))) == 1
