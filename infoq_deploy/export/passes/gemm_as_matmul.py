"""Write each Gemm as MatMul (+ Add of its bias), with per-column weight scales as a 1-D vector.

hls4ml's flow runs qonnx's GemmToMatMul itself, which leaves a per-output-channel weight
scale of shape (1, N); hls4ml 1.3's ScaleDownMatMul then cannot broadcast it onto the
(N,) output (batch dimension dropped) and gives up, leaving the weights unconverted
(docs/upstream/). The same MatMul with a (N,) scale is equivalent ONNX, and both flows take
it; the documented flow's own GemmToMatMul then has nothing left to do.
"""

from __future__ import annotations

import warnings

from qonnx.transformation.base import Transformation
from qonnx.transformation.gemm_to_matmul import GemmToMatMul
from qonnx.util.cleanup import cleanup_model


class GemmAsMatMul(Transformation):
    def apply(self, model):
        if not any(n.op_type == "Gemm" for n in model.graph.node):
            return model, False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # written for Gemm opset 9; ours uses nothing newer
            model = model.transform(GemmToMatMul())
        model = cleanup_model(model)  # folds GemmToMatMul's weight Transpose into the Quant node
        for node in model.graph.node:
            if node.op_type != "MatMul":
                continue
            quant = model.find_producer(node.input[1])
            if quant is None or quant.op_type != "Quant":
                continue
            for param in quant.input[1:3]:
                value = model.get_initializer(param)
                if value is not None and value.ndim == 2 and value.shape[0] == 1:
                    model.set_initializer(param, value.reshape(-1))
        return model, False
