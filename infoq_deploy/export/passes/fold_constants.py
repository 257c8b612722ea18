"""Fold every node whose value does not depend on the input, a pass in graph order per round.

Folded: a standard-domain node whose inputs are all constants (initializers, or outputs folded
earlier in the pass), a node with no inputs (Constant), and a Shape of a tensor whose every size
shape inference found (the exported batch size is fixed: the file is written for one batch size,
`backends/batched.py` re-batches a copy). Shapes are inferred again before each round, and rounds
go on until one folds nothing: a folded Reshape target gives the tensors after it their shapes.
Quant nodes stay: they are the quantizers FINN and hls4ml read, and qonnx's own FoldConstants
leaves them too.

Why not qonnx's FoldConstants (which `cleanup_model` runs): it folds one node per call and,
for each, allocates every tensor of the graph and re-infers every shape; an ImageNet graph
with channel shuffles (ShuffleNet: a Shape/Gather/Concat chain per shuffle) spent minutes
there. After this pass qonnx's finds nothing left to fold. Values are computed by
ONNX's reference evaluator, node by node, as qonnx computes them (shape and index arithmetic).
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_shapes import InferShapes

KEEP = ("Quant", "BipolarQuant", "Trunc")


def _evaluate(node, values: dict, opsets) -> list[np.ndarray]:
    inputs = [name for name in node.input if name]
    graph = helper.make_graph([node], "fold", [], [helper.make_tensor_value_info(o, 0, None) for o in node.output],
                              [numpy_helper.from_array(np.asarray(values[i]), i) for i in inputs])
    return ReferenceEvaluator(helper.make_model(graph, opset_imports=opsets)).run(None, {})


def _static_shape(infos: dict, tensor: str) -> np.ndarray | None:
    """The tensor's shape when inference found every size; None when it found none, only a rank,
    or a symbolic size (a missing shape is not the shape of a scalar)."""
    info = infos.get(tensor)
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    dims = info.type.tensor_type.shape.dim
    if not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        return None
    return np.asarray([d.dim_value for d in dims], dtype=np.int64)


class FoldConstantsOnce(Transformation):
    def apply(self, model):
        model = model.transform(InferShapes())  # each round: the shapes the last round's folding revealed
        graph = model.graph
        opsets = [o for o in model.model.opset_import if o.domain in ("", "ai.onnx")]
        values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        outputs = {o.name for o in graph.output}
        infos = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}
        kept, folded = [], {}
        for node in graph.node:
            standard = node.domain in ("", "ai.onnx") and node.op_type not in KEEP
            subgraph = any(a.type in (5, 10) for a in node.attribute)  # GRAPH / GRAPHS (If, Loop, Scan)
            result = None
            if standard and not subgraph and not any(o in outputs for o in node.output):
                if node.op_type == "Shape" and node.input[0] not in values and not node.attribute:
                    shape = _static_shape(infos, node.input[0])
                    result = None if shape is None else [shape]
                elif all(name in values for name in node.input if name):
                    result = _evaluate(node, values, opsets)
            if result is None:
                kept.append(node)
                continue
            for name, value in zip(node.output, result):
                values[name] = folded[name] = np.asarray(value)
        if not folded:
            return model, False
        used = {name for node in kept for name in node.input}
        kept = [NodeProto.FromString(n.SerializeToString()) for n in kept]  # detached from the list cleared next
        del graph.node[:]
        graph.node.extend(kept)
        for name, value in folded.items():
            if name in used:
                model.set_initializer(name, value)
        # folding can give later tensors their shapes (a Reshape whose target was computed): another round
        return model, True
