"""QONNX: Brevitas ``Quant`` nodes of any width, in qonnx's cleaned form (FINN, hls4ml).

FINN and hls4ml start from qonnx's cleaned form (shapes inferred, constants folded, names
made unique), so that is the file we ship.
"""

from __future__ import annotations

from brevitas.export import export_qonnx
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.util.cleanup import cleanup_model

from infoq_deploy.export.graph import OnnxGraph

BACKEND = "qonnx"
QUANT_OP = "Quant"
ONNX_OPSET = 13


def check(qmodel) -> None:
    """QONNX expresses every width the quantizers take."""


def write(qmodel, example, path) -> None:
    export_qonnx(qmodel, example, export_path=str(path), dynamo=False, opset_version=ONNX_OPSET)
    cleanup_model(ModelWrapper(str(path))).save(str(path))


def quant_bits(g: OnnxGraph, qnode) -> int | str:
    bw = g.const(qnode.input[3])
    return int(bw) if bw is not None else "Quant node with a non-constant bit width"

