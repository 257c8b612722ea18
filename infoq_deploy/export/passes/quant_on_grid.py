"""Give a float ReLU output that no Quant reads an exact integer form: a lossless Quant.

The ReLU before a global average pool (and any ReLU whose reader is not a quantizer) keeps
the accumulator's value in the deployed model: it is fixed point, but nothing in the file
says so, and FINN needs an integer tensor in front of every hardware layer (its Im2Col
refuses a float input). That value lies on a known grid: a convolution of quantized inputs
and weights is an integer times (input scale x weight scale) per output channel, a bias
added at that scale keeps it there, a residual add of two such tensors lies on the finer
grid when one step divides the other, and a ReLU or max pool keeps it. The bound follows
from the integer weights and the quantizers' ranges. A Quant with the finest channel's step
(every other channel's is a multiple of it on power-of-two scales; hls4ml takes only a
per-tensor activation scale) and enough bits for that bound (unsigned after a ReLU) is
therefore the identity on every value the tensor can take: the model is unchanged, and the
file now states the integer type.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import helper
from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_shapes import InferShapes

QONNX_DOMAIN = "qonnx.custom_op.general"
MAX_BITS = 24  # float32 holds integers up to 2**24 exactly, so qonnx's executor stays exact


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _channels(v, channels: int) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    return np.broadcast_to(v, (channels,)).copy() if v.size in (1, channels) else None


def _quant_range(model, quant, channels: int):
    scale, zero, bits = (model.get_initializer(i) for i in quant.input[1:4])
    if scale is None or zero is None or bits is None or np.any(zero != 0) or bits.size != 1:
        return None
    step = _channels(scale, channels)
    if step is None:
        return None
    signed = _attrs(quant).get("signed", 1)
    top = 2.0 ** (float(bits) - 1) if signed else 2.0 ** float(bits) - 1
    return step, step * top


def _plus_bias(step, bound, bias):
    """A bias added on the grid keeps the grid; one off it leaves no exact integer form."""
    b = np.asarray(bias, dtype=np.float64).reshape(-1)
    if np.any(np.round(b / step) != b / step):
        return None
    return step, bound + np.abs(b)


def grid(model, tensor: str, channels: int, depth: int = 0):
    """(per-channel step, per-channel bound on |value|) of a fixed-point tensor, or None."""
    producer = model.find_producer(tensor)
    if producer is None or depth > 16:
        return None
    op = producer.op_type
    if op == "Quant":
        return _quant_range(model, producer, channels)
    if op in ("Relu", "MaxPool"):
        return grid(model, producer.input[0], channels, depth + 1)
    if op == "Conv":
        x_q, w_q = (model.find_producer(i) for i in producer.input[:2])
        w = model.get_initializer(w_q.input[0]) if w_q is not None and w_q.op_type == "Quant" else None
        in_shape = model.get_tensor_shape(producer.input[0])
        if w is None or not in_shape:
            return None
        x_range = grid(model, producer.input[0], in_shape[1], depth + 1)
        w_range = _quant_range(model, w_q, channels)
        if x_range is None or w_range is None or np.any(x_range[0] != x_range[0][0]):
            return None
        w_int = np.abs(np.round(w.astype(np.float64) / w_range[0].reshape(-1, 1, 1, 1)))
        step = x_range[0][0] * w_range[0]
        bound = w_int.sum(axis=(1, 2, 3)) * float(np.max(x_range[1] / x_range[0])) * step
        if len(producer.input) > 2 and producer.input[2]:
            bias = model.get_initializer(producer.input[2])
            return None if bias is None else _plus_bias(step, bound, bias)
        return step, bound
    if op == "BatchNormalization":
        scale, bias, mean, var = (model.get_initializer(i) for i in producer.input[1:5])
        eps = _attrs(producer).get("epsilon", 1e-5)
        if any(v is None for v in (scale, bias, mean, var)) or eps != 0 or np.any(scale != 1) or np.any(mean != 0) \
                or np.any(var != 1):
            return None  # only the bias-only form of export/passes/bias_to_batchnorm.py
        inner = grid(model, producer.input[0], channels, depth + 1)
        return None if inner is None else _plus_bias(*inner, bias)
    if op == "Add":
        parts = [grid(model, i, channels, depth + 1) for i in producer.input]
        if any(p is None for p in parts):
            return None
        (s1, b1), (s2, b2) = parts
        step = np.minimum(s1, s2)
        coarse = np.maximum(s1, s2)
        if np.any(np.round(coarse / step) != coarse / step):
            return None
        return step, b1 + b2
    return None


class QuantOnGrid(Transformation):
    def apply(self, model):
        graph = model.graph
        outputs = {o.name for o in graph.output}
        for index, node in enumerate(graph.node):
            if node.op_type != "Relu" or node.output[0] in outputs:
                continue
            users = model.find_consumers(node.output[0]) or []
            shape = model.get_tensor_shape(node.output[0])
            if not users or any(u.op_type == "Quant" for u in users) \
                    or not shape or len(shape) != 4:
                continue
            found = grid(model, node.input[0], shape[1])
            if found is None:
                continue
            # one step for the whole tensor: hls4ml 1.3 takes only a per-tensor activation scale;
            # the finest channel's step, when every other channel's is a multiple of it (powers of two)
            finest = float(np.min(found[0]))
            if np.any(np.round(found[0] / finest) != found[0] / finest):
                continue
            step, bound = np.asarray([finest]), np.asarray([float(np.max(found[1]))])
            bits = max(1, int(math.ceil(math.log2(float(np.max(np.round(bound / step))) + 1))))
            if bits > MAX_BITS:
                continue
            scale, zero, width, quantized = (model.make_new_valueinfo_name() for _ in range(4))
            for name, value in ((scale, step[0]), (zero, 0.0), (width, float(bits))):
                model.set_initializer(name, np.asarray(value, dtype=np.float32))
            for user in users:
                for k, name in enumerate(user.input):
                    if name == node.output[0]:
                        user.input[k] = quantized
            graph.node.insert(index + 1, helper.make_node(
                "Quant", [node.output[0], scale, zero, width], [quantized], domain=QONNX_DOMAIN,
                name=f"{node.name}_on_grid", signed=0, narrow=0, rounding_mode="ROUND"))
            return model.transform(InferShapes()), True
        return model, False
