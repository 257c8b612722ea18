"""MergeDuplicateNodes: one pass merges duplicates, those that only coincide after an earlier merge too."""

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from qonnx.core.modelwrapper import ModelWrapper

from infoq_deploy.backends import ort
from infoq_deploy.export.passes.merge_duplicates import MergeDuplicateNodes


def test_duplicates_merge_in_one_pass_cascades_included():
    # two copies of Mul(x, 2) -> Relu (their scale initializers have different names, the same value),
    # joined by an Add; a third Mul by another value must stay
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), n) for n in ("two_a", "two_b")]
    inits.append(numpy_helper.from_array(np.array(3.0, np.float32), "three"))
    nodes = [helper.make_node("Mul", ["x", "two_a"], ["m1"]), helper.make_node("Relu", ["m1"], ["r1"]),
             helper.make_node("Mul", ["x", "two_b"], ["m2"]), helper.make_node("Relu", ["m2"], ["r2"]),
             helper.make_node("Mul", ["x", "three"], ["m3"]),
             helper.make_node("Add", ["r1", "r2"], ["s"]), helper.make_node("Add", ["s", "m3"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.array([-1, 0, 1, 2], np.float32)
    before = ort.session(model)(x)
    merged, again = MergeDuplicateNodes().apply(ModelWrapper(model))
    assert not again
    ops = [n.op_type for n in merged.graph.node]
    assert ops == ["Mul", "Relu", "Mul", "Add", "Add"]
    assert list(merged.graph.node[3].input) == ["r1", "r1"]
    assert np.array_equal(ort.session(merged.model)(x), before)
