"""Graph rewrites of the export: the one-pass ones (MergeDuplicateNodes, FoldConstantsOnce) that replace qonnx's node-per-call ones, GemmAsMatMul, and the linear-time versions of qonnx's graph helpers (export/qonnx_linear.py)."""

import contextlib
import random

import numpy as np
import pytest
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


def test_a_gemm_of_a_quantized_constant_becomes_matmul_with_a_vector_scale():
    """Gemm(x, Quant(W), b), transB, per-row weight scale: one MatMul of the transposed constant
    (per-column scale as a vector, the form hls4ml takes) and an Add, the same numbers."""
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    from infoq_deploy.export.passes.gemm_as_matmul import GemmAsMatMul

    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 5)).astype(np.float32)
    scale = (np.abs(w).max(1, keepdims=True) / 7).astype(np.float32)  # (N, 1): one scale per output
    inits = [numpy_helper.from_array(v, n) for n, v in (
        ("w", w), ("s", scale), ("z", np.array(0.0, np.float32)), ("bits", np.array(4.0, np.float32)),
        ("b", rng.normal(size=3).astype(np.float32)))]
    nodes = [helper.make_node("Quant", ["w", "s", "z", "bits"], ["wq"], domain="qonnx.custom_op.general",
                              signed=1, narrow=0, rounding_mode="ROUND"),
             helper.make_node("Gemm", ["x", "wq", "b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    model = cleanup_model(ModelWrapper(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])))
    x = rng.normal(size=(2, 5)).astype(np.float32)
    run = lambda m: execute_onnx(m, {m.graph.input[0].name: x})[m.graph.output[0].name]  # noqa: E731
    before = run(model)
    rewritten, _ = GemmAsMatMul().apply(model)
    assert [n.op_type for n in rewritten.graph.node] == ["Quant", "MatMul", "Add"]  # the Transpose folded away
    quant = rewritten.graph.node[0]
    assert rewritten.get_initializer(quant.input[0]).shape == (5, 3)
    assert rewritten.get_initializer(quant.input[1]).shape == (3,)
    assert np.array_equal(run(rewritten), before)


@pytest.mark.parametrize("attrs, bias", [({}, False), ({"alpha": 0.5, "transB": 1}, True), ({"alpha": 2.0}, False),
                                         ({"beta": 0.25, "transA": 1}, True)])
def test_gemms_without_bias_or_with_a_scale_factor_keep_their_numbers(attrs, bias):
    """Every form of Gemm: without C (one MatMul), alpha or beta not 1, A transposed."""
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    from infoq_deploy.export.passes.gemm_as_matmul import GemmAsMatMul

    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 5) if attrs.get("transB") else (5, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(rng.normal(size=3).astype(np.float32), "b")]
                                                  if bias else [])
    nodes = [helper.make_node("Gemm", ["x", "w"] + (["b"] if bias else []), ["y"], **attrs)]
    shape = [5, 2] if attrs.get("transA") else [2, 5]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    model = cleanup_model(ModelWrapper(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])))
    x = rng.normal(size=shape).astype(np.float32)
    run = lambda m: execute_onnx(m, {m.graph.input[0].name: x})[m.graph.output[0].name]  # noqa: E731
    before = run(model)
    rewritten, _ = GemmAsMatMul().apply(model)
    assert "Gemm" not in [n.op_type for n in rewritten.graph.node]
    assert np.allclose(run(rewritten), before, rtol=1e-6, atol=1e-6)


def _shape_check_cases():
    """Graphs for the shape check: all described, an activation without a shape, an initializer
    without its ValueInfo, and a tensor described twice."""
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    h = helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 2])
    wv = helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 2])
    return {
        "described": helper.make_graph(nodes, "g", [x], [y], [w], value_info=[h, wv]),
        "activation without shape": helper.make_graph(nodes, "g", [x], [y], [w], value_info=[wv]),
        "initializer without ValueInfo": helper.make_graph(nodes, "g", [x], [y], [w], value_info=[h]),
        "described twice": helper.make_graph(nodes, "g", [x], [y], [w], value_info=[h, h, wv]),
    }


