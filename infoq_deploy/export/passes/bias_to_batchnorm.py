"""Move each convolution's bias out of the Conv, into a BatchNormalization that only adds it.

Brevitas exports a conv bias as a 32-bit Quant node at the accumulator scale (input scale x
per-channel weight scale). hls4ml 1.3 moves per-channel weight scales out of a Conv only
when the Conv has no bias, and FINN's ExtractBiasFromConv fails on the bias Quant's 0-d zero
point (docs/upstream/). A Conv without bias followed by BatchNormalization is the form both
flows take from Brevitas's own FINN examples. The bias becomes its dequantized value, which
is exact: an integer times a scale that is already a float32 product of the two scales.
BatchNormalization(scale=1, mean=0, var=1, epsilon=0) computes x + bias exactly.
When all of a Conv's weight scales are one power of two, hls4ml folds that scale into the
weight type and would fuse the BatchNormalization back into the Conv, which fails on its
broadcast scale (docs/upstream/); such a Conv keeps its bias, as a constant, which hls4ml
takes there. A Gemm's bias Quant becomes its dequantized constant (hls4ml's GemmToMatMul route turns it
into an Add of a constant, which both flows take).
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, helper
from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_shapes import InferShapes

from infoq_deploy.export.passes.values import constant_value


def _one_scale(model, weight: str) -> bool:
    """Whether the weight's Quant node has a single scale value (hls4ml's FuseQuantWithConstant test)."""
    producer = model.find_producer(weight)
    if producer is None or producer.op_type != "Quant":
        return True
    scale = model.get_initializer(producer.input[1])
    return scale is not None and bool(np.all(scale.reshape(-1)[0] == scale))


class BiasToBatchNorm(Transformation):
    """Every conv and Gemm bias in one pass, shapes inferred once (per rewrite, that was a minute
    on an ImageNet network)."""

    def apply(self, model):
        graph = model.graph
        nodes, added = [], False
        for node in list(graph.node):
            nodes.append(node)
            if node.op_type == "Gemm" and len(node.input) > 2 and model.get_initializer(node.input[2]) is None:
                bias = constant_value(model, node.input[2])
                if bias is not None:
                    name = model.make_new_valueinfo_name()
                    model.set_initializer(name, bias)
                    node.input[2] = name
                continue
            if node.op_type != "Conv" or len(node.input) < 3 or not node.input[2]:
                continue
            if model.get_initializer(node.input[2]) is not None and _one_scale(model, node.input[1]):
                continue  # already in the form hls4ml takes
            bias = constant_value(model, node.input[2])
            if bias is None:
                continue
            if _one_scale(model, node.input[1]):
                name = model.make_new_valueinfo_name()
                model.set_initializer(name, bias)
                node.input[2] = name
                continue
            channels = bias.shape[0]
            names = [model.make_new_valueinfo_name() for _ in range(4)]
            for name, value in zip(names, (np.ones(channels), bias, np.zeros(channels), np.ones(channels))):
                model.set_initializer(name, np.asarray(value, dtype=np.float32))
            conv_out = model.make_new_valueinfo_name()
            nodes.append(helper.make_node(
                "BatchNormalization", [conv_out, *names], [node.output[0]], name=f"{node.name}_bias", epsilon=0.0))
            node.output[0] = conv_out
            del node.input[2]
            added = True
        if added:
            nodes = [NodeProto.FromString(n.SerializeToString()) for n in nodes]  # detached from the list cleared next
            del graph.node[:]
            graph.node.extend(nodes)
            model = model.transform(InferShapes())
        return model, False
