"""Minimal reproducers of the hls4ml 1.3.0 / qonnx 1.0.0 problems that infoq-deploy's QONNX export
works around (infoq_deploy/export/passes/). Each case builds a tiny Brevitas model, exports it
to QONNX, runs hls4ml's documented QONNX flow on it and prints what happens.

    python docs/upstream/repro.py [case ...]     # gap final_flatten matmul_scale conv_bias dw_batchnorm maxpool_pad

Needs brevitas, qonnx, hls4ml==1.3.0 and g++; nothing from infoq-deploy.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import traceback
import warnings

import brevitas.nn as qnn
import numpy as np
import torch
from brevitas.export import export_qonnx
from brevitas.quant import Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint, Int32Bias
from brevitas.quant import Uint8ActPerTensorFixedPoint
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
from qonnx.transformation.gemm_to_matmul import GemmToMatMul
from qonnx.util.cleanup import cleanup_model
from torch import nn

torch.manual_seed(0)
# per-output-channel power-of-two weight scales, as FPGA flows want them
Int8WeightPerChannelFixedPoint = Int8WeightPerTensorFixedPoint.let(scaling_per_output_channel=True)


def conv(c_in, c_out, per_channel=True, bias=False):
    quant = Int8WeightPerChannelFixedPoint if per_channel else Int8WeightPerTensorFixedPoint
    return qnn.QuantConv2d(c_in, c_out, 3, padding=1, bias=bias, weight_quant=quant)


class Gap(nn.Module):
    """conv -> relu -> global average pool -> linear: hls4ml reads the pool in the wrong layout."""

    def __init__(self):
        super().__init__()
        self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint)
        self.conv = conv(3, 8, per_channel=False)
        self.relu = qnn.QuantReLU(act_quant=Uint8ActPerTensorFixedPoint)
        self.fc = qnn.QuantLinear(8, 4, bias=False, weight_quant=Int8WeightPerTensorFixedPoint)

    def forward(self, x):
        x = self.relu(self.conv(self.inp(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class FinalFlatten(nn.Module):
    """A flatten that writes the graph output: hls4ml's io_stream ReshapeStream pass raises KeyError."""

    def __init__(self):
        super().__init__()
        self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint)
        self.conv = qnn.QuantConv2d(3, 4, 4, bias=False, weight_quant=Int8WeightPerTensorFixedPoint)

    def forward(self, x):
        return torch.flatten(self.conv(self.inp(x)), 1)


class MatMulScale(nn.Module):
    """A linear layer with per-output-channel weight scales: ScaleDownMatMul gives up."""

    def __init__(self):
        super().__init__()
        self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint)
        self.fc = qnn.QuantLinear(16, 4, bias=False, weight_quant=Int8WeightPerChannelFixedPoint)
        with torch.no_grad():  # output channels of different ranges: different power-of-two scales
            self.fc.weight.mul_(torch.tensor([1.0, 0.5, 0.25, 0.125])[:, None])

    def forward(self, x):
        return self.fc(self.inp(x))


class ConvBias(nn.Module):
    """Per-channel weight scales and a bias (any conv with BatchNorm folded in): not propagated."""

    def __init__(self):
        super().__init__()
        self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, return_quant_tensor=True)
        self.conv = qnn.QuantConv2d(3, 8, 3, padding=1, bias=True, weight_quant=Int8WeightPerChannelFixedPoint,
                                    bias_quant=Int32Bias)
        with torch.no_grad():
            self.conv.weight.mul_(2.0 ** -torch.arange(8.0)[:, None, None, None])

    def forward(self, x):
        return self.conv(self.inp(x))


class DepthwiseBatchNorm(nn.Module):
    """A depthwise conv (per-channel scales, no bias) then BatchNorm: FuseBatchNormalization breaks."""

    def __init__(self):
        super().__init__()
        self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint)
        self.conv = qnn.QuantConv2d(8, 8, 3, padding=1, groups=8, bias=False, weight_quant=Int8WeightPerChannelFixedPoint)
        self.bn = nn.BatchNorm2d(8)
        with torch.no_grad():
            self.conv.weight.mul_(2.0 ** -torch.arange(8.0)[:, None, None, None])

    def forward(self, x):
        return self.bn(self.conv(self.inp(x)))


class PaddedMaxPool(nn.Module):
    """ReLU then a padded max pool (ResNet's stem): the io_stream C simulation aborts on an assertion."""

    def __init__(self):
        super().__init__()
        self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint)
        self.conv = conv(3, 8, per_channel=False)
        self.relu = qnn.QuantReLU(act_quant=Uint8ActPerTensorFixedPoint)

    def forward(self, x):
        return nn.functional.max_pool2d(self.relu(self.conv(self.inp(x))), 3, 2, 1)


CASES = {"gap": (Gap, (1, 3, 8, 8)), "final_flatten": (FinalFlatten, (1, 3, 4, 4)),
         "matmul_scale": (MatMulScale, (1, 16)), "conv_bias": (ConvBias, (1, 3, 8, 8)),
         "dw_batchnorm": (DepthwiseBatchNorm, (1, 8, 8, 8)), "maxpool_pad": (PaddedMaxPool, (1, 3, 8, 8))}


def run(case: str) -> None:
    import hls4ml

    cls, shape = CASES[case]
    model = cls().eval()
    x = torch.randn(shape)
    with torch.no_grad():
        model(x)  # initialise the activation scales
    path = tempfile.mktemp(suffix=".onnx")
    export_qonnx(model, x, export_path=path, dynamo=False, opset_version=13)
    wrapped = cleanup_model(ModelWrapper(path))
    wrapped = wrapped.transform(ConvertToChannelsLastAndClean())
    wrapped = cleanup_model(wrapped.transform(GemmToMatMul()))
    iname, oname = wrapped.graph.input[0].name, wrapped.graph.output[0].name
    xs = np.random.default_rng(0).standard_normal((4, *shape[1:])).astype(np.float32)
    try:
        ref = np.concatenate([execute_onnx(wrapped, {iname: xs[i:i + 1]})[oname] for i in range(len(xs))])
    except Exception as exc:
        print(f"{case}: qonnx cannot run its own channels-last graph: {type(exc).__name__}: {str(exc)[:200]}")
        return
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            config = hls4ml.utils.config.config_from_onnx_model(wrapped, granularity="name", backend="Vitis",
                                                                default_precision="fixed<32,16>")
            hls_model = hls4ml.converters.convert_from_onnx_model(
                wrapped, output_dir=tempfile.mkdtemp(), io_type="io_stream", backend="Vitis", hls_config=config)
            hls_model.compile()
        for w in caught:
            if "propagate" in str(w.message):
                print(f"{case}: hls4ml warns: {w.message}")
    except Exception as exc:
        last = traceback.extract_tb(exc.__traceback__)[-1]
        print(f"{case}: hls4ml fails: {type(exc).__name__}: {str(exc)[:200]} ({last.filename.split('site-packages/')[-1]}:{last.lineno})")
        return
    out = np.asarray(hls_model.predict(np.ascontiguousarray(xs))).reshape(ref.shape)
    print(f"{case}: hls4ml C simulation vs qonnx: max |diff| {np.abs(out - ref).max():.4g} (outputs up to {np.abs(ref).max():.3g})")


if __name__ == "__main__":
    for case in sys.argv[1:] or CASES:
        sys.stdout.flush()
        run(case)  # maxpool_pad aborts the interpreter from inside the C simulation: it runs last
