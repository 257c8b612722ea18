"""ONNX Runtime on the CPU, with its default graph optimizations on (as users run it)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime


def session(model: onnx.ModelProto):
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # Brevitas keeps initializers among graph inputs; ORT warns per tensor
    sess = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    iname = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {iname: x})[0]

    return run
