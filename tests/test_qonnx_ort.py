"""QONNX run whole in ONNX Runtime (backends/qonnx_ort.py) against qonnx's own executor, and
verify's sample check between the two."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_brevitas_model import MIXED, inputs
from test_export_verify import exported, tiny  # noqa: F401 (module fixtures)

from infoq_deploy.backends import qonnx_exec, qonnx_ort
from infoq_deploy.core.errors import UserError
from infoq_deploy.verify import check


def _quant(name, x, scale, zero, bits, out, *, signed=1, narrow=0, rounding="ROUND"):
    inits = [numpy_helper.from_array(np.asarray(scale, np.float32), f"{name}_s"),
             numpy_helper.from_array(np.asarray(zero, np.float32), f"{name}_z"),
             numpy_helper.from_array(np.asarray(bits, np.float32), f"{name}_b")]
    node = helper.make_node("Quant", [x, f"{name}_s", f"{name}_z", f"{name}_b"], [out], name=name,
                            domain="qonnx.custom_op.general", signed=signed, narrow=narrow, rounding_mode=rounding)
    return node, inits


def _graph(rounding="ROUND") -> onnx.ModelProto:
    """Signed input quantizer with a zero point, per-channel narrow 3-bit weights, conv, ReLU,
    unsigned 4-bit output quantizer: the kinds of Quant our exports write, and ties on purpose."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    for args, kw in (
        (("qx", "x", 0.25, 1.0, 5, "xq"), {"rounding": rounding}),
        (("qw", "w", rng.uniform(0.05, 0.2, (4, 1, 1, 1)), 0.0, 3, "wq"), {"narrow": 1}),
        (("qy", "r", 0.5, 0.0, 4, "y"), {"signed": 0}),
    ):
        n, i = _quant(*args, **kw)
        nodes.append(n)
        inits += i
    inits.append(numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"))
    nodes += [helper.make_node("Conv", ["xq", "wq"], ["c"], name="conv", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["r"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                   helper.make_opsetid("qonnx.custom_op.general", 1)])


def test_ort_run_is_identical_to_qonnx_executor_ties_and_clipping_included():
    rng = np.random.default_rng(1)
    # every value on the quarter grid of the input scale: a third are exact ties of its rounding
    x = (rng.integers(-60, 60, (2, 3, 6, 6)) * 0.125).astype(np.float32)
    x[0, 0, 0, :4] = [0.125, 0.375, -0.125, -0.375]  # ties around zero, after the zero point of 1
    model = _graph()
    want = qonnx_exec.session(model)(x)
    got = qonnx_ort.session(model)(x)
    assert np.array_equal(got, want)
    assert len(np.unique(got)) > 4  # not a degenerate all-zero or all-clipped output
    # the rewrite is what makes it agree: no Quant left, and the caller's model untouched
    assert [n.op_type for n in model.graph.node].count("Quant") == 3


def test_other_rounding_modes_are_refused_in_one_sentence():
    with pytest.raises(UserError, match="Quant node qx rounds by FLOOR"):
        qonnx_ort.session(_graph("FLOOR"))


def test_verify_runs_every_input_fast_and_checks_a_sample_with_qonnx(tiny, exported):  # noqa: F811
    _, _, qmodel = tiny
    result = check.verify_export(exported["qonnx"], "qonnx", qmodel, inputs(40, 31), allocation=MIXED)
    assert result.runner == "qonnx-ort"
    rc = result.reference_check
    assert rc["backend"] == "qonnx" and rc["n_inputs"] == check.REFERENCE_SAMPLE
    # the same ops; only the kernels' float summation order may differ (qonnx runs each node in a
    # session of its own, with ORT's default optimizations)
    assert rc["ok"] and rc["max_abs_diff"] < 1e-6 and result.ok


def test_verify_fails_when_the_fast_runner_departs_from_qonnx(tiny, exported, monkeypatch):  # noqa: F811
    _, _, qmodel = tiny
    real = qonnx_ort.session

    def shifted(model):
        run = real(model)
        return lambda x: run(x) + 1.0

    monkeypatch.setattr(qonnx_ort, "session", shifted)
    result = check.verify_export(exported["qonnx"], "qonnx", qmodel, inputs(40, 31), allocation=MIXED)
    assert not result.reference_check["ok"] and not result.ok
    assert any("qonnx-ort and qonnx run the file differently" in m for m in result.mismatches)
