"""Run an exported file and compare it with the Brevitas model it came from.

The file runs on the back end its format names (QONNX: qonnx's reference executor after
qonnx cleanup; QCDQ: ONNX Runtime), on the same inputs as the Brevitas model, the whole set
in a few large batches (qonnx runs node by node: the per-call overhead, not the batch, dominates).

Bit-widths are read from the graph itself: QONNX from the ``bitwidth`` input of the
``Quant`` nodes feeding each Conv/Gemm/MatMul weight and input; QCDQ from the Clip bounds
between QuantizeLinear and DequantizeLinear (or the zero point's int8/uint8 type when
there is no Clip). Graph compute nodes are matched to layers by identity: the weight a node
holds is the layer's (`match_layers`), never by position.

Logit tolerance: exported and Brevitas logits differ by more than float rounding, because
a value that lands near a rounding boundary can fall one quantization step apart in two
runtimes (their float sums differ in the last bits), and the step propagates through the
later layers, more steps flipping on the way: in a deep network the logits end up apart by a
fair fraction of the quantization error itself. How far is a property of the model, and it is
measured on it: the same Brevitas model run in float64 differs from itself in float32 by just
that propagation (the last bits differ, as between two runtimes). On EfficientNet-Lite0
(edge-cpu-ort, `bench/results/stage_speed_lite0.json`) float64 moves the logits by 0.0385
(mean, 64 images) after GPTQ + bias correction and 0.0361 after minmax, and ONNX Runtime runs
the exported files 0.0351 and 0.0358 from Brevitas (1,300 images). So the *mean* absolute logit
difference may be at most the largest of:
``ROUNDING_FACTOR`` (2) x that float64 difference (``rounding_noise``, on the first
``ROUNDING_SAMPLE`` inputs); ``QUANT_ERROR_FRACTION`` (1/2) of the quantization error (the mean
absolute difference between the Brevitas model and the same model with quantization disabled,
same inputs); and ``RUNTIME_RTOL`` (1 %) x mean |logit|. The quantization-error term alone is
not enough: GPTQ writes its rounded weights back into the float ones and bias correction moves
the biases, so switching the quantizers off no longer removes the weights' quantization, and
the term shrinks (Lite0: 0.048 after GPTQ + bias correction, 0.143 after minmax) while the
propagation does not. The floor is for the ONNX Runtime integer kernels:
with its default graph optimizations ORT fuses QDQ pairs into QLinearConv/QGemm, whose
fixed-point requantization rounds differently from the float simulation by up to one step
per layer; an 8-bit model whose quantization error is tiny can then differ from it by more
than half that error (a 4-layer int8 CNN: mean diff 0.0019 = 0.5 % of the mean |logit|,
3x its quantization error, and 5e-9 with ORT's optimizations turned off). Measured: a 7-layer CNN at 2..8 bits,
~0 (no flips); random-init ResNet-18 at 4 bits, 0.17 (mean diff 0.06, quantization error
0.35, top-1 agreement 100 %). A wrong scale, missing quantizer or wrong bit-width in many
layers moves the logits by the order of the quantization error itself; single-layer
bit-width errors, and wrong scales, are caught by the graph check. The max difference is reported alongside.

Top-1 agreement is judged per input, so it needs a per-input bound: a boundary flip moves one
input's logits, not all of them, and far more than the mean over all inputs (a random-weight
EfficientNet-B0 on fpga-int: most inputs bit-identical to Brevitas, a few moved, where an SE
gate's ``Sigmoid x input`` landed on a rounding boundary in ONNX Runtime and not in torch;
`bench/bench_boundary_flip.py`). Float64 moves single inputs the same way. So an input is
decisive only when its top-2 margin exceeds twice the larger of the tolerance and the largest
single-logit move float64 made on the sample (``rounding_max``): a flip inside that margin is
what float rounding alone can do to this model.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from brevitas.graph.calibrate import quantization_status_manager
from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer
from torch import nn

from infoq_deploy.backends import registry as backends
from infoq_deploy.backends import batched
from infoq_deploy.backends.batched import run_batched
from infoq_deploy.backends.ort_fusion import fusion, quantized_adds
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.quantizer import FLOAT_BITS
from infoq_deploy.export import registry as formats
from infoq_deploy.export.graph import OnnxGraph
from infoq_deploy.export.writer import check_format
from infoq_deploy.importing.layers import QUANTIZABLE
from infoq_deploy.quantize.brevitas_model import JOIN_INPUTS_KEY, act_quant_params, read_bits

MIN_AGREEMENT = 0.995
# inputs the format's own back end also runs when a faster one ran them all, one exported batch at a
# time, until this many or until REFERENCE_SECONDS have passed (qonnx's executor: a minute per
# ImageNet input on a busy machine), at least one batch
REFERENCE_SAMPLE = 8
REFERENCE_SECONDS = 60.0
QUANT_ERROR_FRACTION = 0.5
ROUNDING_FACTOR = 2.0
ROUNDING_SAMPLE = 64  # inputs the quantization error and the float64 run are measured on
RUNTIME_RTOL = 1e-2
_COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
_JOIN_OPS = ("Add", "Concat")
_ELEMENT_BUDGET = 2**22  # input elements per executor call: bounds qonnx's memory on big images


@dataclass
class VerifyResult:
    fmt: str
    n_inputs: int
    agreement: float | None  # top-1 agreement on the decisive inputs (None: no input is decisive)
    max_abs_diff: float  # logits, exported vs Brevitas
    mean_abs_diff: float
    tolerance: float  # allowed mean_abs_diff (see the module docstring)
    quant_error: float  # mean |Brevitas logits - same model unquantized| (first ROUNDING_SAMPLE inputs)
    accuracy: float | None  # exported file, when labels are given
    reference_accuracy: float | None  # Brevitas model, when labels are given
    bits_in_graph: dict[str, tuple[int, int]]
    mismatches: list[str] = field(default_factory=list)  # bits vs allocation, scales vs model, joins
    seconds: float = 0.0
    agreement_all: float | None = None  # top-1 agreement on every input, near-ties included
    top1_judged_on: int | None = None  # decisive inputs: the reference's top-2 margin exceeds 2 x tolerance
    ties: int = 0  # inputs whose top-1 differs within that margin: set aside, not counted
    # QCDQ: layers (and quantized adds) ONNX Runtime leaves float in the graph it runs, with the
    # float op; a speed finding, not a correctness one, so it does not fail the check
    ort_float: dict[str, str] | None = None
    ort_integer_ops: dict[str, int] | None = None
    runner: str | None = None  # the back end that ran every input
    # when that is the format's fast runner: the format's own back end on a sample, against it
    reference_check: dict | None = None
    # mean |Brevitas logits in float32 - the same in float64| on the first ROUNDING_SAMPLE inputs:
    # how far float rounding alone moves this model's logits (None: the model does not run in float64)
    rounding_noise: float | None = None
    # max of that difference over the same logits: how far rounding moved one input's logit, which
    # bounds the top-2 margins a top-1 flip is judged on (see the module docstring)
    rounding_max: float | None = None

    @property
    def ok(self) -> bool:
        return self.passes(self.agreement, self.mismatches, self.mean_abs_diff, self.tolerance)

    @staticmethod
    def passes(agreement: float | None, mismatches: list, mean_abs_diff: float, tolerance: float) -> bool:
        top1 = agreement is None or agreement >= MIN_AGREEMENT  # None: every input is a near-tie
        return top1 and not mismatches and mean_abs_diff <= tolerance

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["bits_in_graph"] = {k: list(v) for k, v in self.bits_in_graph.items()}
        d["ok"] = self.ok
        return d


# ----------------------------------------------------------------------------- graph reading


def _quant_node(g: OnnxGraph, tensor: str, fmt: str):
    """The node ending a quantizer of ``fmt`` (QONNX Quant, QCDQ DequantizeLinear) that produces ``tensor``."""
    node = g.source(tensor)
    return node if node is not None and node.op_type == formats.get(fmt).QUANT_OP else None


def _bits(g: OnnxGraph, qnode, fmt: str) -> int | str:
    return FLOAT_BITS if qnode is None else formats.get(fmt).quant_bits(g, qnode)


def _weight_array(g: OnnxGraph, node, fmt: str) -> np.ndarray | None:
    """The weight a compute node reads: float (QONNX Quant input) or integer (QCDQ), None if not constant."""
    qnode = _quant_node(g, node.input[1], fmt)
    if qnode is None:
        return g.const(node.input[1])
    inner = g.producer.get(qnode.input[0])
    return g.const(inner.input[0] if inner is not None and inner.op_type == "Clip" else qnode.input[0])


def _weight_forms(module: nn.Module) -> list[np.ndarray]:
    """The arrays an exporter may write for a layer's weight: as trained, and as quantized integers."""
    forms = [module.weight.detach().cpu().numpy()]
    if isinstance(module, QuantWeightBiasInputOutputLayer) and module.weight_quant.is_quant_enabled:
        with torch.no_grad():
            forms.append(module.quant_weight().int().detach().cpu().numpy())
    return forms


