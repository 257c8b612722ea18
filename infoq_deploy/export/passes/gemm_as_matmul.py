"""Write each Gemm as MatMul (+ Add of its bias), with per-column weight scales as a 1-D vector.

hls4ml's flow runs qonnx's GemmToMatMul itself, which leaves a per-output-channel weight
scale of shape (1, N); hls4ml 1.3's ScaleDownMatMul then cannot broadcast it onto the
(N,) output (batch dimension dropped) and gives up, leaving the weights unconverted
(docs/upstream/). The same MatMul with a (N,) scale is equivalent ONNX, and both flows take
it; the documented flow's own GemmToMatMul then has nothing left to do.

The Gemms our exports hold (alpha = beta = 1, A as is, B a constant or a Quant of one that
only this Gemm reads) are rewritten here in one pass, the constant transposed in place.
qonnx's GemmToMatMul, kept for any other Gemm, rewrites one node per call and copies the
whole model after each (its RemoveIdentityOps): a copy of every weight per Gemm, 49 times on
ViT-B/16's 86 M weights, in every fpga-int export and in its preflight.
"""

from __future__ import annotations

import warnings

import numpy as np
from onnx import helper
from qonnx.transformation.base import Transformation
from qonnx.transformation.gemm_to_matmul import GemmToMatMul
from qonnx.util.cleanup import cleanup_model


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _weight(model, node):
    """(initializer name, the Quant node reading it or None), when B is a constant (through
    one Quant) that nothing but this Gemm reads; else None."""
    name = node.input[1]
    if model.get_initializer(name) is not None:
        return (name, None) if len(model.find_consumers(name)) == 1 else None
    quant = model.find_producer(name)
    if (quant is None or quant.op_type != "Quant" or model.get_initializer(quant.input[0]) is None
            or len(model.find_consumers(name)) != 1 or len(model.find_consumers(quant.input[0])) != 1):
        return None
    params = [model.get_initializer(p) for p in quant.input[1:]]
    if any(v is None for v in params):
        return None
    # a scale or zero point it transposes must be this Quant's alone
    if any(v.ndim == 2 and len(model.find_consumers(p)) != 1 for p, v in zip(quant.input[1:3], params)):
        return None
    return quant.input[0], quant


def _rewrite(model, node) -> bool:
    """``node`` as MatMul (+ Add), in place; False when it is not a Gemm of the plain form."""
    if _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0 or _attr(node, "transA", 0):
        return False
    found = _weight(model, node)
    if found is None:
        return False
    weight, quant = found
    if _attr(node, "transB", 0):
        model.set_initializer(weight, np.ascontiguousarray(model.get_initializer(weight).T))
        stale = {node.input[1]}  # the shape recorded for B is the untransposed one
        for info in [v for v in model.graph.value_info if v.name in stale]:
            model.graph.value_info.remove(info)
        for param in quant.input[1:3] if quant is not None else ():
            value = model.get_initializer(param)
            if value.ndim == 2:  # a per-row (N, 1) scale is per column once transposed: (N,)
                model.set_initializer(param, np.ascontiguousarray(value.T).reshape(-1) if value.shape[1] == 1
                                      else np.ascontiguousarray(value.T))
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    product = f"{node.output[0]}_matmul" if bias else node.output[0]
    replacement = [helper.make_node("MatMul", [node.input[0], node.input[1]], [product], name=node.name)]
    if bias:
        replacement.append(helper.make_node("Add", [product, bias], [node.output[0]], name=f"{node.name}_bias"))
    graph = model.graph
    at = list(graph.node).index(node)
    graph.node.remove(node)
    for offset, new in enumerate(replacement):
        graph.node.insert(at + offset, new)
    return True


class GemmAsMatMul(Transformation):
    def apply(self, model):
        gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
        if not gemms:
            return model, False
        left = [node for node in gemms if not _rewrite(model, node)]
        if left:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # written for Gemm opset 9; ours uses nothing newer
                model = model.transform(GemmToMatMul())
        model = cleanup_model(model)  # shapes; folds GemmToMatMul's weight Transpose into the Quant node
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
