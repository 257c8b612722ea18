"""qonnx's reference executor: runs QONNX (and plain ONNX) node by node in Python."""

from __future__ import annotations

import numpy as np
import onnx
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.util.cleanup import cleanup_model


def session(model: onnx.ModelProto):
    wrapped = cleanup_model(ModelWrapper(model))
    iname, oname = wrapped.graph.input[0].name, wrapped.graph.output[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return execute_onnx(wrapped, {iname: x})[oname]

    return run
