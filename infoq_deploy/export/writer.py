"""Export a calibrated Brevitas model to QONNX (FINN / hls4ml) or QCDQ ONNX (ONNX Runtime).

Both go through Brevitas's TorchScript-based ONNX export (``dynamo=False``): it writes one
self-contained file (the dynamo path writes weights to a side ``.data`` file, which an
atomic single-file write cannot cover) and keeps integer weights in QCDQ. Opset 13 is the
lowest with per-channel (``axis``) QuantizeLinear/DequantizeLinear and runs in ONNX
Runtime 1.32 and in qonnx's executor.

QCDQ is standard ONNX: int8/uint8 QuantizeLinear -> Clip (narrower ranges) ->
DequantizeLinear. It expresses at most 8 bits; QONNX ``Quant`` nodes carry any width.
"""

from __future__ import annotations

import os
import warnings

import torch
from brevitas.export import export_onnx_qcdq, export_qonnx
from torch import nn

from infoq_deploy.core.atomic import atomic_path
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.quantizer import FLOAT_BITS
from infoq_deploy.quantize.brevitas_model import clear_act_caches, is_calibrated, read_bits, read_join_quantizers

FORMATS = ("qonnx", "qcdq")
ONNX_OPSET = 13
QCDQ_MAX_BITS = 8


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")


def check_exportable(qmodel: nn.Module, fmt: str) -> None:
    """Raise UserError when ``qmodel`` cannot be written in ``fmt``."""
    check_format(fmt)
    if not is_calibrated(qmodel):
        raise UserError("the quantized model has not been calibrated; run calibrate(qmodel, x) before exporting")
    if fmt != "qcdq":
        return
    for name, (w_bits, a_bits) in read_bits(qmodel).items():
        for what, bits in (("weights", w_bits), ("input activations", a_bits)):
            if QCDQ_MAX_BITS < bits < FLOAT_BITS:
                raise UserError(
                    f"layer {name} has {bits}-bit {what} but QCDQ (ONNX Runtime) expresses at most "
                    f"{QCDQ_MAX_BITS} bits; allocate at most {QCDQ_MAX_BITS} bits or {FLOAT_BITS} (float), "
                    "or export to qonnx"
                )
    for name, bits in read_join_quantizers(qmodel).items():
        if bits > QCDQ_MAX_BITS:
            raise UserError(
                f"the add/concat quantizer {name} has {bits} bits but QCDQ expresses at most "
                f"{QCDQ_MAX_BITS}; build with join_bits <= {QCDQ_MAX_BITS} or export to qonnx"
            )


def export_model(qmodel: nn.Module, example: torch.Tensor, fmt: str, path: str | os.PathLike) -> None:
    """Write ``qmodel`` traced on ``example`` (its batch size is baked in) to ``path`` atomically."""
    check_exportable(qmodel, fmt)
    export = export_qonnx if fmt == "qonnx" else export_onnx_qcdq
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings():
            # the tracer's and Brevitas's export warnings are about tracing internals, not the model
            warnings.simplefilter("ignore")
            export(qmodel, example, export_path=str(tmp), dynamo=False, opset_version=ONNX_OPSET)
            if fmt == "qonnx":
                # FINN and hls4ml start from qonnx's cleaned form (shapes inferred, constants
                # folded, names made unique), so that is the file we ship.
                from qonnx.core.modelwrapper import ModelWrapper
                from qonnx.util.cleanup import cleanup_model

                cleanup_model(ModelWrapper(str(tmp))).save(str(tmp))
    finally:
        clear_act_caches(qmodel)  # else scale() keeps answering the exported value after training
