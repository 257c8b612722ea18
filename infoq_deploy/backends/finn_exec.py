"""FINN (finn-plus 1.6): its QONNX front end, streamlining and hardware layers, run by FINN itself.

The steps are FINN's own build steps, in the order its ResNet recipe uses them
(``finn/builder/custom_step_library/resnet.py``), written out here because importing
``finn.builder`` pulls in the synthesis tool chain's Python dependencies (mip, scikit-learn)
that nothing below needs:

1. ``step_qonnx_to_finn``: qonnx cleanup, ``ConvertQONNXtoFINN`` with the build config's
   ``max_multithreshold_bit_width`` raised from 8 to ``MULTITHRESHOLD_BITS``, so the lossless
   accumulator quantizer in front of the average pool (export/passes/quant_on_grid.py) becomes
   a threshold layer too; FINN then maps it to its Requant layer.
2. ``step_resnet_tidy`` and ``step_resnet_streamline`` (``StreamlinePlus``, conv lowering),
   with FINN's ``RoundAndClipThresholds`` replaced by ``finn_rounding.RoundThresholdsHalfToEven``:
   FINN's thresholds round a value exactly half-way between two levels up, whatever the Quant
   node's ``rounding_mode``; the file (and qonnx, hls4ml, Brevitas) rounds it to even. On
   power-of-two scales such ties are common, so without it FINN's result differs from the
   file's by a step at each (docs/upstream/README.md, "FINN rounds ties up"). A FINN build
   takes it as a custom step: ``step_resnet_streamline`` below in place of FINN's.
3. ``step_convert_to_hw`` with the default build config (thresholds kept inside the MVAUs,
   Requant from 9 bits up, the first Transpose left as is).

The result must consist of FINN hardware layers only (domain ``finn.custom_op.fpgadataflow``);
anything else is a refusal that names the node. FINN's execution of that graph (each hardware
layer's Python model, the reference its C++ and RTL simulations are tested against) is
compared with qonnx's execution of the exported file.

All of it runs inside ``linear_time()`` (export/qonnx_linear.py): every FINN transformation
ends in qonnx's cleanup, whose helpers scan the graph per node; the same hardware graph, byte
for byte, in about half the time on ResNet-20 (bench/bench_finn_speed.py).
"""

from __future__ import annotations

import importlib.util
import time
from collections import Counter

import numpy as np
import onnx

from infoq_deploy.allocate.fpga_resources import MAX_THRESHOLD_BITS as MULTITHRESHOLD_BITS
from infoq_deploy.allocate.fpga_resources import quiet_finn as _quiet
from infoq_deploy.core.errors import ConsumerRefused
from infoq_deploy.export.qonnx_linear import linear_time

HW_DOMAIN = "finn.custom_op.fpgadataflow"
# FINN's Python execution of its hardware layers on this project's machine
# (bench/results/fpga_consumers_finn.json): 0.27 s per image on the default model (2 M
# multiply-accumulates), 0.55 s on ResNet-20 (41 M); a per-node cost plus a per-MAC one
SECONDS_PER_INPUT = 0.25
SECONDS_PER_MAC = 15e-9


def unavailable() -> str | None:
    """Why this back end cannot run here (None: it can)."""
    if importlib.util.find_spec("finn") is None:
        return "FINN is not installed (pip install --no-deps finn-plus==1.6.1; README, 'FPGA flows')"
    return None


def seconds_per_input(model: onnx.ModelProto) -> float:
    from infoq_deploy.backends.hls4ml_csim import multiply_accumulates

    return SECONDS_PER_INPUT + multiply_accumulates(model) * SECONDS_PER_MAC


def _qonnx_to_finn(model):
    from qonnx.util.cleanup import cleanup_model
    from finn.transformation.qonnx.convert_qonnx_to_finn import ConvertQONNXtoFINN
    from finn.transformation.qonnx.quant_act_to_multithreshold import default_filter_function_generator

    model = cleanup_model(model)
    return model.transform(ConvertQONNXtoFINN(
        filter_function=default_filter_function_generator(max_multithreshold_bit_width=MULTITHRESHOLD_BITS)))