def _same_weight(arr: np.ndarray | None, forms: list[np.ndarray]) -> bool:
    if arr is None:
        return False
    for w in forms:
        for cand in (w, w.T) if w.ndim == 2 else (w,):
            if cand.shape == arr.shape and np.array_equal(cand.astype(arr.dtype, copy=False), arr):
                return True
        # a Linear layer written as a Conv over the whole feature map (export/passes/linear_as_conv.py)
        if w.ndim == 2 and arr.ndim == 4 and arr.shape[0] == w.shape[0] and arr.size == w.size:
            if np.array_equal(w.astype(arr.dtype, copy=False), arr.reshape(w.shape)):
                return True
    return False


def _shapes(module: nn.Module) -> tuple[tuple[int, ...], ...]:
    shape = tuple(module.weight.shape)
    return shape, shape[::-1]


def _is_fixed_rewrite(g: OnnxGraph, node, fmt: str) -> bool:
    """A Conv that `export/passes/` wrote for a pool or a shortcut: 0/1 weights at scale 1, no layer of the model."""
    if node.op_type != "Conv" or len(node.input) < 2:
        return False
    qnode = _quant_node(g, node.input[1], fmt)
    if qnode is None:
        return False
    arr, scale = _weight_array(g, node, fmt), g.const(qnode.input[1])
    return arr is not None and scale is not None and np.all(scale == 1) and np.isin(arr, (0, 1)).all()


