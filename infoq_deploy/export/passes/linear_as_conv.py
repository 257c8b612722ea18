"""Write a classifier Gemm that reads a flattened feature map as a Conv over the whole map.

hls4ml 1.3 cannot move a per-output-channel weight scale out of a MatMul (ScaleDownMatMul
broadcasts the scale replicated over the weight's rows onto the output and gives up,
docs/upstream/), but it moves one out of a Conv. Gemm(Flatten(x), W^T) with x of shape
(N, C, H, W) is exactly Conv(x, W.reshape(K, C, H, W)), flattened: the same products in
the same order, the same per-output-channel scales.

When the Gemm writes the graph output, the output becomes the Conv's (N, K, 1, 1): hls4ml
1.3 fails on a Flatten that writes the graph output in io_stream (its ReshapeStream pass
looks the output up under the layer's name), and a Flatten in the middle keeps a
channels-last Transpose in front that its stream reads wrongly (docs/upstream/). The
logits are the same numbers in the same order.
"""

from __future__ import annotations

from onnx import helper
from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_shapes import InferShapes

from infoq_deploy.export.passes.values import constant_value


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class LinearAsConv(Transformation):
    def apply(self, model):
        graph = model.graph
        for node in graph.node:
            if node.op_type != "Gemm" or _attr(node, "transA", 0) or not _attr(node, "transB", 0):
                continue
            if _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0:
                continue
            flatten = model.find_producer(node.input[0])
            if flatten is None or flatten.op_type != "Flatten" or _attr(flatten, "axis", 1) != 1:
                continue
            shape = model.get_tensor_shape(flatten.input[0])
            quant = model.find_producer(node.input[1])
            if shape is None or len(shape) != 4 or quant is None or quant.op_type != "Quant":
                continue
            weight, scale = model.get_initializer(quant.input[0]), model.get_initializer(quant.input[1])
            if weight is None or scale is None or len(model.find_consumers(quant.output[0])) != 1:
                continue
            _, channels, height, width = shape
            outputs = weight.shape[0]
            model.set_initializer(quant.input[0], weight.reshape(outputs, channels, height, width))
            if scale.size == outputs:
                model.set_initializer(quant.input[1], scale.reshape(outputs, 1, 1, 1))
            bias = constant_value(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
            inputs = [flatten.input[0], quant.output[0]]
            if bias is not None:
                bias_name = model.make_new_valueinfo_name()
                model.set_initializer(bias_name, bias.reshape(-1))
                inputs.append(bias_name)
            is_output = node.output[0] in {o.name for o in graph.output}
            conv_out = node.output[0] if is_output else model.make_new_valueinfo_name()
            new = [helper.make_node(
                "Conv", inputs, [conv_out], name=f"{node.name}_conv",
                kernel_shape=[height, width], strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1,
            )]
            if is_output:
                out = next(o for o in graph.output if o.name == node.output[0])
                dims = out.type.tensor_type.shape.dim
                for _ in range(2):
                    dims.add().dim_value = 1
            else:
                new.append(helper.make_node("Flatten", [conv_out], [node.output[0]], name=f"{node.name}_flat", axis=1))
            index = list(graph.node).index(node)
            graph.node.remove(node)
            for k, n in enumerate(new):
                graph.node.insert(index + k, n)
            if not model.find_consumers(flatten.output[0]):
                graph.node.remove(flatten)
            for info in list(graph.value_info):
                if info.name == quant.output[0]:
                    graph.value_info.remove(info)
            return model.transform(InferShapes()), True
        return model, False
