"""Which layers ONNX Runtime actually runs as integer kernels: read from the graph ORT itself optimizes.

A QCDQ file only says where the quantizers are; ORT decides, by pattern, which
DequantizeLinear -> op -> QuantizeLinear groups become QLinearConv / QGemm / QLinearAdd and
which stay float between a dequantize and a quantize (slower than the float model: the
quantizers are extra work). So the check asks ORT: it writes the graph it will run
(``optimized_model_filepath``, default optimization level, as users run it), and a layer
whose node is still a float Conv/Gemm/MatMul there did not fuse. ORT keeps the name of a
node it leaves alone (and renames the ones it replaces), which is what the match relies on.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime

FLOAT_OPS = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "Add"}
INTEGER_OPS = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QLinearAdd"}


@dataclass(frozen=True)
class Fusion:
    float_nodes: dict[str, str]  # name of a node that should be integer -> the float op ORT runs
    integer_ops: dict[str, int]  # integer kernels in ORT's graph, by op type


def optimized_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph ONNX Runtime runs, after its default (all-level) optimizations, on the CPU."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optimized.onnx"
        options = onnxruntime.SessionOptions()
        options.optimized_model_filepath = str(path)
        options.log_severity_level = 3  # ORT warns that an all-level graph is machine specific: known
        onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(str(path))


def quantized_adds(model: onnx.ModelProto) -> list[str]:
    """Add nodes of the file whose inputs are all dequantized and whose output is quantized: integer adds for ORT."""
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    found = []
    for n in model.graph.node:
        if n.op_type != "Add":
            continue
        ins = [producer.get(i) for i in n.input]
        outs = readers.get(n.output[0], [])
        # a ReLU between the add and its quantizer is one ORT folds into it (zero point at 0)
        if len(outs) == 1 and outs[0].op_type == "Relu":
            outs = readers.get(outs[0].output[0], [])
        if all(p is not None and p.op_type == "DequantizeLinear" for p in ins) and outs and all(
            r.op_type == "QuantizeLinear" for r in outs
        ):
            found.append(n.name)
    return found


def fusion(model: onnx.ModelProto, integer_nodes: list[str]) -> Fusion:
    """Which of ``integer_nodes`` (names of the file's nodes meant to run as integer kernels) ORT leaves float."""
    ran = optimized_graph(model)
    ops = {n.name: n.op_type for n in ran.graph.node}
    float_nodes = {name: ops[name] for name in integer_nodes if ops.get(name) in FLOAT_OPS}
    counts: dict[str, int] = {}
    for n in ran.graph.node:
        if n.op_type in INTEGER_OPS:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return Fusion(float_nodes=float_nodes, integer_ops=counts)


def summary(float_nodes: dict[str, str], integer_ops: dict[str, int]) -> str:
    """One line for `verify` and the report: the integer kernels, and what stayed float (with its op)."""
    kernels = ", ".join(f"{n} {op}" for op, n in sorted(integer_ops.items())) or "no integer kernels"
    if not float_nodes:
        return f"every integer layer and quantized add runs as an integer kernel ({kernels})"
    return f"{kernels}; left in float: " + ", ".join(f"{name} ({op})" for name, op in float_nodes.items())