def _activation_product(g: OnnxGraph, node) -> bool:
    """A MatMul of two activations (attention's query x key, weights x value): it holds no layer's weight."""
    return node.op_type == "MatMul" and not g.is_param(node.input[1])


def match_layers(g: OnnxGraph, fmt: str, qmodel: nn.Module) -> tuple[list[tuple[object, str, nn.Module]], list[str]]:
    """Pair each Conv/Gemm/MatMul node of the graph with the layer it computes, by identity: the
    weight it holds equals the layer's (as trained or as quantized integers). Exporters order
    nodes their own way (torchvision's ResNet downsample convolutions, for one), so position
    proves nothing. A node whose weight is no layer's is paired with the next unpaired layer of
    its shape and reported, so a graph from another model fails with reasons."""
    compute = [n for n in g.nodes if n.op_type in _COMPUTE_OPS and not _is_fixed_rewrite(g, n, fmt)
               and not _activation_product(g, n)]
    calls = _layer_calls(qmodel)
    problems = []
    if len(compute) != len(calls):
        problems.append(f"the graph has {len(compute)} Conv/Gemm/MatMul nodes but the model calls {len(calls)} layers")
    forms = {id(m): _weight_forms(m) for _, m in calls}
    free = list(range(len(calls)))  # calls not yet paired, in graph order
    pairs, unmatched = [], []
    for node in compute:
        arr = _weight_array(g, node, fmt)
        hit = next((i for i in free if _same_weight(arr, forms[id(calls[i][1])])), None)
        if hit is None:
            unmatched.append((node, arr))
            continue
        free.remove(hit)
        pairs.append((node, *calls[hit]))
    for node, arr in unmatched:
        shape = None if arr is None else tuple(arr.shape)
        same = next((i for i in free if shape in _shapes(calls[i][1])), None)
        if same is None:
            problems.append(f"graph node {node.name} (weight {shape}) matches no layer of the model")
            continue
        free.remove(same)
        name, module = calls[same]
        problems.append(f"graph node {node.name}: its weights differ from those of layer {name}")
        pairs.append((node, name, module))
    return pairs, problems


