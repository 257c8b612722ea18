"""qonnx's reference executor: runs QONNX (and plain ONNX) node by node in Python."""

from __future__ import annotations

import numpy as np
import onnx
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.util.cleanup import cleanup_model

from infoq_deploy.export.qonnx_linear import linear_time


def session(model: onnx.ModelProto):
    # qonnx's cleanup and its executor's shape check scan the whole graph per tensor
    # (export/qonnx_linear.py)
    with linear_time():
        wrapped = cleanup_model(ModelWrapper(model))
    iname, oname = wrapped.graph.input[0].name, wrapped.graph.output[0].name

    def run(x: np.ndarray) -> np.ndarray:
        with linear_time():
            return execute_onnx(wrapped, {iname: x})[oname]

    return run
