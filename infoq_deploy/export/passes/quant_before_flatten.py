"""Swap Flatten/Reshape with the per-tensor Quant right after it (elementwise, so they commute).

After qonnx's channels-last pass a Transpose stays in front of the Flatten before the
classifier, because the Quant between Flatten and MatMul stops AbsorbChanFirstIntoMatMul;
hls4ml 1.3 then drops the Reshape and reads a stream nothing writes (docs/upstream/). With
the Quant first, the Transpose moves through it and is absorbed into the MatMul weights.
"""

from __future__ import annotations

from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_shapes import InferShapes


def _per_tensor(model, quant) -> bool:
    params = [model.get_initializer(i) for i in quant.input[1:]]
    return all(p is not None and p.size == 1 for p in params)


class QuantBeforeFlatten(Transformation):
    def apply(self, model):
        graph = model.graph
        outputs = {o.name for o in graph.output}
        for node in graph.node:
            if node.op_type not in ("Flatten", "Reshape") or node.output[0] in outputs:
                continue
            users = model.find_consumers(node.output[0]) or []
            if len(users) != 1 or users[0].op_type != "Quant" or not _per_tensor(model, users[0]):
                continue
            quant = users[0]
            x, flat, quantized = node.input[0], node.output[0], quant.output[0]
            quant.input[0], quant.output[0] = x, flat  # x -> Quant -> flat -> Flatten -> quantized
            node.input[0], node.output[0] = flat, quantized
            graph.node.remove(node)
            graph.node.insert(list(graph.node).index(quant) + 1, node)
            for info in list(graph.value_info):
                if info.name in (flat, quantized):
                    graph.value_info.remove(info)  # shapes changed; inferred anew
            return model.transform(InferShapes()), True
        return model, False
