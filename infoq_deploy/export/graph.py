"""Reading an exported ONNX graph: constants, producers, and the parameter sub-graphs."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

# Nodes a weight or bias passes through on its way to a compute node.
PARAM_OPS = ("Quant", "QuantizeLinear", "DequantizeLinear", "Clip", "Cast", "Identity", "Transpose")


class OnnxGraph:
    def __init__(self, model: onnx.ModelProto):
        self.nodes = list(model.graph.node)
        self.inits = {i.name: i for i in model.graph.initializer}
        self.producer = {out: n for n in self.nodes for out in n.output}

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def is_param(self, name: str) -> bool:
        """Whether ``name`` is computed from constants only (a weight/bias and its quantizer)."""
        if self.const(name) is not None:
            return True
        node = self.producer.get(name)
        return node is not None and node.op_type in PARAM_OPS and all(self.is_param(i) for i in node.input if i)

    def source(self, name: str):
        """The node producing ``name``, looking through Identity and Transpose."""
        node = self.producer.get(name)
        while node is not None and node.op_type in ("Identity", "Transpose"):
            node = self.producer.get(node.input[0])
        return node


def bits_from_range(lo: int, hi: int) -> int | None:
    bits = math.log2(hi + 1) + (1 if lo < 0 else 0)
    return int(bits) if bits.is_integer() else None