@pytest.mark.parametrize("case", list(_shape_check_cases()))
@pytest.mark.parametrize("fix", [False, True])
def test_the_linear_shape_check_answers_and_fixes_as_qonnx_does(case, fix):
    """export/qonnx_linear.py replaces qonnx's quadratic check: same result, same
    ValueInfo added for an initializer, same assertion on a tensor described twice; and qonnx's
    own method is back after the block."""
    from infoq_deploy.export.qonnx_linear import check_all_tensor_shapes_specified, linear_time

    original = ModelWrapper.check_all_tensor_shapes_specified
    results = []
    for check in (original, check_all_tensor_shapes_specified):
        model = ModelWrapper(helper.make_model(_shape_check_cases()[case]), fix_missing_initializer_valueinfo=False)
        try:
            answer = check(model, fix_missing_init_shape=fix)
        except AssertionError as exc:
            answer = f"AssertionError: {exc}"
        results.append((answer, model.model.SerializeToString()))
    assert results[0] == results[1]
    assert (case == "activation without shape") == (results[0][0] is False)
    with linear_time():
        assert ModelWrapper.check_all_tensor_shapes_specified is check_all_tensor_shapes_specified
        with linear_time():
            pass
        assert ModelWrapper.check_all_tensor_shapes_specified is check_all_tensor_shapes_specified
    assert ModelWrapper.check_all_tensor_shapes_specified is original


def _unsorted_graph_with_shared_weights():
    """Nodes out of order (a diamond, a node reading only an initializer, a floating Constant no
    one reads), one initializer read by three nodes."""
    w = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(2, 2), "w")
    nodes = [
        helper.make_node("Add", ["a", "b"], ["y"], name="join"),
        helper.make_node("MatMul", ["h", "w"], ["b"], name="right"),
        helper.make_node("Constant", [], ["floating"], name="floating",
                         value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("MatMul", ["h", "w"], ["a"], name="left"),
        helper.make_node("Relu", ["x"], ["h0"], name="first"),
        helper.make_node("Identity", ["w"], ["wcopy"], name="from_weight"),
        helper.make_node("Add", ["h0", "wcopy"], ["h"], name="stem"),
    ]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 2]) for n in ("h0", "h", "a", "b", "wcopy")]
    return helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])], [w], value_info=vi)


@pytest.mark.parametrize("which", ["SortGraph", "GiveUniqueParameterTensors"])
def test_linear_sort_and_unique_parameters_write_what_qonnx_writes(which):
    """Same node order (floating node dropped as qonnx drops it), same copies of a shared
    initializer under the same new names, byte for byte; and the graph still computes."""
    from qonnx.transformation import general

    from infoq_deploy.export.qonnx_linear import linear_time

    transformation = getattr(general, which)
    written = []
    for linear in (False, True):
        model = ModelWrapper(helper.make_model(_unsorted_graph_with_shared_weights()))
        random.seed(0)  # qonnx names new tensors with random.choice
        with linear_time() if linear else contextlib.nullcontext():
            model = model.transform(transformation(), cleanup=False)
        written.append(model.model.SerializeToString())
    assert written[0] == written[1]
    model = ModelWrapper(written[1])
    if which == "SortGraph":
        assert [n.name for n in model.graph.node][-1] == "join" and "floating" not in [n.name for n in model.graph.node]
        x = np.arange(4, dtype=np.float32).reshape(2, 2)
        h = np.maximum(x, 0) + np.arange(4, dtype=np.float32).reshape(2, 2)
        out = ort.session(model.model)(x)
        np.testing.assert_allclose(out, 2 * h @ np.arange(4, dtype=np.float32).reshape(2, 2))
    else:
        reads = [i for n in model.graph.node for i in n.input if model.get_initializer(i) is not None]
        assert len(reads) == len(set(reads)) == 3
