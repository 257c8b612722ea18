"""One layer's LUTs, BRAMs, DSPs and cycles on a FINN dataflow accelerator, from FINN's own estimators.

No formula of ours: for each (layer, w_bits, a_bits) this builds the one-layer graph FINN
itself makes of a quantized convolution or linear layer after streamlining and
``step_convert_to_hw`` (a ``ConvolutionInputGenerator`` sliding window, unless the kernel is
1x1 with stride 1, feeding an ``MVAU``, or a ``VVAU`` for a depthwise convolution; thresholds
inside it, except on the last layer and where the layer feeds an average pool through a
quantizer too wide for FINN's thresholds; those write the accumulator), then runs FINN's
``SpecializeLayers`` (HLS or RTL, FINN's choice for the part), ``SetFolding`` at the target's
cycles per frame (FINN's folding heuristic, ``two_pass_relaxation`` off so that one layer's
folding never depends on another's), and FINN's ``res_estimation`` and ``get_exp_cycles``.
These are FINN's analytical estimators (FINN-R, Blott et al. 2018), not a synthesis run.

What the one-layer graph assumes, since the layer table holds no more: a square kernel, a
stride of ``in_H // out_H`` and the least symmetric padding that gives the output size;
unsigned activations after the first layer (ReLU outputs), signed ones into it; no grouped
convolutions other than depthwise; an 8-bit threshold output. That last one matters for
depthwise layers only: FINN's VVAU estimate counts its thresholds, sized by the next
quantizer's bits (a choice of the next layer, so not part of this layer's linear cost), and
with 8 bits, the most fpga-int allows, the estimate is an upper bound (exact when the next
layer reads 8-bit activations). FINN's MVAU estimate does not count thresholds with its
default threshold memory. The accumulator width is FINN's data-type bound (arXiv
2301.13376), which FINN's own graph narrows from the actual weights
(MinimizeAccumulatorWidth), so the estimate may be a few LUTs high there.
``tests/test_fpga_resources.py`` checks the numbers against FINN's own estimates on the graph
FINN builds from an exported file.

The parts of a FINN build that belong to no layer (padding, pools, stream duplication, the
residual adds, the layout Transpose) are not in the layer costs; the FPGA benchmark reports
them beside the total FINN estimates for the whole exported graph.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import logging
import math
import warnings
from dataclasses import dataclass

from infoq_deploy.core.errors import UserError
from infoq_deploy.importing.layers import Layer

_HW = "finn.custom_op.fpgadataflow"
# the widest quantizer FINN's front end turns into thresholds (backends/finn_exec.py passes it
# to step_qonnx_to_finn): the accumulator-grid quantizer in front of an average pool
# (export/passes/quant_on_grid.py) becomes the thresholds of the layer before it up to this width
MAX_THRESHOLD_BITS = 16
INSTALL = "pip install --no-deps finn-plus==1.6.1 (README, first lines)"


@dataclass(frozen=True)
class LayerResources:
    luts: int
    brams: int  # BRAM_18K
    dsps: int
    cycles: int  # cycles per frame of the layer's slowest node at its folding
    folding: tuple[tuple[str, int, int], ...]  # (FINN op type, PE, SIMD) per node


def unavailable() -> str | None:
    """Why the FPGA resource metrics cannot be computed here (None: they can)."""
    if importlib.util.find_spec("finn") is None:
        return f"FINN is not installed, and its estimators give the LUT, BRAM and cycle costs; {INSTALL}"
    return None


def why_not(layers) -> str | None:
    """Why ``layers`` get no FPGA resource estimates here (FINN missing, a layer its hardware
    layers do not take), or None. Only a LUT, BRAM or cycles budget makes them required."""
    reason = unavailable()
    if reason is not None:
        return reason
    for layer in layers:
        try:
            _shape(layer)
        except UserError as exc:
            return str(exc)
    return None


def layer_resources(layer: Layer, w_bits: int, a_bits: int, *, last: bool, fpga) -> LayerResources:
    """FINN's estimate of ``layer`` at ``w_bits``/``a_bits`` under ``fpga`` (part, cycles per frame)."""
    reason = unavailable()
    if reason is not None:
        raise UserError(reason)
    shape = _shape(layer)
    return _estimate(shape, int(w_bits), int(a_bits), not _thresholded(layer, shape, w_bits, a_bits, last),
                     layer.order == 0, fpga.part,
                     int(fpga.cycles_per_frame), int(fpga.mvau_wwidth_max))


