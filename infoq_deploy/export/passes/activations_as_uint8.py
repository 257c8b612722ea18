"""Store signed 8-bit activations as uint8 with zero point 128 (QCDQ, for ONNX Runtime).

Our quantizers are symmetric, so a signed activation is int8 with zero point 0 and an
unsigned one (after a ReLU) uint8 with zero point 0. ONNX Runtime fuses a QDQ convolution or
add into an integer kernel only when the types line up along the graph: with int8 and uint8
activations mixed, every convolution that reads a residual block's input (shared with the
add) stays float, as do the adds (EfficientNet-Lite0: 14 of 49 convolutions, all 9 adds).
With every activation uint8 (ORT's own ``quantize_static`` default) all of them fuse.

The rewrite is exact: ``clamp(round(x/s), -128, 127) + 128 = clamp(round(x/s) + 128, 0, 255)``
and ``(q + 128 - 128) * s = q * s``; a Clip between the pair (a narrower range) moves by 128 too.
Weights stay int8 (ORT's u8s8 kernels), int32 biases are untouched.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation

OFFSET = 128


def _const(value) -> np.ndarray | None:
    return value.values if isinstance(value, gs.Constant) else None


def _shifted(values: np.ndarray) -> np.ndarray:
    return np.asarray(values.astype(np.int16) + OFFSET, dtype=np.uint8)


class ActivationsAsUint8(Transformation):
    def apply(self, model: ModelWrapper):
        graph = gs.import_onnx(model.model)
        changed = False
        for q in [n for n in graph.nodes if n.op == "QuantizeLinear"]:
            if len(q.inputs) < 3 or _const(q.inputs[2]) is None or _const(q.inputs[2]).dtype != np.int8:
                continue
            readers = _readers(q)
            if readers is None:
                continue  # read by something that is not its dequantizer: leave it as written
            q.inputs[2] = gs.Constant(q.name + "_zero_point_u8", _shifted(_const(q.inputs[2])))
            for node in readers:
                if node.op == "Clip":
                    for k in (1, 2):
                        node.inputs[k] = gs.Constant(f"{node.name}_bound{k}_u8", _shifted(_const(node.inputs[k])))
                else:
                    node.inputs[2] = gs.Constant(node.name + "_zero_point_u8", _shifted(_const(node.inputs[2])))
            changed = True
        if not changed:
            return model, False
        graph.cleanup()
        return ModelWrapper(gs.export_onnx(graph)), False


def _readers(q: gs.Node) -> list[gs.Node] | None:
    """Q's DequantizeLinear readers (through at most one Clip each), with constant int8 parameters; else None."""
    found = []
    for node in q.outputs[0].outputs:
        if node.op == "Clip":
            if any(_const(node.inputs[k]) is None or _const(node.inputs[k]).dtype != np.int8 for k in (1, 2)):
                return None
            found.append(node)
            nexts = node.outputs[0].outputs
        else:
            nexts = [node]
        for dq in nexts:
            if dq.op != "DequantizeLinear" or len(dq.inputs) < 3:
                return None
            zp = _const(dq.inputs[2])
            if zp is None or zp.dtype != np.int8:
                return None
            found.append(dq)
    return found or None