def _same_scale(graph_scale: np.ndarray | None, model_scale: torch.Tensor) -> bool:
    ours = model_scale.detach().cpu().numpy().reshape(-1)
    return graph_scale is not None and graph_scale.size == ours.size and np.allclose(
        graph_scale.reshape(-1), ours, rtol=1e-6, atol=0
    )


def _layer_calls(qmodel: nn.Module) -> list[tuple[str, nn.Module]]:
    """(layer name, module) per call of a Conv/Linear module, in graph order."""
    modules = dict(qmodel.named_modules())
    return [
        (node.target, modules[node.target])
        for node in qmodel.graph.nodes
        if node.op == "call_module" and isinstance(modules[node.target], QUANTIZABLE)
    ]


_GRID_OPS = ("Slice", "Pad", "MaxPool", "Reshape", "Flatten", "Transpose", "Identity")


def _quant_behind(g: OnnxGraph, tensor: str, fmt: str):
    """The quantizer behind a tensor, directly or through ops that keep the quantization grid
    (a join's shared input after a slice and pad; a classifier's input after the Flatten)."""
    node = g.source(tensor)
    while node is not None and (node.op_type in _GRID_OPS or _is_fixed_rewrite(g, node, fmt)):
        node = g.source(node.input[0])
    return node if node is not None and node.op_type == formats.get(fmt).QUANT_OP else None


def graph_bits(model: onnx.ModelProto, fmt: str, qmodel: nn.Module) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """Bit-widths per layer as found in the exported graph, and problems found on the way.

    Problems include quantization scales in the graph that differ from the model's.
    """
    g = OnnxGraph(model)
    pairs, problems = match_layers(g, fmt, qmodel)
    found: dict[str, tuple[int, int]] = {}
    for node, name, module in pairs:
        qnodes = (_quant_node(g, node.input[1], fmt), _quant_behind(g, node.input[0], fmt))
        pair = tuple(_bits(g, q, fmt) for q in qnodes)
        for what, bits in zip(("weight", "input"), pair):
            if isinstance(bits, str):
                problems.append(f"layer {name} {what}: {bits}")
        if all(isinstance(b, int) for b in pair):
            if name in found and found[name] != pair:
                problems.append(f"layer {name} is called with different bit-widths {found[name]} and {pair}")
            found[name] = pair
        if isinstance(module, QuantWeightBiasInputOutputLayer):
            scales = (
                module.quant_weight().scale if module.weight_quant.is_quant_enabled else None,
                act_quant_params(module.input_quant)[0] if module.input_quant.is_quant_enabled else None,
            )
            for what, qnode, scale in zip(("weight", "input"), qnodes, scales):
                if qnode is not None and scale is not None and not _same_scale(g.const(qnode.input[1]), scale):
                    problems.append(f"layer {name}: the {what} scale in the graph differs from the model's")
    return found, problems


def join_problems(model: onnx.ModelProto, fmt: str, qmodel: nn.Module) -> list[str]:
    """Each Add/Concat's inputs come from the quantizers the model uses there (`brevitas_model` records them).

    A join input reuses the input quantizer of a layer that reads the same tensor, or goes
    through the join's own quantizer; compared as (bits, scale) per input, in graph order.
    """
    g = OnnxGraph(model)
    modules = dict(qmodel.named_modules())
    expected = []
    for entries in qmodel.meta.get(JOIN_INPUTS_KEY, []):
        row = []
        for entry in entries:
            if entry is not None:
                kind, name = entry
                proxy = modules[name].input_quant if kind == "layer" else modules[name].act_quant
                scale, bits = act_quant_params(proxy)
                entry = (bits, scale)
            row.append(entry)
        expected.append(row)
    found = []
    for node in g.nodes:
        if node.op_type not in _JOIN_OPS:
            continue
        ins = [i for i in node.input if not g.is_param(i)]  # e.g. MatMul + bias Add
        qnodes = [_quant_behind(g, i, fmt) for i in ins]
        if len(ins) < 2 or all(q is None for q in qnodes):
            continue
        found.append((node, [None if q is None else (_bits(g, q, fmt), g.const(q.input[1])) for q in qnodes]))
    problems = []
    if len(found) != len(expected):
        return [f"the graph has {len(found)} quantized Add/Concat nodes but the model has {len(expected)}"]
    for (node, got), want in zip(found, expected):
        unmatched = list(got)
        for entry in want:
            hit = next(
                (k for k, e in enumerate(unmatched)
                 if (e is None) == (entry is None) and (e is None or (e[0] == entry[0] and _same_scale(e[1], entry[1])))),
                None,
            )
            if hit is None:
                problems.append(f"{node.op_type} node {node.name}: its input quantizers differ from the model's")
                break
            unmatched.pop(hit)
    return problems


