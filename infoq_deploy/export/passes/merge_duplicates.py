"""Merge nodes that compute the same thing from the same inputs (common subexpression elimination).

The Brevitas model quantizes a tensor once, but a quantizer called twice on one tensor (a
layer's input quantizer shared with a residual add) is exported twice. hls4ml and FINN
store each tensor once; qonnx's channels-last pass mishandles a tensor that forks into
two quantizers; ONNX Runtime fuses a DequantizeLinear into one integer kernel only.
"""

from __future__ import annotations

from qonnx.transformation.base import Transformation

_IMPURE = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


def _key(model, node) -> tuple:
    attrs = tuple(sorted((a.name, a.SerializeToString()) for a in node.attribute))
    inputs = []
    for name in node.input:
        value = model.get_initializer(name)
        # Brevitas writes each quantizer call's parameters as initializers of their own
        inputs.append(name if value is None else ("init", str(value.dtype), value.shape, value.tobytes()))
    return (node.domain, node.op_type, tuple(inputs), attrs, len(node.output))


class MergeDuplicateNodes(Transformation):
    def apply(self, model):
        graph = model.graph
        outputs = {o.name for o in graph.output}
        seen: dict[tuple, object] = {}
        for node in list(graph.node):
            if node.op_type in _IMPURE:
                continue
            key = _key(model, node)
            first = seen.get(key)
            if first is None:
                seen[key] = node
                continue
            if any(o in outputs for o in node.output):
                continue  # a graph output keeps its name
            for dup, kept in zip(node.output, first.output):
                for consumer in graph.node:
                    for k, name in enumerate(consumer.input):
                        if name == dup:
                            consumer.input[k] = kept
            graph.node.remove(node)
            return model, True  # inputs changed: keys downstream may now collide too
        return model, False
