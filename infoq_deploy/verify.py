"""Run an exported file and compare it with the Brevitas model it came from.

QONNX runs in qonnx's reference executor (after qonnx cleanup), QCDQ in ONNX Runtime, each
on the same inputs as the Brevitas model, the whole set in a few large batches (qonnx runs
node by node: the per-call overhead, not the batch, dominates).

Bit-widths are read from the graph itself: QONNX from the ``bitwidth`` input of the
``Quant`` nodes feeding each Conv/Gemm/MatMul weight and input; QCDQ from the Clip bounds
between QuantizeLinear and DequantizeLinear (or the zero point's int8/uint8 type when
there is no Clip). Graph compute nodes are matched to layers by call order (the exporter
traces the fx graph in order), checked by weight shape.

Logit tolerance: exported and Brevitas logits may differ by more than float rounding
because a value that lands on a rounding boundary in one runtime can fall one quantization
step away in the other, and that step propagates. The check is therefore on the *mean*
absolute difference, allowed ``LOGIT_RTOL`` (1 %) of the mean absolute Brevitas logit,
which such rare flips barely move while a wrong scale, bit-width or missing quantizer
moves it by far more; the max difference is reported alongside.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.transformation.change_batchsize import ChangeBatchSize
from qonnx.util.cleanup import cleanup_model
from torch import nn

from .brevitas_model import read_bits, read_join_quantizers
from .errors import UserError
from .export import check_format
from .layers import QUANTIZABLE
from .quantizer import FLOAT_BITS

MIN_AGREEMENT = 0.995
LOGIT_RTOL = 0.01
_COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
_JOIN_OPS = ("Add", "Concat")
_ELEMENT_BUDGET = 2**22  # input elements per executor call: bounds qonnx's memory on big images


@dataclass
class VerifyResult:
    fmt: str
    n_inputs: int
    agreement: float  # top-1 agreement, exported file vs Brevitas model
    max_abs_diff: float  # logits, exported vs Brevitas
    mean_abs_diff: float
    tolerance: float  # allowed mean_abs_diff (LOGIT_RTOL x mean |Brevitas logit|)
    accuracy: float | None  # exported file, when labels are given
    reference_accuracy: float | None  # Brevitas model, when labels are given
    bits_in_graph: dict[str, tuple[int, int]]
    mismatches: list[str] = field(default_factory=list)  # graph vs allocation, shared-join checks
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.agreement >= MIN_AGREEMENT and not self.mismatches and self.mean_abs_diff <= self.tolerance

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["bits_in_graph"] = {k: list(v) for k, v in self.bits_in_graph.items()}
        d["ok"] = self.ok
        return d


# ----------------------------------------------------------------------------- graph reading


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        self.nodes = list(model.graph.node)
        self.inits = {i.name: i for i in model.graph.initializer}
        self.producer = {out: n for n in self.nodes for out in n.output}

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def source(self, name: str):
        """The node producing ``name``, skipping Identity/Transpose/Reshape on weights."""
        node = self.producer.get(name)
        while node is not None and node.op_type in ("Identity", "Transpose"):
            node = self.producer.get(node.input[0])
        return node


def _bits_from_range(lo: int, hi: int) -> int | None:
    bits = math.log2(hi + 1) + (1 if lo < 0 else 0)
    return int(bits) if bits.is_integer() else None


def _qonnx_bits(g: _Graph, tensor: str) -> int | str:
    node = g.source(tensor)
    if node is None or node.op_type != "Quant":
        return FLOAT_BITS
    bw = g.const(node.input[3])
    return int(bw) if bw is not None else "Quant node with a non-constant bit width"


def _qcdq_bits(g: _Graph, tensor: str) -> int | str:
    node = g.source(tensor)
    if node is None or node.op_type != "DequantizeLinear":
        return FLOAT_BITS
    inner = g.producer.get(node.input[0])
    if inner is not None and inner.op_type == "Clip":
        lo, hi = g.const(inner.input[1]), g.const(inner.input[2])
        if lo is None or hi is None:
            return "Clip with non-constant bounds"
        bits = _bits_from_range(int(lo), int(hi))
        return bits if bits is not None else f"Clip range [{int(lo)}, {int(hi)}] is not a b-bit range"
    zp = g.const(node.input[2]) if len(node.input) > 2 else None
    if zp is not None and zp.dtype in (np.int8, np.uint8):
        return 8
    return f"DequantizeLinear with zero point type {None if zp is None else zp.dtype}"


def _weight_shape(g: _Graph, node, fmt: str) -> tuple[int, ...] | None:
    src = g.source(node.input[1])
    if src is None:
        arr = g.const(node.input[1])
    elif fmt == "qonnx" and src.op_type == "Quant":
        arr = g.const(src.input[0])
    elif fmt == "qcdq" and src.op_type == "DequantizeLinear":
        inner = g.producer.get(src.input[0])
        arr = g.const(inner.input[0] if inner is not None and inner.op_type == "Clip" else src.input[0])
    else:
        arr = None
    return None if arr is None else tuple(arr.shape)


def _layer_calls(qmodel: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(layer name, weight shape) per call of a Conv/Linear module, in graph order."""
    modules = dict(qmodel.named_modules())
    calls = []
    for node in qmodel.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], QUANTIZABLE):
            calls.append((node.target, tuple(modules[node.target].weight.shape)))
    return calls