def _resnet_tidy(model):
    from qonnx.transformation.composed import ComposedTransformation
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.transformation.general import (
        GiveReadableTensorNames, GiveUniqueNodeNames, GiveUniqueParameterTensors, RemoveUnusedTensors)
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from finn.transformation.streamline.remove import RemoveIdentityReshape, RemoveIdentityTranspose

    return model.transform(ComposedTransformation([
        InferDataTypes(), InferShapes(), GiveUniqueNodeNames(), GiveReadableTensorNames(), RemoveUnusedTensors(),
        GiveUniqueParameterTensors(), FoldConstants(), RemoveIdentityReshape(), RemoveIdentityTranspose(),
        InferShapes(), InferDataTypes(),
    ]))


def _resnet_streamline(model):
    from qonnx.transformation.composed import ComposedTransformation
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul
    import finn.transformation.streamline.absorb as absorb
    from finn.transformation.streamline.reorder import MoveMulPastAdd
    from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds
    from finn.transformation.streamline.streamline_plus import StreamlinePlus

    from infoq_deploy.backends.finn_rounding import RoundThresholdsHalfToEven

    rounding = RoundThresholdsHalfToEven()  # one instance: it remembers the thresholds it has rounded

    def streamline_plus():
        return ComposedTransformation([rounding if isinstance(t, RoundAndClipThresholds) else t
                                       for t in StreamlinePlus().transformations])

    model = model.transform(ComposedTransformation([MoveMulPastAdd(), absorb.AbsorbScalarBiasIntoMultiThreshold()]))
    model = model.transform(streamline_plus())
    model = model.transform(ComposedTransformation([
        LowerConvsToMatMul(), absorb.AbsorbAddIntoMultiThreshold(), absorb.AbsorbTransposeIntoMultiThreshold()]))
    return model.transform(streamline_plus())


def step_resnet_streamline(model, cfg=None):
    """A drop-in for FINN's ``custom_step_library.resnet.step_resnet_streamline`` in a FINN build
    (``DataflowBuildConfig(steps=[..., step_resnet_streamline, ...])``): the same passes, with
    ties rounded to even as the file says (module docstring, step 2)."""
    return _resnet_streamline(model)


def _convert_to_hw(model):
    """``step_convert_to_hw`` with the default DataflowBuildConfig, for the operators our exports hold."""
    from qonnx.transformation.infer_data_layouts import InferDataLayouts
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    import finn.transformation.streamline.absorb as absorb
    from finn.transformation.fpgadataflow.absorb_into_requant import AbsorbElementwiseOpsIntoRequant
    from finn.transformation.fpgadataflow.convert_to_hw import (
        concat, conv_inp_gen, duplicate_streams, elementwise_binary_operation, fm_padding, global_acc_pool,
        pool, pool_from_reduce, quantized_matrix_vector_activation as mvau, relu_as_elementwise_max, requant,
        reshape, shuffle, thresholding, vector_vector_activation as vvau)
    from finn.transformation.move_reshape import RemoveCNVtoFCFlatten
    from finn.transformation.qonnx.give_unique_node_names_recursive import GiveUniqueNodeNamesRecursive

    def when(ops, transformation):
        nonlocal model
        if any(model.get_nodes_by_op_type(op) for op in ops):
            model = model.transform(transformation)

    when(["MatMul"], mvau.InferQuantizedMatrixVectorActivation())
    when(["MatMul"], vvau.InferVectorVectorActivation())
    when(["MultiThreshold", "Quant"], requant.InferRequantLayer(bitwidth_threshold=9))
    when(["MultiThreshold"], thresholding.InferThresholdingLayer())
    when(["Pad"], fm_padding.InferFMPadding())
    when(["MaxPool", "AveragePool", "MaxPoolNHWC", "QuantAvgPool2d"], pool.InferPool())
    when(["ReduceMax", "ReduceSum", "ReduceMean"], pool_from_reduce.InferPoolFromReduce())
    when(["Im2Col"], conv_inp_gen.InferConvInpGen())
    when(["ConvolutionInputGenerator"], RemoveCNVtoFCFlatten())
    when(["Concat"], concat.InferConcatLayer())
    when(["Mul", "Div", "Sub", "Add"], elementwise_binary_operation.InferElementwiseBinaryOperation())
    when(["Relu"], relu_as_elementwise_max.InferReLUAsElementwiseMax())
    when(["GlobalAveragePool"], global_acc_pool.InferGlobalAccPoolLayer())
    model = model.transform(duplicate_streams.InferDuplicateStreamsLayer())
    when(["Requant"], AbsorbElementwiseOpsIntoRequant())
    for transformation in (absorb.AbsorbConsecutiveTransposes(), RemoveCNVtoFCFlatten(), GiveUniqueNodeNamesRecursive(),
                           InferDataLayouts(), InferDataTypes(), InferShapes(), reshape.InferReshape()):
        model = model.transform(transformation)
    when(["Transpose"], shuffle.InferShuffle())
    return model


