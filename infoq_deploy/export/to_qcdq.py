"""QCDQ: standard ONNX, int8/uint8 QuantizeLinear -> Clip (narrower ranges) -> DequantizeLinear.

It expresses at most 8 bits and runs in ONNX Runtime, which fuses the pairs into integer
kernels. Opset 13 is the lowest with per-channel (``axis``) QuantizeLinear/DequantizeLinear.
"""

from __future__ import annotations

import numpy as np
from brevitas.export import export_onnx_qcdq

from infoq_deploy.core.errors import UserError
from infoq_deploy.core.quantizer import FLOAT_BITS
from qonnx.core.modelwrapper import ModelWrapper

from infoq_deploy.export.graph import OnnxGraph, bits_from_range
from infoq_deploy.export.passes.activations_as_uint8 import ActivationsAsUint8
from infoq_deploy.export.passes.dequantize_after_shortcut import DequantizeAfterShortcut
from infoq_deploy.export.passes.merge_duplicates import MergeDuplicateNodes
from infoq_deploy.export.passes.pad_into_conv import PadIntoConv
from infoq_deploy.quantize.brevitas_model import BIAS_GRID_STEPS, bias_steps, read_bits, read_join_quantizers

BACKEND = "ort"
CONSUMERS = ()  # ONNX Runtime is BACKEND itself
PIPELINE_CONSUMERS = ()
QUANT_OP = "DequantizeLinear"
ONNX_OPSET = 13
MAX_BITS = 8
# a bias beyond BIAS_GRID_STEPS of its grid stops Brevitas's export (quantize/brevitas_model.py)


def check(qmodel) -> None:
    for name, (w_bits, a_bits) in read_bits(qmodel).items():
        for what, bits in (("weights", w_bits), ("input activations", a_bits)):
            if MAX_BITS < bits < FLOAT_BITS:
                raise UserError(
                    f"layer {name} has {bits}-bit {what} but QCDQ (ONNX Runtime) expresses at most "
                    f"{MAX_BITS} bits; allocate at most {MAX_BITS} bits or {FLOAT_BITS} (float), "
                    "or export to qonnx"
                )
    for name, (steps, step) in bias_steps(qmodel).items():
        if steps > BIAS_GRID_STEPS:
            raise UserError(
                f"layer {name}'s bias is {steps:.3g} steps of its 32-bit grid (input scale x weight scale, "
                f"down to {step:.3g}), more than the 2^20 that QCDQ's export can write exactly: the layer's "
                "input, or a channel's weights, is nearly zero, as in an untrained (random-weight) model; "
                "quantize a trained model, or allocate that layer float (32 bits)"
            )
    for name, bits in read_join_quantizers(qmodel).items():
        if bits > MAX_BITS:
            raise UserError(
                f"the add/concat quantizer {name} has {bits} bits but QCDQ expresses at most "
                f"{MAX_BITS}; build with join_bits <= {MAX_BITS} or export to qonnx"
            )


# in order: one quantizer per tensor (Brevitas exports a tensor shared by a layer and a
# residual add twice), then the two rewrites ORT needs to fuse every int8 layer (each says why)
PASSES = (MergeDuplicateNodes, PadIntoConv, ActivationsAsUint8, DequantizeAfterShortcut)


def write(qmodel, example, path) -> None:
    export_onnx_qcdq(qmodel, example, export_path=str(path), dynamo=False, opset_version=ONNX_OPSET)
    model = ModelWrapper(str(path))
    for rewrite in PASSES:
        model = model.transform(rewrite())
    model.save(str(path))


# integer ops a DequantizeLinear may follow (export/passes/dequantize_after_shortcut.py): the
# levels are those of the Clip or QuantizeLinear in front of them
_INTEGER_GRID_OPS = ("Slice", "Pad", "Reshape", "Flatten", "Transpose", "Identity", "MaxPool")


def quant_bits(g: OnnxGraph, qnode) -> int | str:
    inner = g.producer.get(qnode.input[0])
    while inner is not None and inner.op_type in _INTEGER_GRID_OPS:
        inner = g.producer.get(inner.input[0])
    zp = g.const(qnode.input[2]) if len(qnode.input) > 2 else None
    if inner is not None and inner.op_type == "Clip":
        lo, hi = g.const(inner.input[1]), g.const(inner.input[2])
        if lo is None or hi is None:
            return "Clip with non-constant bounds"
        # the levels around the zero point (a signed activation is stored as uint8 around 128)
        offset = int(zp.reshape(-1)[0]) if zp is not None and zp.size and np.all(zp == zp.reshape(-1)[0]) else 0
        lo, hi = int(lo) - offset, int(hi) - offset
        bits = bits_from_range(lo, hi)
        return bits if bits is not None else f"Clip range [{lo}, {hi}] around the zero point is not a b-bit range"
    if zp is not None and zp.dtype in (np.int8, np.uint8):
        return 8  # plain int8/uint8 QuantizeLinear, no Clip
    return f"DequantizeLinear with zero point type {None if zp is None else zp.dtype}"