def graph_bits(model: onnx.ModelProto, fmt: str, qmodel: nn.Module) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """Bit-widths per layer as found in the exported graph, and any problem reading them."""
    g = _Graph(model)
    read = _qonnx_bits if fmt == "qonnx" else _qcdq_bits
    compute = [n for n in g.nodes if n.op_type in _COMPUTE_OPS]
    calls = _layer_calls(qmodel)
    problems = []
    if len(compute) != len(calls):
        problems.append(f"the graph has {len(compute)} Conv/Gemm/MatMul nodes but the model calls {len(calls)} layers")
    found: dict[str, tuple[int, int]] = {}
    for node, (name, shape) in zip(compute, calls):
        wshape = _weight_shape(g, node, fmt)
        if wshape not in (shape, shape[::-1]):
            problems.append(f"graph node {node.name} (weight {wshape}) does not match layer {name} (weight {shape})")
            continue
        pair = (read(g, node.input[1]), read(g, node.input[0]))
        for what, bits in zip(("weight", "input"), pair):
            if isinstance(bits, str):
                problems.append(f"layer {name} {what}: {bits}")
        if all(isinstance(b, int) for b in pair):
            if name in found and found[name] != pair:
                problems.append(f"layer {name} is called with different bit-widths {found[name]} and {pair}")
            found[name] = pair
    return found, problems


def join_problems(model: onnx.ModelProto, fmt: str, n_joins: int) -> list[str]:
    """Each quantized Add/Concat must take all inputs from quantizers with one shared scale."""
    g = _Graph(model)
    quant_op = "Quant" if fmt == "qonnx" else "DequantizeLinear"
    problems, quantized = [], 0
    for node in g.nodes:
        if node.op_type not in _JOIN_OPS:
            continue
        ins = [i for i in node.input if g.const(i) is None]
        srcs = [g.producer.get(i) for i in ins]
        from_quant = [s is not None and s.op_type == quant_op for s in srcs]
        if len(ins) < 2 or not any(from_quant):
            continue
        if not all(from_quant):
            problems.append(f"{node.op_type} node {node.name}: only some inputs come from {quant_op} nodes")
            continue
        params = [tuple(g.const(i).tobytes() if g.const(i) is not None else i for i in s.input[1:]) for s in srcs]
        if len(set(params)) != 1:
            problems.append(f"{node.op_type} node {node.name}: inputs are quantized with different scales/bits")
        quantized += 1
    if quantized != n_joins:
        problems.append(f"the graph has {quantized} quantized Add/Concat nodes but the model has {n_joins} join quantizers")
    return problems


