"""Move a DequantizeLinear past the Slice and zero Pad of an option-A shortcut (QCDQ, for ONNX Runtime).

CIFAR ResNets' option-A shortcut, ``x[:, :, ::2, ::2]`` and a channel pad with zeros, is
exported as ``Q -> DQ -> Slice -> Slice -> Pad -> Add``: the add then reads a float tensor that
no DequantizeLinear produces, so ORT cannot make it a QLinearAdd (two of ResNet-20's nine adds
stayed float). Slicing commutes with dequantization, and padding with 0 is padding the
integers with the zero point (it dequantizes to exactly 0), so the rewrite
``Q -> Slice -> Slice -> Pad(zero point) -> DQ -> Add`` is exact; ORT slices and pads the
uint8 tensor and fuses the add. Per-tensor quantizers only: a per-channel scale would need
slicing too.

Written with onnx-graphsurgeon, after `activations_as_uint8.py` (the zero point is final then).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation

_MOVES = ("Slice", "Pad")


def _const(value) -> np.ndarray | None:
    return value.values if isinstance(value, gs.Constant) else None


def _zero_pad(node: gs.Node) -> bool:
    if node.attrs.get("mode", "constant") not in ("constant", b"constant"):
        return False
    if len(node.inputs) > 2 and node.inputs[2].name:
        value = _const(node.inputs[2])
        return value is not None and bool(np.all(value == 0))
    return len(node.inputs) < 4 or not node.inputs[3].name  # no explicit axes either


def _chain(first: gs.Node) -> list[gs.Node]:
    """``first`` and the Slice / zero-Pad nodes that alone read it, one after another."""
    chain, tensor = [first], first.outputs[0]
    while len(tensor.outputs) == 1 and tensor.outputs[0].op in _MOVES:
        node = tensor.outputs[0]
        if node.inputs[0] is not tensor or (node.op == "Pad" and not _zero_pad(node)):
            break
        chain.append(node)
        tensor = node.outputs[0]
    return chain


class DequantizeAfterShortcut(Transformation):
    def apply(self, model: ModelWrapper):
        graph = gs.import_onnx(model.model)
        changed = False
        for dq in [n for n in graph.nodes if n.op == "DequantizeLinear"]:
            scale, zero = _const(dq.inputs[1]), _const(dq.inputs[2]) if len(dq.inputs) > 2 else None
            if scale is None or zero is None or scale.size != 1 or zero.size != 1:
                continue
            # each Slice / zero Pad branch off the dequantized tensor (the block's conv reads it too)
            starts = [n for n in dq.outputs[0].outputs if n.op in _MOVES and n.inputs[0] is dq.outputs[0]
                      and (n.op != "Pad" or _zero_pad(n))]
            for k, first in enumerate(starts):
                chain = _chain(first)
                first.inputs[0] = dq.inputs[0]  # the integers go through the chain
                for node in chain:
                    if node.op == "Pad":
                        while len(node.inputs) < 3:
                            node.inputs.append(gs.Variable.empty())
                        node.inputs[2] = gs.Constant(f"{node.name}_zero_point",
                                                     np.asarray(zero.reshape(()), dtype=zero.dtype))
                    node.outputs[0].dtype = zero.dtype
                last = chain[-1].outputs[0]
                out = gs.Variable(f"{dq.name}_after_shortcut_{k}", dtype=np.float32)
                for reader in list(last.outputs):
                    for j, inp in enumerate(reader.inputs):
                        if inp is last:
                            reader.inputs[j] = out
                graph.outputs = [out if o is last else o for o in graph.outputs]
                graph.nodes.append(gs.Node("DequantizeLinear", f"{dq.name}_after_shortcut_{k}",
                                           inputs=[last, dq.inputs[1], dq.inputs[2]], outputs=[out]))
                changed = True
        if not changed:
            return model, False
        graph.cleanup().toposort()
        return ModelWrapper(gs.export_onnx(graph)), False
