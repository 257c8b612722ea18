"""Merge nodes that compute the same thing from the same inputs (common subexpression elimination).

The Brevitas model quantizes a tensor once, but a quantizer called twice on one tensor (a
layer's input quantizer shared with a residual add) is exported twice. hls4ml and FINN
store each tensor once; qonnx's channels-last pass mishandles a tensor that forks into
two quantizers; ONNX Runtime fuses a DequantizeLinear into one integer kernel only.

One pass in graph order: a node's inputs are renamed to the survivors of earlier merges
before its key is taken, so duplicates downstream of a merge (whose inputs only then
coincide) merge in the same pass. (Merging one pair per call, with every key recomputed
and every initializer looked up by a scan, took minutes on DenseNet-121's graph.)
"""

from __future__ import annotations

import hashlib

from onnx import numpy_helper
from qonnx.transformation.base import Transformation

_IMPURE = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


def _init_keys(graph) -> dict[str, tuple]:
    """Initializer name -> its value's identity: Brevitas writes each quantizer call's parameters
    as initializers of their own, so equal values, not names, make two inputs the same."""
    keys = {}
    for init in graph.initializer:
        value = numpy_helper.to_array(init)
        keys[init.name] = ("init", str(value.dtype), value.shape, hashlib.sha256(value.tobytes()).hexdigest())
    return keys


def _key(node, init_keys: dict[str, tuple]) -> tuple:
    attrs = tuple(sorted((a.name, a.SerializeToString()) for a in node.attribute))
    inputs = tuple(init_keys.get(name, name) for name in node.input)
    return (node.domain, node.op_type, inputs, attrs, len(node.output))


class MergeDuplicateNodes(Transformation):
    def apply(self, model):
        graph = model.graph
        outputs = {o.name for o in graph.output}
        init_keys = _init_keys(graph)
        renamed: dict[str, str] = {}
        seen: dict[tuple, object] = {}
        kept, dropped = [], []
        for index, node in enumerate(graph.node):
            for k, name in enumerate(node.input):
                node.input[k] = renamed.get(name, name)
            if node.op_type in _IMPURE:
                kept.append(node)
                continue
            key = _key(node, init_keys)
            first = seen.get(key)
            if first is None or any(o in outputs for o in node.output):  # a graph output keeps its name
                seen.setdefault(key, node)
                kept.append(node)
                continue
            renamed.update(zip(node.output, first.output))
            dropped.append(index)
        for node in kept:  # a graph not in topological order: rename what the pass went by
            for k, name in enumerate(node.input):
                node.input[k] = renamed.get(name, name)
        for index in reversed(dropped):
            del graph.node[index]
        return model, False
