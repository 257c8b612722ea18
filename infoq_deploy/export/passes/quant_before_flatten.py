"""Swap Flatten/Reshape with the per-tensor Quant right after it (elementwise, so they commute).

After qonnx's channels-last pass a Transpose stays in front of the Flatten before the
classifier, because the Quant between Flatten and MatMul stops AbsorbChanFirstIntoMatMul;
hls4ml 1.3 then drops the Reshape and reads a stream nothing writes (docs/upstream/). With
the Quant first, the Transpose moves through it and is absorbed into the MatMul weights.
"""

from __future__ import annotations

from qonnx.transformation.base import Transformation

from infoq_deploy.export.passes.swap import quant_before


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
            return quant_before(model, node, quant), True
        return model, False
