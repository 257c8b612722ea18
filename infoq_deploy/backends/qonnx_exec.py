"""qonnx's reference executor: runs QONNX (and plain ONNX) node by node in Python."""

from __future__ import annotations

import numpy as np
import onnx
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.util.cleanup import cleanup_model

from infoq_deploy.export.linear_shape_check import linear_shape_check


def session(model: onnx.ModelProto):
    # qonnx checks every tensor's shape when it wraps a model and on every run, in time quadratic
    # in the graph's size (export/linear_shape_check.py)
    with linear_shape_check():
        wrapped = cleanup_model(ModelWrapper(model))
    iname, oname = wrapped.graph.input[0].name, wrapped.graph.output[0].name

    def run(x: np.ndarray) -> np.ndarray:
        with linear_shape_check():
            return execute_onnx(wrapped, {iname: x})[oname]

    return run