# ----------------------------------------------------------------------------- execution


def top1_agreement(ref: np.ndarray, out: np.ndarray, tolerance: float,
                   spread: float = 0.0) -> tuple[float | None, int, int]:
    """Top-1 agreement judged where it means something: on inputs whose reference top-2 margin
    exceeds what each of the two logits may move, the larger of the logit tolerance and
    ``spread`` (the largest move float rounding alone made on one logit; 0: not measured), twice.
    Where the top two are closer (a random-weight model's near-equal logits, a boundary case), a
    flip says nothing about the graph; those inputs are set aside and counted, and the logit
    check still binds. Returns (agreement or None when no input is decisive, decisive inputs,
    flips set aside)."""
    top2 = np.sort(ref, axis=1)[:, -2:] if ref.shape[1] > 1 else np.concatenate([ref, ref - np.inf], axis=1)
    decisive = (top2[:, 1] - top2[:, 0]) > 2 * max(tolerance, spread)
    same = out.argmax(axis=1) == ref.argmax(axis=1)
    n = int(decisive.sum())
    return (float(same[decisive].mean()) if n else None), n, int((~same & ~decisive).sum())


def _run_brevitas(qmodel: nn.Module, x: torch.Tensor, size: int, quantized: bool = True) -> np.ndarray:
    was_training = qmodel.training
    qmodel.eval()
    off = not quantized
    try:
        with torch.no_grad(), quantization_status_manager(
            qmodel, disable_act_quant=off, disable_weight_quant=off, disable_bias_quant=off, is_training=False
        ):
            return torch.cat([qmodel(x[s : s + size]) for s in range(0, x.shape[0], size)]).numpy()
    finally:
        qmodel.train(was_training)


