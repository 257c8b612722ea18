"""hls4ml's C simulation: the FPGA flow's own reading of a QONNX file, compiled with g++.

The documented hls4ml 1.3 QONNX flow, unchanged: qonnx cleanup, ``ConvertToChannelsLastAndClean``,
``GemmToMatMul``, cleanup, ``config_from_onnx_model(granularity='name')``,
``convert_from_onnx_model`` (Vitis back end, ``io_stream``), ``compile``, ``predict``. Two
settings of that config are ours, and neither edits the graph:

- ``default_precision``: wide enough that every value is exact. Fractional bits: the finest
  step in the graph (an accumulator's step is its input scale times its finest weight
  scale; all scales are powers of two on fpga-int). Integer bits: the largest accumulator
  the quantizers allow (max over output channels of sum |integer weight| times the input
  quantizer's largest value), plus sign and bias headroom.
- every Conv/MatMul gets that type as its explicit result precision: with an 'auto' result,
  hls4ml's FuseBatchNormalization multiplies a BatchNormalization scale broadcast to the
  full output shape into the conv weights and fails (docs/upstream/hls4ml-fuse-batchnorm.md).

Values that are not fixed point in the file (the average pool's division by H*W) are
rounded by hls4ml's types, so a mean that lands exactly half-way between two levels of the
next quantizer can round the other way (qonnx rounds half to even): the check in
`verify/consumer.py` states that tolerance instead of claiming bit-exactness.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import shutil
import tempfile
import warnings
import weakref

import numpy as np
import onnx

from infoq_deploy.core.errors import ConsumerRefused

MAX_WIDTH = 64  # ap_fixed wider than this makes the C simulation much slower for no model we ship
DIV_FRACTION_BITS = 24
INPUT_PRECISION = "fixed<32,8,RND_CONV,SAT>"  # 24 fractional bits: a float32 input of magnitude >= 1/4 exactly


def unavailable() -> str | None:
    """Why this back end cannot run here (None: it can)."""
    if importlib.util.find_spec("hls4ml") is None:
        return "hls4ml is not installed (pip install -e '.[fpga]')"
    if shutil.which("g++") is None:
        return "g++ is not installed (apt-get install g++), and hls4ml's C simulation compiles with it"
    return None


def prepare(model: onnx.ModelProto):
    """The documented hls4ml QONNX front-end steps on ``model``: the graph hls4ml converts."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.util.cleanup import cleanup_model

    with warnings.catch_warnings():
        # GemmToMatMul warns that it was written for Gemm opset 9; our Gemm uses nothing newer
        warnings.simplefilter("ignore", UserWarning)
        wrapped = cleanup_model(ModelWrapper(model))
        wrapped = wrapped.transform(ConvertToChannelsLastAndClean())
        wrapped = wrapped.transform(GemmToMatMul())
        return cleanup_model(wrapped)


def _quant_params(wrapped, node):
    scale = wrapped.get_initializer(node.input[1])
    bits = wrapped.get_initializer(node.input[3])
    attrs = {a.name: a.i for a in node.attribute if a.name in ("signed", "narrow")}
    return scale, bits, bool(attrs.get("signed", 1))


def exact_precision(wrapped) -> tuple[int, int]:
    """(width, integer bits) of an ap_fixed that holds every value of the graph exactly."""
    frac, top = 0, 1.0
    quant_of = {n.output[0]: n for n in wrapped.graph.node if n.op_type == "Quant"}
    for node in wrapped.graph.node:
        if node.op_type == "Quant":
            scale, bits, signed = _quant_params(wrapped, node)
            if scale is None or bits is None:
                continue
            frac = max(frac, int(math.ceil(-math.log2(float(np.min(scale))))))
            top = max(top, float(np.max(scale)) * 2 ** (float(np.max(bits)) - (1 if signed else 0)))
        elif node.op_type in ("Conv", "MatMul"):
            wq, xq = quant_of.get(node.input[1]), quant_of.get(node.input[0])
            if wq is None or xq is None:
                continue
            w, (ws, _, _), (xs, xbits, xsigned) = wrapped.get_initializer(wq.input[0]), _quant_params(wrapped, wq), _quant_params(wrapped, xq)
            if w is None or ws is None or xs is None or xbits is None:
                continue
            w_int = np.abs(np.round(w / ws))
            per_out = w_int.sum(axis=tuple(range(1, w.ndim))) if node.op_type == "Conv" else w_int.sum(axis=0)
            x_max = float(np.max(xs)) * (2 ** float(np.max(xbits)) - 1)
            top = max(top, float(per_out.max()) * x_max)
            frac = max(frac, int(math.ceil(-math.log2(float(np.min(ws)) * float(np.min(xs))))))
        elif node.op_type == "Div":
            # hls4ml multiplies by the reciprocal, held in the default type: give it float32's
            # 24 bits so that only an exact half-way mean can round differently
            frac = max(frac, DIV_FRACTION_BITS)
    integer = int(math.ceil(math.log2(top))) + 3  # sign, bias add, rounding headroom
    return min(MAX_WIDTH, integer + frac), integer


def session(model: onnx.ModelProto):
    import hls4ml

    reason = unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    wrapped = prepare(model)
    width, integer = exact_precision(wrapped)
    precision = f"fixed<{width},{integer}>"
    workdir = tempfile.mkdtemp(prefix="infoq-hls4ml-")
    log = io.StringIO()  # hls4ml prints its topology and progress; kept for the error message
    try:
        with contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # hls4ml's notes on passes it skips
            config = hls4ml.utils.config.config_from_onnx_model(
                wrapped, granularity="name", backend="Vitis", default_precision=precision
            )
            for name, layer in config["LayerName"].items():
                if name.startswith(("Conv", "MatMul")):
                    layer.setdefault("Precision", {})["result"] = precision
            # the float input, kept to float32's resolution (and saturated, not wrapped) until
            # the first quantizer rounds it, as qonnx does
            config["LayerName"][wrapped.graph.input[0].name]["Precision"]["result"] = INPUT_PRECISION
            hls_model = hls4ml.converters.convert_from_onnx_model(
                wrapped, output_dir=workdir, io_type="io_stream", backend="Vitis", hls_config=config
            )
            hls_model.compile()
    except Exception as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        raise ConsumerRefused(f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]) from exc
    in_shape = tuple(wrapped.get_tensor_shape(wrapped.graph.input[0].name))

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), *in_shape[1:])
        return np.asarray(hls_model.predict(x), dtype=np.float32).reshape(len(x), -1)

    run.precision = precision
    weakref.finalize(run, shutil.rmtree, workdir, True)
    return run
