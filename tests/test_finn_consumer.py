"""The fpga-int export as FINN reads it: finn-plus's QONNX front end, streamlining and
hardware layers (backends/finn_exec.py), and FINN's execution of the result."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from brevitas.export import export_qonnx

from infoq_deploy.backends import finn_exec
from infoq_deploy.verify.check import verify_export
from infoq_deploy.verify.consumer import REFUSED, check_consumer

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
    assert result.status != REFUSED and result.n_inputs == 4, result.line()
    assert result.agreement_all is not None and result.build_seconds > 0


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


@needs_finn
def test_finn_differs_from_the_file_only_at_rounding_ties(tmp_path):
    """FINN's first activation quantizer after the input agrees with qonnx except where the
    value lies exactly half-way between two levels (FINN rounds up, the Quant node to even):
    the disagreement finn_exec.py documents, and nothing else."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model
    import finn.core.onnx_exec as finn_onnx_exec

    _, _, x, path = _resnet8(tmp_path)
    reference = cleanup_model(ModelWrapper(str(path)))
    converted = finn_exec._qonnx_to_finn(ModelWrapper(str(path)))
    inits = {i.name for i in reference.graph.initializer}
    acts = [n for n in reference.graph.node if n.op_type == "Quant" and n.input[0] not in inits]
    second = acts[1]  # the first one reads the float image: no grid, no ties
    tested = 0
    for sample in x[:2].numpy():
        sample = sample[None]  # FINN's hardware graph is built for batch 1
        ref = execute_onnx(reference, {reference.graph.input[0].name: sample}, return_full_exec_context=True)
        got = finn_onnx_exec.execute_onnx(converted, {converted.graph.input[0].name: sample},
                                          return_full_exec_context=True)
        assert second.output[0] in got, "FINN keeps the tensor's name"
        before = ref[second.input[0]] / reference.get_initializer(second.input[1])
        differ = ref[second.output[0]] != got[second.output[0]]
        assert np.all(np.abs(np.abs(before[differ]) % 1 - 0.5) < 1e-6)
        tested += before.size
    assert tested > 0

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
