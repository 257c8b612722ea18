"""Write each Gemm as MatMul (+ Add of its bias), with per-column weight scales as a 1-D vector.

hls4ml's flow runs qonnx's GemmToMatMul itself, which leaves a per-output-channel weight
scale of shape (1, N); hls4ml 1.3's ScaleDownMatMul then cannot broadcast it onto the
(N,) output (batch dimension dropped) and gives up, leaving the weights unconverted
(docs/upstream/). The same MatMul with a (N,) scale is equivalent ONNX, and both flows take
it; the documented flow's own GemmToMatMul then has nothing left to do.

Every Gemm is rewritten here in one pass: Transposes of A and B where transA / transB are set
(qonnx's cleanup folds B's into the Quant node's initializers), the MatMul, a Mul by alpha and
by beta where they are not 1 (torch writes 1), and the Add of C. Not qonnx's GemmToMatMul: it
converts one node per call and then runs RemoveIdentityOps over the whole graph, which removes
one node per call and re-infers every shape each time (ViT-B/16's export sat there, for its
one Gemm, until stopped by hand in issue #14's matrix), and it writes alpha and beta as float64
constants, which ONNX Runtime refuses beside float32 tensors.
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper
from qonnx.transformation.base import Transformation
from qonnx.util.cleanup import cleanup_model


def _rewrite_gemms(model) -> None:
    """Node names are left to the cleanup that follows (qonnx's GiveUniqueNodeNames)."""
    graph, new = model.graph, model.make_new_valueinfo_name
    nodes = []

    def scaled(tensor: str, factor: float, out: str | None = None) -> str:
        const, out = new(), out or new()
        graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), const))
        nodes.append(helper.make_node("Mul", [tensor, const], [out]))
        return out

    for node in list(graph.node):
        if node.op_type != "Gemm":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        a, b = node.input[0], node.input[1]
        if attrs.get("transA", 0):
            nodes.append(helper.make_node("Transpose", [a], [transposed := new()]))
            a = transposed
        if attrs.get("transB", 0):
            nodes.append(helper.make_node("Transpose", [b], [transposed := new()]))
            b = transposed
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        product = node.output[0] if bias is None and alpha == 1.0 else new()
        nodes.append(helper.make_node("MatMul", [a, b], [product]))
        if alpha != 1.0:
            product = scaled(product, alpha, node.output[0] if bias is None else None)
        if bias is not None:
            if beta != 1.0:
                bias = scaled(bias, beta)
            nodes.append(helper.make_node("Add", [product, bias], [node.output[0]]))
    del graph.node[:]
    graph.node.extend(nodes)


class GemmAsMatMul(Transformation):
    def apply(self, model):
        if not any(n.op_type == "Gemm" for n in model.graph.node):
            return model, False
        _rewrite_gemms(model)
        model = cleanup_model(model)  # folds the weight Transpose into the Quant node
        for node in model.graph.node:
            if node.op_type != "MatMul":
                continue
            quant = model.find_producer(node.input[1])
            if quant is None or quant.op_type != "Quant":
                continue
            for param in quant.input[1:3]:
                value = model.get_initializer(param)
                if value is not None and value.ndim == 2 and value.shape[0] == 1:
                    model.set_initializer(param, value.reshape(-1))
        return model, False