def _rounding_noise(qmodel: nn.Module, x: torch.Tensor, ref: np.ndarray, size: int) -> tuple[float, float] | None:
    """Mean and max |logits in float32 - logits in float64| of a copy of ``qmodel``: the difference
    float rounding alone makes (see the module docstring); None when the model does not run in float64."""
    try:
        wide = copy.deepcopy(qmodel).double()
        wide_ref = _run_brevitas(wide, x.double(), size)
    except (RuntimeError, TypeError) as exc:  # an op without a float64 kernel: the tolerance keeps its other terms
        warnings.warn(f"the quantized model does not run in float64 ({type(exc).__name__}: {exc}); the logit "
                      "tolerance leaves out the float-rounding term")
        return None
    diff = np.abs(ref.astype(np.float64) - wide_ref)
    return float(diff.mean()), float(diff.max())


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
    if len(x) == 0:
        raise UserError("no inputs to verify on; pass at least one input")
    if y is not None and len(y) != len(x):
        raise UserError(f"{len(x)} inputs but {len(y)} labels; give one label per input")
    start = time.perf_counter()
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends: a truncated or foreign file
        raise UserError(f"{path} is not a readable ONNX file ({type(exc).__name__}); export it again") from None
    expected = dict(allocation) if allocation is not None else read_bits(qmodel)
    found, mismatches = graph_bits(model, fmt, qmodel)
    ort_float = ort_ops = None
    if fmt == "qcdq":
        ort_float, ort_ops = ort_fusion(model, fmt, qmodel, expected)
    for name, pair in expected.items():
        if name not in found:
            mismatches.append(f"layer {name} was not found in the graph")
        elif found[name] != tuple(pair):
            mismatches.append(f"layer {name}: graph has (w, a) = {found[name]}, expected {tuple(pair)}")
    mismatches += join_problems(model, fmt, qmodel)

    size = batch_size or max(1, min(len(x), 256, _ELEMENT_BUDGET // max(1, x[0].numel())))
    xs = x.detach().cpu().float()
    ref = _run_brevitas(qmodel, xs, size)
    sample = xs[:ROUNDING_SAMPLE]
    quant_error = float(np.abs(ref[:len(sample)].astype(np.float64)
                               - _run_brevitas(qmodel, sample, size, quantized=False)).mean())
    rounding, rounding_max = _rounding_noise(qmodel, sample, ref[:len(sample)], size) or (None, None)
    module = formats.get(fmt)
    runner = getattr(module, "FAST_BACKEND", None) or module.BACKEND
    out = run_batched(model, xs.numpy(), size, runner).reshape(ref.shape)
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    pred, ref_pred = out.argmax(axis=1), ref.argmax(axis=1)
    labels = None if y is None else y.detach().cpu().numpy()
    tolerance = max(QUANT_ERROR_FRACTION * quant_error, ROUNDING_FACTOR * (rounding or 0.0),
                    RUNTIME_RTOL * float(np.abs(ref).mean()))
    reference_check = None
    if runner != module.BACKEND:
        reference_check = _reference_check(model, xs.numpy(), runner, module.BACKEND, tolerance)
        if not reference_check["ok"]:
            mismatches.append(
                f"{runner} and {module.BACKEND} run the file differently (mean |logit diff| "
                f"{reference_check['mean_abs_diff']:.3g} on {reference_check['n_inputs']} inputs, allowed "
                f"{tolerance:.3g}); verify with --backend {module.BACKEND} and report this as a bug")
    judged, judged_on, ties = top1_agreement(ref, out, tolerance, rounding_max or 0.0)
    return VerifyResult(
        fmt=fmt,
        n_inputs=len(x),
        agreement=judged,
        agreement_all=float((pred == ref_pred).mean()),
        top1_judged_on=judged_on,
        ties=ties,
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        tolerance=tolerance,
        quant_error=quant_error,
        accuracy=None if labels is None else float((pred == labels).mean()),
        reference_accuracy=None if labels is None else float((ref_pred == labels).mean()),
        bits_in_graph=found,
        mismatches=mismatches,
        seconds=time.perf_counter() - start,
        ort_float=ort_float,
        ort_integer_ops=ort_ops,
        runner=runner,
        reference_check=reference_check,
        rounding_noise=rounding,
        rounding_max=rounding_max,
    )


def _reference_check(model, x: np.ndarray, fast: str, backend: str, tolerance: float) -> dict:
    """The format's own back end against the fast runner on the first inputs (`REFERENCE_SAMPLE`,
    `REFERENCE_SECONDS`), both on the file as written, batch by batch (a batch size of its own can
    move a float sum's last bit, and that is not what this compares).

    The fast runner is meant to compute exactly what the reference does; the check allows what
    the model check allows (a step at a rounding boundary), and says whether the runs are identical."""
    start = time.perf_counter()
    run, mine = backends.get(backend).session(model), backends.get(fast).session(model)
    want, got = [], []
    for part, n in batched.chunks(x[:REFERENCE_SAMPLE], batched.batch_size(model)):
        want.append(run(part)[:n])
        got.append(mine(part)[:n])
        if time.perf_counter() - start > REFERENCE_SECONDS:
            break
    want, got = np.concatenate(want), np.concatenate(got)
    diff = np.abs(want.astype(np.float64) - got.astype(np.float64))
    return {"backend": backend, "n_inputs": len(want), "identical": bool(np.array_equal(want, got)),
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "ok": bool(diff.mean() <= tolerance), "seconds": round(time.perf_counter() - start, 3)}


def ort_fusion(model, fmt, qmodel, expected) -> tuple[dict[str, str], dict[str, int]]:
    """{layer or add: float op} for the integer-allocated layers and quantized adds ORT runs in float."""
    g = OnnxGraph(model)
    pairs, _ = match_layers(g, fmt, qmodel)
    integer = {node.name: name for node, name, _ in pairs
               if name in expected and all(b < FLOAT_BITS for b in expected[name])}
    integer.update({add: f"add {add}" for add in quantized_adds(model)})
    result = fusion(model, list(integer))
    return {integer[n]: op for n, op in result.float_nodes.items()}, result.integer_ops
