"""ONNX import: round trips through torch.onnx.export match onnxruntime; odd graphs still count their layers."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from infoq_deploy.core.errors import UserError
from infoq_deploy.importing.from_onnx import import_onnx
from infoq_deploy.importing.sources import load_model

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TOL = 1e-4


def _export(model, path: Path) -> None:
    c, h, w = model.preprocess.input_shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
        torch.onnx.export(
            model.graph, (torch.zeros(1, c, h, w),), str(path), opset_version=17, dynamo=False,
            input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        )


def _ort(path: Path, x: torch.Tensor) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]


def _round_trip(spec: str, tmp_path: Path, **kw) -> None:
    original = load_model(spec, **kw)
    path = tmp_path / "model.onnx"
    _export(original, path)
    imported = load_model(str(path))
    x = torch.randn(3, *original.preprocess.input_shape, generator=torch.Generator().manual_seed(0))
    ref = _ort(path, x)
    with torch.no_grad():
        got = imported.graph(x).numpy()
        own = original.graph(x).numpy()
    assert np.abs(ref).max() > 0.1  # outputs that say something, not near-zero noise
    assert np.abs(got - ref).max() < TOL
    assert np.abs(own - ref).max() < TOL
    # BatchNorm folds into the convolutions on export; layers, shapes and MACs stay
    assert len(imported.layers) == len(original.layers)
    assert [l.kind for l in imported.layers] == [l.kind for l in original.layers]
    assert [l.macs for l in imported.layers] == [l.macs for l in original.layers]
    assert imported.preprocess.input_shape == original.preprocess.input_shape


@pytest.mark.realdata
def test_cifar_resnet20_round_trip(tmp_path):
    # ResNet-56 is the same construction, deeper: one of the two is enough here
    if not (DATA / "cifar10-resnet").is_dir():
        pytest.fail(f"real data missing: {DATA / 'cifar10-resnet'} not found; the zoo ResNets need it")
    _round_trip("zoo:cifar10-resnet20", tmp_path, data_root=DATA)


@pytest.mark.parametrize("spec", ["zoo:efficientnet-lite0", "zoo:fashion-cnn"])
def test_round_trip(spec, tmp_path):
    _round_trip(spec, tmp_path)


def test_torchvision_round_trip(tmp_path):
    # a smaller input keeps it quick; the graph is the same
    _round_trip("torchvision:resnet18", tmp_path, input_shape=(3, 64, 64))


# ------------------------------------------------------------ hand-made graphs


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _rand(*shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_gemm_with_constant_weights_becomes_linear(tmp_path):
    # B from a Constant node with transB=0 and a (1, N) bias: onnx2torch alone leaves an OnnxGemm
    nodes = [
        helper.make_node("Constant", [], ["B"], value=numpy_helper.from_array(_rand(8, 5, seed=1), "B")),
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Gemm", ["f", "B", "C"], ["y"], alpha=0.5, beta=2.0),
    ]
    graph = helper.make_graph(
        nodes, "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
        initializer=[numpy_helper.from_array(_rand(1, 5, seed=2), "C")],
    )
    path = _save(graph, tmp_path / "gemm.onnx")
    model = load_model(str(path))
    assert [(l.kind, l.weight_params, l.bias_params, l.macs) for l in model.layers] == [("linear", 40, 5, 40)]
    x = torch.randn(4, 2, 2, 2)
    assert np.abs(model.graph(x).detach().numpy() - _ort(path, x)).max() < TOL


def test_asymmetric_conv_padding_and_identity_weights(tmp_path):
    # TF-style SAME padding (one extra pixel at the end) and a weight reaching Conv through an Identity
    nodes = [
        helper.make_node("Identity", ["W0"], ["W"]),
        helper.make_node("Conv", ["x", "W", "b"], ["c"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 4, 4])],
        initializer=[numpy_helper.from_array(_rand(4, 3, 3, 3, seed=3), "W0"),
                     numpy_helper.from_array(_rand(4, seed=4), "b")],
    )
    path = _save(graph, tmp_path / "conv.onnx")
    model = load_model(str(path))
    assert len(model.layers) == 1
    layer = model.layers[0]
    assert layer.kind == "conv" and layer.in_shape == (3, 9, 9) and layer.out_shape == (4, 4, 4)
    assert layer.macs == 4 * 4 * 4 * 3 * 3 * 3
    x = torch.randn(2, 3, 8, 8)
    assert np.abs(model.graph(x).detach().numpy() - _ort(path, x)).max() < TOL


def _conv_graph(dims) -> onnx.GraphProto:
    return helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[1, 1])],
        "sym",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[0], 2, dims[2], dims[3]])],
        initializer=[numpy_helper.from_array(_rand(2, 3, 1, 1), "W")],
    )


def test_input_shape_from_graph_and_symbolic_sizes(tmp_path):
    fixed = _save(_conv_graph([1, 3, 6, 5]), tmp_path / "fixed.onnx")
    _, shape = import_onnx(fixed)
    assert shape == (3, 6, 5)
    with pytest.raises(UserError, match="not"):
        import_onnx(fixed, (3, 7, 7))

    symbolic = _save(_conv_graph(["n", 3, "h", "w"]), tmp_path / "sym.onnx")
    with pytest.raises(UserError, match="--input-shape"):
        load_model(str(symbolic))
    model = load_model(str(symbolic), input_shape=(3, 10, 12))
    assert model.layers[0].out_shape == (2, 10, 12)


def test_corrupt_onnx(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(UserError) as e:
        load_model(str(path))
    assert "not a valid ONNX model" in str(e.value) and "\n" not in str(e.value)


def test_onnx_refuses_weights(tmp_path):
    path = _save(_conv_graph([1, 3, 4, 4]), tmp_path / "m.onnx")
    with pytest.raises(UserError, match="--weights"):
        load_model(str(path), weights="w.pt")
