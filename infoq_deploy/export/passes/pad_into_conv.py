"""Fold a zero Pad in front of a convolution's input quantizer into the convolution's own pads.

ONNX Runtime (QCDQ): EfficientNet's "same" padding is exported as ``Clip -> Pad -> QuantizeLinear
-> DequantizeLinear -> Conv``; the Pad between the producing convolution's activation and its
output quantizer keeps ORT from fusing that convolution into an integer kernel, and the
padding itself runs in float. Zero padding commutes with quantization (0 quantizes to the
zero point and dequantizes back to exactly 0), so ``x -> Pad -> Q -> DQ -> Conv`` equals
``x -> Q -> DQ -> Conv(pads + Pad's pads)``: the rewrite is exact.

Written with onnx-graphsurgeon; the pads are folded to constants first, with the quantizer
nodes excluded so that integer weights stay integer.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation

_KEEP = {"QuantizeLinear", "DequantizeLinear", "Clip"}


def _zero_spatial_pads(pad: gs.Node) -> list[int] | None:
    """The Pad's spatial pads [h_begin, w_begin, ..., h_end, w_end], or None if it is not a plain zero pad."""
    if pad.attrs.get("mode", "constant") not in ("constant", b"constant"):
        return None
    if len(pad.inputs) < 2 or not isinstance(pad.inputs[1], gs.Constant):
        return None
    if len(pad.inputs) > 2 and pad.inputs[2].name:
        value = pad.inputs[2]
        if not isinstance(value, gs.Constant) or np.any(value.values != 0):
            return None
    if len(pad.inputs) > 3 and pad.inputs[3].name:
        return None  # explicit axes: not the layout below
    pads = [int(p) for p in np.asarray(pad.inputs[1].values).reshape(-1)]
    rank = len(pads) // 2
    if rank < 3 or any(p < 0 for p in pads):
        return None
    begin, end = pads[:rank], pads[rank:]
    if begin[:2] != [0, 0] or end[:2] != [0, 0]:
        return None  # batch or channel padding is not a convolution's
    return begin[2:] + end[2:]


def _convs_behind(q: gs.Node) -> list[gs.Node] | None:
    """The convolutions reading Q's output through DequantizeLinear (and nothing else), or None."""
    convs = []
    for dq in q.outputs[0].outputs:
        if dq.op != "DequantizeLinear":
            return None
        for conv in dq.outputs[0].outputs:
            if conv.op != "Conv" or conv.inputs[0] is not dq.outputs[0]:
                return None
            if conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
                return None
            convs.append(conv)
    return convs or None


class PadIntoConv(Transformation):
    def apply(self, model: ModelWrapper):
        graph = gs.import_onnx(model.model)
        graph.fold_constants(should_exclude_node=lambda n: n.op in _KEEP).cleanup()
        changed = False
        for pad in [n for n in graph.nodes if n.op == "Pad"]:
            x, padded = pad.inputs[0], pad.outputs[0]
            readers = padded.outputs
            if len(readers) != 1 or readers[0].op != "QuantizeLinear":
                continue
            q = readers[0]
            spatial = _zero_spatial_pads(pad)
            convs = _convs_behind(q)
            if spatial is None or convs is None:
                continue
            for conv in convs:
                k = len(spatial) // 2
                own = list(conv.attrs.get("pads", [0] * (2 * k)))
                conv.attrs["pads"] = [a + b for a, b in zip(own, spatial)]
            q.inputs[0] = x
            pad.outputs.clear()
            changed = True
        if not changed:
            return model, False
        graph.cleanup().toposort()
        return ModelWrapper(gs.export_onnx(graph)), False