def _thresholded(layer: Layer, s: "_Shape", w_bits: int, a_bits: int, last: bool) -> bool:
    """Whether FINN puts thresholds inside the layer: when a quantizer of the allocated bits
    reads its output, and when the lossless accumulator-grid quantizer in front of an average
    pool does and is narrow enough (its width is that of the accumulator, estimated here by
    FINN's data-type bound, log2(MW) + W + A - 1 for unsigned inputs: arXiv 2301.13376)."""
    if last:
        return False
    if layer.requantized:
        return True
    fan_in = s.k * s.k * (1 if s.kind == "dwconv" else s.c_in)
    signed = 1 if layer.order == 0 else 0
    return math.ceil(math.log2(fan_in) + w_bits + a_bits - 1 - signed) <= MAX_THRESHOLD_BITS


def hardware_signature(layer: Layer) -> tuple:
    """What identifies ``layer``'s compute node in a FINN graph: ("MVAU", MW, MH, vectors) or
    ("VVAU", channels, kernel area, vectors), vectors being the output pixels it computes."""
    s = _shape(layer)
    vectors = math.prod(s.out_hw) if s.out_hw else 1
    if s.kind == "dwconv":
        return ("VVAU", s.c_in, s.k * s.k, vectors)
    return ("MVAU", s.k * s.k * s.c_in, s.c_out, vectors)


@dataclass(frozen=True)
class _Shape:
    kind: str  # "conv" | "dwconv" | "linear"
    c_in: int
    c_out: int
    k: int
    stride: int
    out_hw: tuple[int, ...]  # (OH, OW) for convs, the leading dims for a linear layer
    in_hw: tuple[int, ...] = ()  # (IH, IW) after padding, for convs