def prepare(model: onnx.ModelProto):
    """FINN's front end on ``model``, up to its hardware layers (a qonnx ModelWrapper)."""
    from qonnx.core.modelwrapper import ModelWrapper

    with linear_time():  # qonnx's helpers scan the graph per tensor after every transformation
        wrapped = ModelWrapper(model)
        for step in (_qonnx_to_finn, _resnet_tidy, _resnet_streamline, _convert_to_hw):
            wrapped = _step(step, wrapped)
    return wrapped


def _step(step, wrapped):
    try:
        with _quiet():
            return step(wrapped)
    except Exception as exc:  # FINN's own message, one line
        raise ConsumerRefused(f"{step.__name__.strip('_')}: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}") from exc


def not_hardware(wrapped) -> list[str]:
    """The nodes FINN left outside its hardware layers, each with what it reads. A layout
    Transpose of the graph's input or output is not one: FINN's build leaves the first one to
    the host on purpose (``infer_shuffle_skip_first``), outside the dataflow partition."""
    from qonnx.core.datatype import DataType

    ends = {i.name for i in wrapped.graph.input} | {o.name for o in wrapped.graph.output}
    left = []
    for node in wrapped.graph.node:
        if node.domain.startswith(HW_DOMAIN) or node.op_type == "Transpose" and (
                node.input[0] in ends or node.output[0] in ends):
            continue
        reads = wrapped.get_tensor_datatype(node.input[0]) if node.input else None
        note = " reading a float tensor" if reads == DataType["FLOAT32"] else ""
        left.append(f"{node.name} ({node.op_type}{note})")
    return left


def session(model: onnx.ModelProto):
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    start = time.perf_counter()
    wrapped = prepare(model)
    left = not_hardware(wrapped)
    if left:
        raise ConsumerRefused(f"FINN left {len(left)} node(s) outside its hardware layers: " + ", ".join(left[:6])
                              + (", ..." if len(left) > 6 else ""))
    from finn.core.onnx_exec import execute_onnx

    iname, oname = wrapped.graph.input[0].name, wrapped.graph.output[0].name
    in_shape = tuple(wrapped.get_tensor_shape(iname))

    def run(x: np.ndarray) -> np.ndarray:
        outs = []
        with _quiet(), linear_time():
            for one in np.asarray(x, dtype=np.float32).reshape(len(x), *in_shape[1:]):
                outs.append(np.asarray(execute_onnx(wrapped, {iname: one[None]})[oname]).reshape(-1))
        return np.stack(outs)

    run.build_seconds = time.perf_counter() - start
    run.precision = None
    run.graph_ops = dict(Counter(node.op_type for node in wrapped.graph.node))
    return run


