"""The fpga-int export as FINN reads it: finn-plus's QONNX front end, streamlining and
hardware layers (backends/finn_exec.py), and FINN's execution of the result."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from brevitas.export import export_qonnx

from infoq_deploy.backends import finn_exec
from infoq_deploy.verify.check import verify_export
from infoq_deploy.verify.consumer import PASSED, REFUSED, check_consumer

from test_fpga_consumers import _resnet8, private_cache  # noqa: F401  (the fixture, too)

needs_finn = pytest.mark.skipif(finn_exec.unavailable() is not None, reason=str(finn_exec.unavailable()))


def test_every_relu_and_pool_reads_an_integer_tensor(tmp_path):
    """What FINN needs of the file (export/passes/quant_before_maxpool.py, quant_on_grid.py): a
    Quant right after every ReLU, and no max pool in front of a quantizer; the file still
    reproduces the Brevitas model."""
    qmodel, allocation, x, path = _resnet8(tmp_path)
    graph = onnx.load(str(path)).graph
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for node in graph.node:
        if node.op_type == "Relu":
            assert [r.op_type for r in readers[node.output[0]]] == ["Quant"], node.name
        if node.op_type == "MaxPool":
            assert all(r.op_type != "Quant" for r in readers.get(node.output[0], [])), node.name
    assert verify_export(path, "qonnx", qmodel, x[:32], allocation=allocation).ok


@pytest.mark.slow
@needs_finn
def test_resnet_block_becomes_finn_hardware_layers(tmp_path):
    """Option-A shortcuts, residual adds, the average pool: FINN converts every node of the file
    to a hardware layer (a node left over is a refusal, finn_exec.session) and executes it."""
    _, _, x, path = _resnet8(tmp_path)
    result = check_consumer(path, "finn", x[:4].numpy())
    assert result.status == PASSED and result.n_inputs == 4, result.line()
    # every value is fixed point and FINN's thresholds round ties as the file does: bit for bit
    assert result.exact_fraction == 1.0 and result.build_seconds > 0, result.line()


def test_a_node_outside_finns_hardware_layers_is_named():
    from onnx import TensorProto, helper
    from qonnx.core.modelwrapper import ModelWrapper

    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="layout", perm=[0, 2, 3, 1]),
             helper.make_node("Softmax", ["t"], ["s"], name="head_softmax"),
             helper.make_node("Transpose", ["s"], ["y"], name="back", perm=[0, 3, 1, 2])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])])
    wrapped = ModelWrapper(helper.make_model(graph))
    # the layout Transposes at the graph's ends stay on the host, as FINN's build intends
    assert finn_exec.not_hardware(wrapped) == ["head_softmax (Softmax reading a float tensor)"]


def _ties_graph(integer_input: bool):
    """Relu then an unsigned 4-bit Quant (ROUND: half to even) on values half-way between levels;
    with ``integer_input`` the values arrive as 8-bit integers (an input Quant, scale 1) and
    the 4-bit Quant has scale 2, so FINN's thresholds meet them in the integer domain."""
    from onnx import TensorProto, helper

    qdomain = "qonnx.custom_op.general"
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [], [v])
             for n, v in (("one", 1.0), ("two", 2.0), ("zero", 0.0), ("four", 4.0), ("eight", 8.0))]
    nodes = [helper.make_node("Relu", ["q"], ["r"]),
             helper.make_node("Quant", ["r", "two" if integer_input else "one", "zero", "four"], ["y"],
                              domain=qdomain, signed=0, narrow=0, rounding_mode="ROUND")]
    if integer_input:
        nodes.insert(0, helper.make_node("Quant", ["x", "one", "zero", "eight"], ["q"], domain=qdomain,
                                         signed=1, narrow=0, rounding_mode="ROUND"))
    else:
        nodes[0].input[0] = "x"
    graph = helper.make_graph(nodes, "ties", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@needs_finn
@pytest.mark.parametrize("integer_input", [False, True], ids=["float input", "integer accumulator"])
def test_finn_rounds_ties_to_even_as_the_file_says(integer_input):
    """FINN alone rounds these ties up ([1 2 3 4 5 6 7 8], docs/upstream/repro_finn.py); through
    finn_exec (FINN's flow with its threshold rounding sending ties to even,
    backends/finn_rounding.py) FINN's hardware layers give what qonnx gives."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    model = _ties_graph(integer_input)
    ties = np.arange(0.5, 8.5, 1.0, dtype=np.float32)[None] * (2 if integer_input else 1)
    reference = cleanup_model(ModelWrapper(model))
    want = execute_onnx(reference, {reference.graph.input[0].name: ties})[reference.graph.output[0].name]
    want = want / (2 if integer_input else 1)
    assert want.tolist() == [[0, 2, 2, 4, 4, 6, 6, 8]]
    run = finn_exec.session(model)
    assert run(ties).tolist() == (want * (2 if integer_input else 1)).tolist()


@needs_finn
def test_a_file_finn_cannot_take_is_refused_in_one_sentence(tmp_path):
    """Brevitas's own export, without our rewrites: the bias Quant's 0-d zero point stops FINN's
    ExtractBiasFromConv (docs/upstream/); the check says so on one line."""
    qmodel, _, x, _ = _resnet8(tmp_path)
    raw = tmp_path / "raw.onnx"
    export_qonnx(qmodel, x[:1], export_path=str(raw), dynamo=False, opset_version=13)
    result = check_consumer(raw, "finn", x[:2].numpy())
    assert result.status == REFUSED and not result.ok
    assert result.reason and "\n" not in result.reason, result.reason
