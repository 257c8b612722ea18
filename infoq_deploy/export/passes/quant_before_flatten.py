"""Swap Flatten/Reshape with the per-tensor Quant right after it (elementwise, so they commute).

After qonnx's channels-last pass a Transpose stays in front of the Flatten before the
classifier, because the Quant between Flatten and MatMul stops AbsorbChanFirstIntoMatMul;
hls4ml 1.3 then drops the Reshape and reads a stream nothing writes (docs/upstream/). With
the Quant first, the Transpose moves through it and is absorbed into the MatMul weights.
"""

from __future__ import annotations

from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_shapes import InferShapes

from infoq_deploy.export.passes.swap import quant_before


def _per_tensor(model, quant) -> bool:
    params = [model.get_initializer(i) for i in quant.input[1:]]
    return all(p is not None and p.size == 1 for p in params)


class QuantBeforeFlatten(Transformation):
    """Every such pair in one pass, shapes inferred once per round: one pair per call, each
    call copying the model to infer shapes, kept a ViT-S export here for minutes."""

    def apply(self, model):
        graph = model.graph
        outputs = {o.name for o in graph.output}
        pairs = []
        for node in graph.node:
            if node.op_type not in ("Flatten", "Reshape") or node.output[0] in outputs:
                continue
            users = model.find_consumers(node.output[0]) or []
            if len(users) != 1 or users[0].op_type != "Quant" or not _per_tensor(model, users[0]):
                continue
            pairs.append((node, users[0]))
        if not pairs:
            return model, False
        for node, quant in pairs:  # each swap touches only its own pair's tensors
            model = quant_before(model, node, quant, infer_shapes=False)
        # again: a swap can make a new pair (Reshape -> Quant -> Reshape -> Quant)
        return model.transform(InferShapes()), True