# ----------------------------------------------------------------------------- execution


def _chunks(x: np.ndarray, size: int):
    for start in range(0, x.shape[0], size):
        part = x[start : start + size]
        pad = size - part.shape[0]
        if pad:  # the graph has a fixed batch size: pad the last chunk, drop the padding after
            part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), dtype=part.dtype)])
        yield part, size - pad


def _run_qonnx(model: onnx.ModelProto, x: np.ndarray, size: int) -> np.ndarray:
    wrapped = cleanup_model(ModelWrapper(model), override_inpsize=size)
    iname, oname = wrapped.graph.input[0].name, wrapped.graph.output[0].name
    outs = [execute_onnx(wrapped, {iname: part})[oname][:n] for part, n in _chunks(x, size)]
    return np.concatenate(outs)


def _run_ort(model: onnx.ModelProto, x: np.ndarray, size: int) -> np.ndarray:
    wrapped = ModelWrapper(model).transform(ChangeBatchSize(size))
    session = ort.InferenceSession(wrapped.model.SerializeToString(), providers=["CPUExecutionProvider"])
    iname = session.get_inputs()[0].name
    outs = [session.run(None, {iname: part})[0][:n] for part, n in _chunks(x, size)]
    return np.concatenate(outs)


def _run_brevitas(qmodel: nn.Module, x: torch.Tensor, size: int) -> np.ndarray:
    was_training = qmodel.training
    qmodel.eval()
    try:
        with torch.no_grad():
            return torch.cat([qmodel(x[s : s + size]) for s in range(0, x.shape[0], size)]).numpy()
    finally:
        qmodel.train(was_training)


def verify_export(
    path,
    fmt: str,
    qmodel: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    allocation: dict[str, tuple[int, int]] | None = None,
    batch_size: int | None = None,
) -> VerifyResult:
    """Compare the exported file at ``path`` with ``qmodel`` on ``x`` (and labels ``y``).

    Bit-widths in the graph are compared with ``allocation`` (default: read back from
    ``qmodel``).
    """
    check_format(fmt)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no exported model at {path}; run the export first")
    if y is not None and len(y) != len(x):
        raise UserError(f"{len(x)} inputs but {len(y)} labels; give one label per input")
    start = time.perf_counter()
    model = onnx.load(str(path))
    expected = dict(allocation) if allocation is not None else read_bits(qmodel)
    found, mismatches = graph_bits(model, fmt, qmodel)
    for name, pair in expected.items():
        if name not in found:
            mismatches.append(f"layer {name} was not found in the graph")
        elif found[name] != tuple(pair):
            mismatches.append(f"layer {name}: graph has (w, a) = {found[name]}, expected {tuple(pair)}")
    mismatches += join_problems(model, fmt, len(read_join_quantizers(qmodel)))

    size = batch_size or max(1, min(len(x), 256, _ELEMENT_BUDGET // max(1, x[0].numel())))
    xs = x.detach().cpu().float()
    ref = _run_brevitas(qmodel, xs, size)
    run = _run_qonnx if fmt == "qonnx" else _run_ort
    out = run(model, xs.numpy(), size).reshape(ref.shape)
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    pred, ref_pred = out.argmax(axis=1), ref.argmax(axis=1)
    labels = None if y is None else y.detach().cpu().numpy()
    return VerifyResult(
        fmt=fmt,
        n_inputs=len(x),
        agreement=float((pred == ref_pred).mean()),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        tolerance=float(LOGIT_RTOL * np.abs(ref).mean()),
        accuracy=None if labels is None else float((pred == labels).mean()),
        reference_accuracy=None if labels is None else float((ref_pred == labels).mean()),
        bits_in_graph=found,
        mismatches=mismatches,
        seconds=time.perf_counter() - start,
    )
