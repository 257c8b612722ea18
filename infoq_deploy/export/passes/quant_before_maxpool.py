"""Swap a MaxPool with the Quant right after it, so the pool reads the quantized tensor.

A ReLU -> MaxPool -> Quant chain leaves the ReLU and the pool on a float tensor: FINN's
ReLU handler only takes a ReLU whose output a Quant reads directly, so the ReLU stays float
and the pool cannot become a hardware layer. Quantization with a positive per-channel (or
per-tensor) scale is monotone within a channel and max pooling picks within a channel, so
Quant(MaxPool(x)) == MaxPool(Quant(x)) exactly, padding included (MaxPool pads are never
chosen).
"""

from __future__ import annotations

import numpy as np
from qonnx.transformation.base import Transformation

from infoq_deploy.export.passes.swap import quant_before


def _channelwise(model, quant, channels: int) -> bool:
    scale, zero, bits = (model.get_initializer(i) for i in quant.input[1:4])
    if scale is None or zero is None or bits is None or bits.size != 1 or np.any(zero != 0) or np.any(scale <= 0):
        return False
    return scale.size == 1 or (scale.size == channels and scale.ndim == 4 and scale.shape[1] == channels)


class QuantBeforeMaxPool(Transformation):
    def apply(self, model):
        graph = model.graph
        outputs = {o.name for o in graph.output}
        for node in graph.node:
            if node.op_type != "MaxPool" or node.output[0] in outputs:
                continue
            users = model.find_consumers(node.output[0]) or []
            shape = model.get_tensor_shape(node.input[0])
            if len(users) != 1 or users[0].op_type != "Quant" or not shape or len(shape) != 4:
                continue
            quant = users[0]
            if not _channelwise(model, quant, shape[1]):
                continue
            return quant_before(model, node, quant), True
        return model, False