def _shape(layer: Layer) -> _Shape:
    c_out = layer.out_shape[0] if layer.kind != "linear" else layer.out_shape[-1]
    if layer.kind == "linear":
        return _Shape("linear", layer.weight_params // c_out, c_out, 1, 1, tuple(layer.out_shape[:-1]))
    if len(layer.in_shape) != 3:
        raise UserError(f"layer {layer.name} is not a 2-d convolution (input shape {tuple(layer.in_shape)}), and "
                        "FINN's resource estimators here cover 2-d convolutions and linear layers; "
                        "give a size or BitOps budget instead")
    c_in = layer.in_shape[0]
    per_out = layer.weight_params // c_out
    area = per_out if layer.kind == "dwconv" else per_out // c_in
    k = math.isqrt(area)
    if k * k != area or (layer.kind == "conv" and per_out % c_in):
        raise UserError(f"layer {layer.name} has a non-square or grouped kernel ({layer.weight_params} weights for "
                        f"{c_in} -> {c_out} channels), which FINN's hardware layers do not take; "
                        "give a size or BitOps budget instead")
    stride = max(1, layer.in_shape[1] // layer.out_shape[1])
    padded = tuple(_padded(i, o, k, stride) for i, o in zip(layer.in_shape[1:], layer.out_shape[1:]))
    return _Shape(layer.kind, c_in, c_out, k, stride, tuple(layer.out_shape[1:]), padded)


def _padded(size: int, out: int, k: int, stride: int) -> int:
    """The padded input size FINN's padding layer writes: the least symmetric padding that
    gives ``out`` (PyTorch's formula), else the size the output needs."""
    for pad in range(k):
        if (size + 2 * pad - k) // stride + 1 == out:
            return size + 2 * pad
    return (out - 1) * stride + k


@contextlib.contextmanager
def quiet_finn():
    """FINN logs every pattern it skips while streamlining and every layer SetFolding cannot fold
    to the target; the costs (and, if FINN fails, its own one-line message) say what matters."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


@functools.lru_cache(maxsize=None)
def _estimate(s: _Shape, w_bits: int, a_bits: int, last: bool, first: bool, part: str, cycles: int,
              wwidth_max: int) -> LayerResources:
    from finn.analysis.fpgadataflow.res_estimation import res_estimation
    from finn.transformation.fpgadataflow.set_folding import SetFolding
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from qonnx.custom_op.registry import getCustomOp

    model = _one_layer_graph(s, w_bits, a_bits, last, first)
    with quiet_finn():
        model = model.transform(SpecializeLayers(part))
        model = model.transform(SetFolding(cycles, mvau_wwidth_max=wwidth_max, two_pass_relaxation=False))
        res = res_estimation(model, part)
    luts = brams = dsps = slowest = 0
    folding = []
    for node in model.graph.node:
        op, r = getCustomOp(node), res[node.name]
        luts, brams, dsps = luts + int(r["LUT"]), brams + int(r["BRAM_18K"]), dsps + int(r["DSP"])
        slowest = max(slowest, int(op.get_exp_cycles()))
        attrs = op.get_nodeattr_types()
        folding.append((node.op_type, int(op.get_nodeattr("PE")) if "PE" in attrs else 1,
                        int(op.get_nodeattr("SIMD")) if "SIMD" in attrs else 1))
    return LayerResources(luts, brams, dsps, slowest, tuple(folding))


def _one_layer_graph(s: _Shape, w_bits: int, a_bits: int, last: bool, first: bool):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.basic import qonnx_make_model

    idt = f"{'INT' if first else 'UINT'}{a_bits}"
    wdt = f"INT{w_bits}"
    odt = "INT32" if last else "UINT8"
    hw = {"domain": _HW, "backend": "fpgadataflow"}
    nodes, inits = [], []
    if s.kind == "linear":
        out_hw = s.out_hw or ()
        x_shape = [1, *out_hw, s.c_in]
    else:
        (oh, ow), (ih, iw) = s.out_hw, s.in_hw
        x_shape = [1, ih, iw, s.c_in]
    current = "x"
    if s.kind != "linear" and (s.k > 1 or s.stride > 1):
        nodes.append(helper.make_node(
            "ConvolutionInputGenerator", ["x"], ["window"], ConvKernelDim=[s.k, s.k], IFMChannels=s.c_in,
            IFMDim=[ih, iw], OFMDim=[oh, ow], SIMD=1, Stride=[s.stride, s.stride], Dilation=[1, 1],
            inputDataType=idt, outputDataType=idt, depthwise=int(s.kind == "dwconv"), **hw))
        current = "window"
    inputs = [current, "W"] + ([] if last else ["T"])
    if s.kind == "dwconv":
        nodes.append(helper.make_node(
            "VVAU", inputs, ["y"], Channels=s.c_in, Kernel=[s.k, s.k], Dim=[oh, ow], PE=1, SIMD=1,
            inputDataType=idt, weightDataType=wdt, outputDataType=odt, noActivation=int(last), ActVal=0, **hw))
        weights = np.zeros((s.c_in, 1, s.k, s.k), np.float32)
    else:
        mw = s.k * s.k * s.c_in
        vectors = [1, *s.out_hw] if s.kind != "linear" else [1, *(s.out_hw or ())]
        nodes.append(helper.make_node(
            "MVAU", inputs, ["y"], MW=mw, MH=s.c_out, PE=1, SIMD=1, inputDataType=idt, weightDataType=wdt,
            outputDataType=odt, noActivation=int(last), numInputVectors=vectors, ActVal=0,
            mem_mode="internal_decoupled", binaryXnorMode=0, **hw))
        weights = np.zeros((mw, s.c_out), np.float32)
    inits.append(numpy_helper.from_array(weights, "W"))
    if not last:
        inits.append(numpy_helper.from_array(np.zeros((s.c_out, 2**8 - 1), np.float32), "T"))
    y_shape = [1, *(s.out_hw if s.kind != "linear" else (s.out_hw or ())), s.c_out]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], initializer=inits)
    model = ModelWrapper(qonnx_make_model(graph))
    model.set_tensor_datatype("x", DataType[idt])
    model.set_tensor_datatype("W", DataType[wdt])
    return model