def resource_estimates(model: onnx.ModelProto, fpga) -> list[dict]:
    """FINN's own estimate of the hardware it builds from ``model``: its front end and hardware
    layers as in `prepare`, then ``SpecializeLayers`` for ``fpga.part``, ``SetFolding`` at
    ``fpga.cycles_per_frame`` (as allocate/fpga_resources.py folds each layer) and
    ``res_estimation``. One row per node: name, op_type, luts, brams, dsps, cycles, the
    producer of its input, and the layer-shape attributes of MVAU / VVAU nodes."""
    from finn.analysis.fpgadataflow.res_estimation import res_estimation
    from finn.transformation.fpgadataflow.set_folding import SetFolding
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from qonnx.custom_op.registry import getCustomOp

    wrapped = prepare(model)
    with _quiet(), linear_time():
        wrapped = wrapped.transform(SpecializeLayers(fpga.part))
        wrapped = wrapped.transform(SetFolding(int(fpga.cycles_per_frame), mvau_wwidth_max=int(fpga.mvau_wwidth_max),
                                               two_pass_relaxation=False))
        res = res_estimation(wrapped, fpga.part)
    rows = []
    for node in wrapped.graph.node:
        if not node.domain.startswith(HW_DOMAIN):
            continue
        op = getCustomOp(node)
        attrs = op.get_nodeattr_types()
        r = res.get(node.name, {})
        producer = wrapped.find_producer(node.input[0])
        with _quiet():  # some layers warn that their cycle model depends on the Vivado version
            cycles = int(op.get_exp_cycles())
        row = {"name": node.name, "op_type": node.op_type, "luts": int(r.get("LUT", 0)),
               "brams": int(r.get("BRAM_18K", 0)), "dsps": int(r.get("DSP", 0)), "cycles": cycles,
               "producer": producer.name if producer is not None else None}
        for key in ("MW", "MH", "numInputVectors", "Channels", "Kernel", "Dim", "weightDataType"):
            if key in attrs:
                value = op.get_nodeattr(key)
                row[key] = list(value) if isinstance(value, (list, tuple)) else value
        rows.append(row)
    return rows


def per_layer(rows: list[dict], layers) -> tuple[dict[str, dict], dict]:
    """FINN's estimate rows (`resource_estimates`) grouped by our layers: each layer's compute
    node (MVAU / VVAU with the layer's shape, in graph order) and the sliding window that feeds
    it; and the sum over every other node (padding, pools and their windows, thresholds, stream
    duplication, residual adds), which belongs to no layer."""
    import math

    from infoq_deploy.allocate.fpga_resources import hardware_signature

    def signature(row):
        vectors = math.prod(row.get("numInputVectors") or row.get("Dim") or [1])
        if row["op_type"].startswith("VVAU"):
            return ("VVAU", row["Channels"], math.prod(row["Kernel"]), vectors)
        return ("MVAU", row["MW"], row["MH"], vectors)

    by_name = {r["name"]: r for r in rows}
    compute = [r for r in rows if r["op_type"].startswith(("MVAU", "VVAU"))]
    used, out = set(), {}
    for layer in sorted(layers, key=lambda l: l.order):
        want = hardware_signature(layer)
        match = next((r for r in compute if r["name"] not in used and signature(r) == want), None)
        if match is None:
            raise ConsumerRefused(f"FINN's graph has no hardware layer for {layer.name} ({want[0]} of shape {want[1:]})")
        nodes = [match]
        window = by_name.get(match["producer"])
        if window is not None and window["op_type"].startswith("ConvolutionInputGenerator"):
            nodes.insert(0, window)
        used.update(n["name"] for n in nodes)
        out[layer.name] = {"luts": sum(n["luts"] for n in nodes), "brams": sum(n["brams"] for n in nodes),
                           "dsps": sum(n["dsps"] for n in nodes), "cycles": max(n["cycles"] for n in nodes),
                           "nodes": [n["name"] for n in nodes],
                           "weight_type": match.get("weightDataType")}
    rest = [r for r in rows if r["name"] not in used]
    return out, {"luts": sum(r["luts"] for r in rest), "brams": sum(r["brams"] for r in rest),
                 "dsps": sum(r["dsps"] for r in rest), "cycles": max((r["cycles"] for r in rest), default=0),
                 "nodes": len(rest)}
