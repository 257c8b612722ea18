"""Before any long work (verify/preflight.py): a model the target's format cannot express, or
the flow the run verifies with cannot take, is refused in one sentence naming the layer, the
operator and the back end; nothing is profiled and no run directory is left."""

from __future__ import annotations

from pathlib import Path

import pytest

from infoq_deploy.backends import hls4ml_csim
from infoq_deploy.cli import main

FIXTURE = str(Path(__file__).parent / "fixtures" / "stem_pool_cnn.py")
needs_hls4ml = pytest.mark.skipif(hls4ml_csim.unavailable() is not None, reason=str(hls4ml_csim.unavailable()))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INFOQ_DEPLOY_CACHE", str(tmp_path / "cache"))


def _run(tmp_path, data, spec, *extra):
    return main([f"{FIXTURE}:{spec}", "--input-shape", "1,8,8", "--data", data, "--target", "fpga-int",
                 "--budget", "6bit", "--method", "mse", "-o", str(tmp_path / "run"), *extra])


@needs_hls4ml
def test_a_pool_hls4ml_cannot_take_is_refused_before_profiling(tmp_path, quadrant_data, capsys, monkeypatch):
    from infoq_deploy import stages

    profiled = []
    monkeypatch.setattr(stages, "profile", lambda *a, **k: profiled.append(1))
    assert _run(tmp_path, quadrant_data, "build") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "hls4ml" in err and "layer conv1's MaxPool" in err and "window equal to its stride" in err, err
    assert "--backend finn" in err
    assert not profiled and not (tmp_path / "run").exists()


def test_another_flow_can_be_chosen(tmp_path, quadrant_data, capsys):
    """FINN takes the padded 3x3 pool at stride 2 (SWG + Pool); qonnx's executor alone checks nothing more."""
    assert _run(tmp_path, quadrant_data, "build", "--backend", "qonnx") == 0, capsys.readouterr().err


def test_an_operator_no_format_expresses_is_refused_before_profiling(tmp_path, quadrant_data, capsys):
    assert _run(tmp_path, quadrant_data, "spectral") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "cannot be exported as qonnx for target fpga-int" in err and "fft_rfft" in err, err
    assert not (tmp_path / "run").exists()


@needs_hls4ml
def test_hls4ml_lists_what_it_cannot_take():
    from onnx import TensorProto, helper

    nodes = [helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Erf", ["p"], ["y"], name="erf")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])])
    found = hls4ml_csim.unsupported(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    ops = {op: why for _, op, why in found}
    assert set(ops) == {"MaxPool", "Erf"} and "stride" in ops["MaxPool"] and "no handler" in ops["Erf"]


@needs_hls4ml
def test_hls4ml_grouped_convolutions_are_listed_depthwise_ones_are_not():
    """hls4ml reads any group but 1 as depthwise and stops on a grouped conv ("Depth multiplier
    must be an integer", after the whole pipeline on RegNet); the list names it before."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.zeros(shape, np.float32), name)
             for name, shape in (("w_grouped", (8, 4, 3, 3)), ("w_depthwise", (8, 1, 3, 3)))]
    nodes = [helper.make_node("Conv", ["x", "w_grouped"], ["g"], name="grouped", group=2, pads=[1] * 4),
             helper.make_node("Conv", ["g", "w_depthwise"], ["y"], name="depthwise", group=8, pads=[1] * 4)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])], inits)
    found = hls4ml_csim.unsupported(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert [(node, op) for node, op, _ in found] == [("grouped", "Conv")]
    assert "2 groups of 4 input channels" in found[0][2]


@needs_hls4ml
def test_hls4ml_broadcasting_merges_are_listed_same_size_ones_are_not():
    """hls4ml's io_stream merge asserts on two inputs of different sizes when it writes the
    project ("broadcasting merge not supported non-io_parallel": EfficientNet-B0's
    squeeze-and-excitation gate, after the whole pipeline); the list names it before. A merge
    of equal sizes (SiLU's x * sigmoid(x), a residual add) and one with a constant are not listed."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Sigmoid", ["x"], ["s"], name="sigmoid"),
             helper.make_node("Mul", ["x", "s"], ["silu"], name="silu"),
             helper.make_node("GlobalAveragePool", ["silu"], ["g"], name="squeeze"),
             helper.make_node("Mul", ["silu", "g"], ["gated"], name="gate"),
             helper.make_node("Add", ["gated", "x"], ["r"], name="residual"),
             helper.make_node("Mul", ["r", "c"], ["y"], name="scale")]
    shapes = {"s": [1, 4, 6, 6], "silu": [1, 4, 6, 6], "g": [1, 4, 1, 1], "gated": [1, 4, 6, 6], "r": [1, 4, 6, 6]}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        [numpy_helper.from_array(np.ones((1, 4, 1, 1), np.float32), "c")],
        value_info=[helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in shapes.items()])
    found = hls4ml_csim.unsupported(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert [(node, op) for node, op, _ in found] == [("gate", "Mul")]
    assert "1x4x6x6 and a 1x4x1x1" in found[0][2]
