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
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import onnx

from infoq_deploy.core.errors import ConsumerRefused, ConsumerTimeout

MAX_WIDTH = 64  # ap_fixed wider than this makes the C simulation much slower for no model we ship
DIV_FRACTION_BITS = 24
# measured on this project's machine (one core, ap_fixed of 41-46 bits, io_stream): 35 ns per
# multiply-accumulate on ResNet-20, 48 ns on the small default model, whose per-layer overhead
# weighs more (bench/results/fpga_consumers.json)
SECONDS_PER_MAC = 35e-9
REFUSED_MARK = "infoq-hls4ml-refused: "
INPUT_PRECISION = "fixed<32,8,RND_CONV,SAT>"  # 24 fractional bits: a float32 input of magnitude >= 1/4 exactly


def unavailable() -> str | None:
    """Why this back end cannot run here (None: it can)."""
    if importlib.util.find_spec("hls4ml") is None:
        return "hls4ml is not installed (pip install -e '.[fpga]')"
    if shutil.which("g++") is None:
        return "g++ is not installed (apt-get install g++), and hls4ml's C simulation compiles with it"
    return None


def multiply_accumulates(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of one input through the graph's Conv, MatMul and Gemm nodes."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    wrapped = cleanup_model(ModelWrapper(model))
    macs = 0
    for node in wrapped.graph.node:
        if node.op_type in ("Conv", "MatMul", "Gemm") and len(node.input) > 1:
            out, weight = wrapped.get_tensor_shape(node.output[0]), wrapped.get_tensor_shape(node.input[1])
            if out and weight:
                per_output = int(np.prod(weight[1:])) if node.op_type == "Conv" else int(weight[0] if node.op_type == "MatMul" else weight[-1])
                macs += int(np.prod(out[1:])) * per_output
    return macs


def seconds_per_input(model: onnx.ModelProto) -> float:
    """Estimated C simulation time of one input: ``SECONDS_PER_MAC`` x the graph's multiply-accumulates."""
    return multiply_accumulates(model) * SECONDS_PER_MAC


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


_POOLS = ("MaxPool", "AveragePool")


# what hls4ml's documented preprocessing (`prepare`) turns into an op it has a handler for
_CONVERTED = {"Gemm": "MatMul"}
# hls4ml's Merge layers (``converters/onnx/merge.py``, Concat aside: a layer of its own)
_MERGES = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean")


def unsupported(model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """The nodes of ``model`` hls4ml 1.3's flow cannot take, as (node, operator, why): operators
    its ONNX front end has no handler for (``hls4ml.converters.get_supported_onnx_layers``) and
    pools its io_stream implementation asserts against (``nnet_pooling_stream.h``: the window
    must equal the stride, with no padding; it aborts the C simulation otherwise), grouped
    convolutions, and merges of two tensors of different sizes (a squeeze-and-excitation gate:
    ``merge_templates.py`` asserts "broadcasting merge not supported non-io_parallel" when it
    writes the project, so EfficientNet-B0 failed there only after the whole pipeline).

    Read on the file as exported (qonnx's cleaned form), not after `prepare`: the channels-last
    conversion only inserts Transposes and keeps every pool's window, stride and padding, and it
    takes minutes on an ImageNet network (82 s on ResNet-18, bench/results/preflight.json), which a check before profiling
    cannot spend."""
    import hls4ml.converters

    known = set(hls4ml.converters.get_supported_onnx_layers())
    graph = model.graph
    sizes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
             for v in (*graph.input, *graph.value_info, *graph.output)}
    constants = {i.name for i in graph.initializer}
    out = []
    for node in graph.node:
        if _CONVERTED.get(node.op_type, node.op_type) not in known:
            out.append((node.name, node.op_type, "hls4ml's ONNX front end has no handler for it"))
        elif node.op_type == "Conv" and (why := _grouped(model, node)):
            out.append((node.name, node.op_type, why))
        elif node.op_type in _MERGES and (why := _broadcast(node, sizes, constants)):
            out.append((node.name, node.op_type, why))
        elif node.op_type in _POOLS:
            attrs = {a.name: list(a.ints) for a in node.attribute if a.ints}
            kernel, strides = attrs.get("kernel_shape", []), attrs.get("strides", [1] * len(attrs.get("kernel_shape", [])))
            if kernel != strides:
                out.append((node.name, node.op_type, f"a {'x'.join(map(str, kernel))} window at stride "
                            f"{'x'.join(map(str, strides))}; hls4ml's io_stream pool needs the window equal to its stride"))
            elif any(attrs.get("pads", [])):
                out.append((node.name, node.op_type, "padding, which hls4ml's io_stream pool does not take"))
    return out


def _broadcast(node, shapes: dict[str, list[int]], constants: set[str]) -> str | None:
    """Why hls4ml's io_stream cannot take this merge of two tensors (None: it can, or the
    shapes are not known): its two inputs hold different numbers of elements."""
    inputs = [shapes.get(i) for i in node.input if i not in constants]
    if len(inputs) != 2 or None in inputs or not all(all(shape) for shape in inputs):
        return None
    if int(np.prod(inputs[0])) == int(np.prod(inputs[1])):
        return None
    a, b = ("x".join(map(str, shape)) for shape in inputs)
    return (f"a broadcast of a {a} and a {b} tensor; hls4ml's io_stream merge layers take two inputs "
            "of the same size")


def _grouped(model: onnx.ModelProto, node) -> str | None:
    """Why hls4ml cannot take this Conv's groups (None: it can). Its ONNX handler reads any
    group other than 1 as depthwise with a depth multiplier of groups / input channels and
    stops when that is not a whole number (``converters/onnx/convolution.py``): a grouped
    convolution between the two (RegNet's, ResNeXt's) ends there, after the whole pipeline."""
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if group == 1:
        return None
    inits = {i.name: i for i in model.graph.initializer}
    weight = node.input[1]
    producer = next((n for n in model.graph.node if weight in n.output), None)
    if weight not in inits and producer is not None and producer.op_type == "Quant":
        weight = producer.input[0]
    if weight not in inits:
        return None  # no constant weight to read the channels from: hls4ml's own check decides
    per_group = list(inits[weight].dims)[1]
    if per_group == 1:
        return None  # depthwise: one input channel per group
    return (f"a convolution in {group} groups of {per_group} input channels; hls4ml's Conv takes one group "
            "or depthwise (one channel per group)")


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
            w, (ws, _, _), (xs, xbits, _) = wrapped.get_initializer(wq.input[0]), _quant_params(wrapped, wq), _quant_params(wrapped, xq)
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


def _simulate(model_path: str, x_path: str, out_path: str) -> dict:
    """Convert, compile and run (in this process; `session` runs it in a child process)."""
    import hls4ml

    wrapped = prepare(onnx.load(model_path))
    width, integer = exact_precision(wrapped)
    precision = f"fixed<{width},{integer}>"
    workdir = tempfile.mkdtemp(prefix="infoq-hls4ml-")
    try:
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
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
            built = time.perf_counter()
            in_shape = tuple(wrapped.get_tensor_shape(wrapped.graph.input[0].name))
            x = np.load(x_path)
            x = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), *in_shape[1:])
            out = np.asarray(hls_model.predict(x), dtype=np.float32).reshape(len(x), -1)
        np.save(out_path, out)
        return {"precision": precision, "build_seconds": built - start, "run_seconds": time.perf_counter() - built}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def session(model: onnx.ModelProto, timeout: float | None = None):
    """Run the C simulation in a child process: a failed assertion or a bad memory access in the
    generated C++ (hls4ml's own checks abort) must end in a sentence, not take the tool down.
    ``timeout``: seconds the conversion, compilation and simulation together may take (g++ on a
    large network's generated C++ can take longer than a build pipeline allows); past it the
    child is stopped and `ConsumerTimeout` raised."""
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    refused = unsupported(model)
    if refused:  # before the C++ is generated: hls4ml would fail there, or abort in the simulation
        name, op, why = refused[0]
        more = f" (and {len(refused) - 1} more node(s))" if len(refused) > 1 else ""
        raise ConsumerRefused(f"node {name} ({op}: {why}){more}")
    info: dict = {}

    def run(x: np.ndarray) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="infoq-hls4ml-run-") as tmp:
            paths = [os.path.join(tmp, n) for n in ("model.onnx", "x.npy", "out.npy", "info.json")]
            onnx.save(model, paths[0])
            np.save(paths[1], np.asarray(x, dtype=np.float32))
            try:
                proc = subprocess.run([sys.executable, "-m", __name__, *paths], capture_output=True, text=True,
                                      timeout=timeout)
            except subprocess.TimeoutExpired:
                raise ConsumerTimeout(timeout) from None
            if proc.returncode != 0:
                raise ConsumerRefused(_failure(proc))
            info.update(json.loads(open(paths[3]).read()))
            run.precision = info["precision"]
            run.build_seconds = info["build_seconds"]
            return np.load(paths[2])

    return run


def _failure(proc: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (proc.stderr or "").splitlines() if ln.strip()]
    refused = [ln[len(REFUSED_MARK):] for ln in lines if ln.startswith(REFUSED_MARK)]
    if refused:
        return refused[-1]
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        detail = next((ln for ln in reversed(lines) if "Assertion" in ln or "error" in ln.lower()), "")
        return f"its C simulation crashed ({name})" + (f": {detail[-240:]}" if detail else "")
    return (lines[-1] if lines else f"exit status {proc.returncode}")[-300:]


def main(argv: list[str]) -> int:
    model_path, x_path, out_path, info_path = argv
    try:
        info = _simulate(model_path, x_path, out_path)
    except Exception as exc:  # hls4ml's own message, one line, for the parent
        print(REFUSED_MARK + f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300], file=sys.stderr)
        return 3
    with open(info_path, "w") as f:
        json.dump(info, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
