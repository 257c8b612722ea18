"""One-pass graph rewrites (MergeDuplicateNodes, FoldConstantsOnce) that replace qonnx's node-per-call ones."""

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


def test_shape_arithmetic_folds_and_an_unknown_shape_is_not_a_scalar():
    """Reshape(x, Concat(Shape(t)[:1], [-1])) where t's shape is known only after a first fold."""
    from infoq_deploy.export.passes.fold_constants import FoldConstantsOnce

    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    inits = [i64("four", [4]), i64("zero", [0]), i64("one", [1]), i64("minus", [-1])]
    nodes = [helper.make_node("Shape", ["x"], ["sx"]),                  # known: folds in round one
             helper.make_node("Div", ["sx", "four"], ["rows"]),
             helper.make_node("Concat", ["rows", "four"], ["two_four"], axis=0),
             helper.make_node("Reshape", ["x", "two_four"], ["t"]),     # t's shape: unknown until round two
             helper.make_node("Relu", ["t"], ["u"]),
             helper.make_node("Shape", ["u"], ["su"]),
             helper.make_node("Slice", ["su", "zero", "one"], ["b"]),
             helper.make_node("Concat", ["b", "minus"], ["target"], axis=0),
             helper.make_node("Reshape", ["u", "target"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.arange(8, dtype=np.float32) - 3
    folded = ModelWrapper(model).transform(FoldConstantsOnce())
    ops = [n.op_type for n in folded.graph.node]
    assert ops == ["Reshape", "Relu", "Reshape"], ops  # Shape(u) folded from u's shape, not from "no shape"
    assert list(folded.get_initializer(folded.graph.node[2].input[1])) == [2, -1]
    assert np.array_equal(ort.session(folded.model)(x), np.maximum(x, 0).reshape(2, 4))
