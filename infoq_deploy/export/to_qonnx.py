"""QONNX: Brevitas ``Quant`` nodes of any width, in qonnx's cleaned form (FINN, hls4ml).

FINN and hls4ml start from qonnx's cleaned form (shapes inferred, constants folded, names
made unique), so that is the file we ship, after the rewrites in `export/passes/` that put
it in the form both flows take unedited (each pass says which flow needs it and why).
"""

from __future__ import annotations

from brevitas.export import export_qonnx
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.general import RemoveUnusedTensors
from qonnx.transformation.remove import RemoveUnusedNodes
from qonnx.util.cleanup import cleanup_model

from infoq_deploy.export.graph import OnnxGraph
from infoq_deploy.export.qonnx_linear import linear_time
from infoq_deploy.export.passes.bias_to_batchnorm import BiasToBatchNorm
from infoq_deploy.export.passes.fold_constants import FoldConstantsOnce
from infoq_deploy.export.passes.gemm_as_matmul import GemmAsMatMul
from infoq_deploy.export.passes.gap_to_sum_conv import GlobalAveragePoolToSumConv
from infoq_deploy.export.passes.linear_as_conv import LinearAsConv
from infoq_deploy.export.passes.merge_duplicates import MergeDuplicateNodes
from infoq_deploy.export.passes.quant_before_flatten import QuantBeforeFlatten
from infoq_deploy.export.passes.quant_before_maxpool import QuantBeforeMaxPool
from infoq_deploy.export.passes.quant_on_grid import QuantOnGrid
from infoq_deploy.export.passes.shortcut_to_conv import ShortcutToConv

BACKEND = "qonnx"
# the same arithmetic in one ONNX Runtime session (backends/qonnx_ort.py): verify runs every
# input there and checks a sample against qonnx's executor, which is minutes per batch on ImageNet models
FAST_BACKEND = "qonnx-ort"
CONSUMERS = ("hls4ml", "finn")
# FINN reproduces the file bit for bit too (backends/finn_rounding.py), but its conversion
# takes minutes on a ResNet (222 s on ResNet-20, bench/results/fpga_consumers_finn.json): on request
PIPELINE_CONSUMERS = ("hls4ml",)
QUANT_OP = "Quant"
ONNX_OPSET = 13


def check(qmodel) -> None:
    """QONNX expresses every width the quantizers take."""


# in order: one quantizer per tensor first, so the later passes see the shared form
PASSES = (MergeDuplicateNodes, ShortcutToConv, GlobalAveragePoolToSumConv, QuantBeforeFlatten, LinearAsConv, BiasToBatchNorm, GemmAsMatMul,
          QuantBeforeMaxPool, QuantOnGrid)


def write(qmodel, example, path) -> None:
    export_qonnx(qmodel, example, export_path=str(path), dynamo=False, opset_version=ONNX_OPSET)
    with linear_time():  # qonnx's helpers scan the whole graph per tensor (export/qonnx_linear.py)
        # our one-pass folder first: qonnx's, inside cleanup_model, folds a node per call (passes/fold_constants.py)
        model = cleanup_model(ModelWrapper(str(path)).transform(FoldConstantsOnce()))
        for rewrite in PASSES:
            model = model.transform(rewrite())
        # the bias Quant nodes the passes left behind, and the tensors only they read
        model = model.transform(RemoveUnusedNodes()).transform(RemoveUnusedTensors())
        cleanup_model(model).save(str(path))


def quant_bits(g: OnnxGraph, qnode) -> int | str:
    bw = g.const(qnode.input[3])
    return int(bw) if bw is not None else "Quant node with a non-constant bit width"

