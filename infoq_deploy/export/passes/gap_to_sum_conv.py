"""Write GlobalAveragePool (and ReduceMean over H, W) as a depthwise convolution of ones (the sum)
divided by the pool size.

qonnx's channels-last pass keeps GlobalAveragePool channels-first (a Transpose in front),
and hls4ml 1.3 then reads that channels-first stream as channels-last (wrong channels, or
an illegal instruction in the C simulation; docs/upstream/). A Conv is what the pass moves
to channels-last, and every flow takes a depthwise Conv. The weights are 1, quantized with
scale 1 (2-bit narrow: the integer 1 itself), so the sum is exact integer arithmetic on the
quantized input; the Div by H*W is the same division the pool performs. hls4ml has no
ReduceMean at all (``x.mean((2, 3))`` in torch); without keepdims a Flatten follows.
"""

from __future__ import annotations

import numpy as np
from onnx import helper
from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_shapes import InferShapes

QONNX_DOMAIN = "qonnx.custom_op.general"


class GlobalAveragePoolToSumConv(Transformation):
    def apply(self, model):
        graph = model.graph
        for index, node in enumerate(graph.node):
            if node.op_type not in ("GlobalAveragePool", "ReduceMean"):
                continue
            shape = model.get_tensor_shape(node.input[0])
            if shape is None or len(shape) != 4:
                continue  # 1-D/3-D pools stay as they are
            attrs = {a.name: a for a in node.attribute}
            keepdims = True
            if node.op_type == "ReduceMean":
                axes = sorted(a % 4 for a in attrs["axes"].ints) if "axes" in attrs else None
                if axes != [2, 3] or len(node.input) > 1:
                    continue  # a mean over other axes is no pool
                keepdims = attrs["keepdims"].i != 0 if "keepdims" in attrs else True
            _, channels, height, width = shape
            ones, scale, zero, bits = (model.make_new_valueinfo_name() for _ in range(4))
            model.set_initializer(ones, np.ones((channels, 1, height, width), dtype=np.float32))
            for name, value in ((scale, 1.0), (zero, 0.0), (bits, 2.0)):
                model.set_initializer(name, np.asarray(value, dtype=np.float32))
            weight, total, count = (model.make_new_valueinfo_name() for _ in range(3))
            model.set_initializer(count, np.asarray(height * width, dtype=np.float32))
            new = [
                helper.make_node(
                    "Quant", [ones, scale, zero, bits], [weight], domain=QONNX_DOMAIN,
                    name=f"{node.name}_ones", signed=1, narrow=1, rounding_mode="ROUND",
                ),
                helper.make_node(
                    "Conv", [node.input[0], weight], [total], name=f"{node.name}_sum", group=channels,
                    kernel_shape=[height, width], strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1],
                ),
            ]
            if keepdims:
                new.append(helper.make_node("Div", [total, count], [node.output[0]], name=f"{node.name}_mean"))
            else:
                mean = model.make_new_valueinfo_name()
                new.append(helper.make_node("Div", [total, count], [mean], name=f"{node.name}_mean"))
                new.append(helper.make_node("Flatten", [mean], [node.output[0]], name=f"{node.name}_flat", axis=1))
            graph.node.remove(node)
            for k, n in enumerate(new):
                graph.node.insert(index + k, n)
            return model.transform(InferShapes()), True
        return model, False
