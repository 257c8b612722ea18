"""QONNX run whole in ONNX Runtime: each ``Quant`` node rewritten as the standard ops that
compute it, in qonnx's own order (``int_quant``: divide by the scale, add the zero point,
clamp to the integer range, round half to even, subtract the zero point, multiply by the
scale), then one ORT session with its graph optimizations off.

Why: qonnx's reference executor runs a graph node by node from Python and builds an ORT
session for every standard node of every call; on an ImageNet network that is minutes per
batch (DenseNet-121 did not verify in 15 minutes, issue #14). The same arithmetic in one
session is one call. Optimizations are off so that ORT runs the nodes of the file as written
(no Conv+BatchNorm folding, no NCHWc layout): what runs is the file, not ORT's rewrite of it.
ONNX's ``Round`` is half to even like numpy's, and ``Clip`` before ``Round`` is qonnx's order
(identical after rounding, because the bounds are integers). verify/check.py still runs qonnx's
executor on a sample and reports how far the two runs are apart.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime
from onnx import helper, numpy_helper
from qonnx.custom_op.general.quant import max_int, min_int

from infoq_deploy.core.errors import UserError

QUANT_OPS = ("Quant",)


def quant_as_standard_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every Quant node replaced by Div, Add, Clip, Round, Sub, Mul (in place; returned).

    Only the rounding qonnx resolves to ``np.round`` (ROUND / HALF_EVEN) has an ONNX op of the
    same meaning; another mode, or a bit width that is not a constant, is a UserError naming the node.
    """
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:  # Constant nodes too: qonnx cleanup may leave some
        if node.op_type == "Constant" and node.attribute:
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    new_nodes, new_inits = [], []
    for node in graph.node:
        if node.op_type not in QUANT_OPS:
            new_nodes.append(onnx.NodeProto.FromString(node.SerializeToString()))  # outlives the clear below
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        mode = attrs.get("rounding_mode", b"ROUND")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode.upper() not in ("ROUND", "HALF_EVEN"):
            raise UserError(f"Quant node {node.name} rounds by {mode}, which has no standard ONNX op; "
                            "verify it with --backend qonnx")
        bits = consts.get(node.input[3])
        if bits is None:
            raise UserError(f"Quant node {node.name} has no constant bit width; verify it with --backend qonnx")
        bits = int(np.asarray(bits).reshape(-1)[0])
        signed, narrow = bool(attrs.get("signed", 1)), bool(attrs.get("narrow", 0))
        if bits == 1 and signed:
            raise UserError(f"Quant node {node.name} is bipolar (1 bit, signed); verify it with --backend qonnx")
        x, scale, zero = node.input[0], node.input[1], node.input[2]
        name, out = node.name or node.output[0], node.output[0]
        lo, hi = f"{name}__lo", f"{name}__hi"
        dtype = np.float32
        new_inits += [numpy_helper.from_array(np.asarray(min_int(signed, narrow, bits), dtype), lo),
                      numpy_helper.from_array(np.asarray(max_int(signed, narrow, bits), dtype), hi)]
        t = [f"{name}__{k}" for k in ("div", "zp", "clip", "round", "unzp")]
        new_nodes += [
            helper.make_node("Div", [x, scale], [t[0]], name=t[0]),
            helper.make_node("Add", [t[0], zero], [t[1]], name=t[1]),
            helper.make_node("Clip", [t[1], lo, hi], [t[2]], name=t[2]),
            helper.make_node("Round", [t[2]], [t[3]], name=t[3]),
            helper.make_node("Sub", [t[3], zero], [t[4]], name=t[4]),
            helper.make_node("Mul", [t[4], scale], [out], name=f"{name}__scale"),
        ]
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    # the qonnx domain is no longer used; ORT refuses a model that imports a domain it does not know
    used = {n.domain for n in graph.node}
    keep = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return model


def session(model: onnx.ModelProto):
    # the file as written (it is already in qonnx's cleaned form, export/to_qonnx.py): qonnx's
    # cleanup re-infers shapes, seconds on an ImageNet graph, and changes no value
    rewritten = quant_as_standard_ops(copy.deepcopy(model))
    left = sorted({n.op_type for n in rewritten.graph.node if n.domain not in ("", "ai.onnx")})
    if left:
        raise UserError(f"the graph has non-standard ops ({', '.join(left)}) that ONNX Runtime cannot run; "
                        "verify it with --backend qonnx")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = onnxruntime.InferenceSession(rewritten.SerializeToString(), options, providers=["CPUExecutionProvider"])
    iname = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {iname: x})[0]

    return run
