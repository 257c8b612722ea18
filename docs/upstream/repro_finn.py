"""Minimal reproducer: FINN's ConvertQONNXtoFINN ignores a Quant node's rounding_mode.

A ReLU followed by an unsigned 4-bit Quant (scale 1, ROUND, i.e. half to even), on inputs
exactly half-way between two levels. qonnx's executor rounds them to even; the MultiThreshold
node FINN builds from the Quant counts thresholds at k + 0.5 with ``>=``, i.e. rounds half up.

    python docs/upstream/repro_finn.py

Needs qonnx 1.0.0 and finn-plus 1.6.1 (installed with --no-deps); nothing from infoq-deploy.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.util.cleanup import cleanup_model


def main() -> None:
    from finn.core.onnx_exec import execute_onnx as finn_execute
    from finn.transformation.qonnx.convert_qonnx_to_finn import ConvertQONNXtoFINN

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("s", 1.0), ("z", 0.0), ("b", 4.0))]
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Quant", ["r", "s", "z", "b"], ["y"], domain="qonnx.custom_op.general",
                              signed=0, narrow=0, rounding_mode="ROUND")]
    model = helper.make_model(helper.make_graph(nodes, "ties", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    wrapped = cleanup_model(ModelWrapper(model))
    ties = np.array([[0.5, 1.5, 2.5, 3.5, 4.5, 5.5]], dtype=np.float32)
    print("input          ", ties[0])
    print("qonnx (ROUND)  ", execute_onnx(wrapped, {wrapped.graph.input[0].name: ties})[wrapped.graph.output[0].name][0])
    finn = wrapped.transform(ConvertQONNXtoFINN())
    print("FINN", sorted({n.op_type for n in finn.graph.node}), finn_execute(finn, {finn.graph.input[0].name: ties})[finn.graph.output[0].name][0])


if __name__ == "__main__":
    main()
