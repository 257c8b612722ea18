"""The Brevitas quantized model of an allocation: build it, calibrate it, read its bits back.

The quantizers below restate `core/quantizer.py` in Brevitas's own injector style, so that the
deployed model quantizes exactly as the profiler simulated (DESIGN.md, "one quantizer,
everywhere"). Two Brevitas defaults differ from that reference and are replaced:

- Brevitas divides the range by ``2^(b-1)`` for signed non-narrow tensors, and its
  ``POWER_OF_TWO`` scaling rounds the range and that integer threshold to powers of two
  separately (scale = 2^ceil(log2 max) / 2^(b-1), which clips the largest value). The
  reference divides by the largest level (``2^(b-1)-1`` signed, ``2^b-1`` unsigned) and
  rounds the *resulting scale* up to a power of two. `MaxIntScaling` and
  `CeilPowerOfTwoScale` implement exactly that.
- Brevitas's `calibration_mode` averages per-batch statistics (percentile by default);
  the reference uses the global absolute maximum of the calibration set. `calibrate`
  collects the global min/max with Brevitas's quantization disabled, then sets each
  activation quantizer's signedness and learned scale from them.

Biases of layers with quantized weights and inputs are int32 at the accumulator scale
(input scale x weight scale, Brevitas's `Int32Bias`), as integer hardware adds them.
ONNX Runtime does the same to a float bias between DequantizeLinear'd inputs and weights
(its WeightBiasQuantization pass), so with a float bias the QCDQ file would not compute
what the model computes (ResNet-20 at 4 bits: 86 % top-1 agreement on 1,000 CIFAR-10
images, 100 % with the int32 bias). `core/quantizer.py` leaves biases in float: a difference
of at most half an accumulator step per output.

Scales are learned parameters (weights: initialised from the weight's max, activations:
from the calibrated max), so LSQ-style fine-tuning is a plain optimizer loop.

Residual adds and concatenations, one quantizer per tensor (`importing/joins.py`): a join
input that a quantized layer also reads (a ResNet block's input, read by its first conv and
by the shortcut) goes through that layer's input quantizer, so the file stores the tensor
once, as hls4ml and FINN need. The join's other inputs share ONE `QuantIdentity`. That
join quantizer is not part of the allocation (which covers layers only); it uses
``join_bits`` (8 by default, so its error stays well under any <= 8-bit consumer's) and
exists only when a quantized layer reads the join's result. ``meta[JOIN_INPUTS_KEY]``
records, per join, the (bits, scale) of every input, which `verify` checks in the file.
"""

from __future__ import annotations

import copy
import numbers
import operator
import sys
from collections import deque

import brevitas
import brevitas.nn as qnn
import torch
import torch.fx
from brevitas.core.function_wrapper import CeilSte, LogTwo
from brevitas.core.restrict_val import PowerOfTwoRestrictValue
from brevitas.function.ops import max_int
from brevitas.graph.calibrate import quantization_status_manager
from brevitas.inject import ExtendedInjector
from brevitas.inject.enum import RestrictValueType, ScalingImplType, ScalingPerOutputType, StatsOp
from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer
from brevitas.proxy.runtime_quant import ActQuantProxyFromInjector
from brevitas.quant.base import IntQuant, NarrowIntQuant
from brevitas.quant.scaled_int import Int32Bias
from brevitas.quant.solver import ActQuantSolver, WeightQuantSolver
from brevitas.quant_tensor import QuantTensor
from torch import Tensor, nn
from tqdm import tqdm

from infoq_deploy.core import devices
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.quantizer import FLOAT_BITS, QuantSpec, RangeObserver, weight_threshold
from infoq_deploy.importing.joins import is_tensor, keeps_grid, plan_joins
from infoq_deploy.importing.joins import join_inputs as join_inputs_of
from infoq_deploy.importing.layers import QUANTIZABLE, Layer
from infoq_deploy.importing.pool_inputs import plan_pool_inputs

MIN_BITS = 2  # 1 bit has no symmetric level besides 0 under the reference rule
MAX_INT_BITS = 16
DEFAULT_JOIN_BITS = 8
SCALE_MIN = 1e-12  # the reference clamps the range at 1e-12 before dividing
SPEC_KEY, JOINS_KEY, CALIBRATED_KEY = "infoq_spec", "infoq_joins", "infoq_calibrated"
JOIN_INPUTS_KEY = "infoq_join_inputs"
POOL_INPUTS_KEY = "infoq_pool_inputs"

_QUANT_CLASS = {
    nn.Conv1d: qnn.QuantConv1d,
    nn.Conv2d: qnn.QuantConv2d,
    nn.Conv3d: qnn.QuantConv3d,
    nn.Linear: qnn.QuantLinear,
}


# ----------------------------------------------------------------------------- quantizers


class MaxIntScaling(brevitas.jit.ScriptModule):
    """Integer threshold = the largest level (2^(b-1)-1 signed, 2^b-1 unsigned), as core/quantizer.py."""

    __constants__ = ["signed"]

    def __init__(self, signed: bool) -> None:
        super().__init__()
        self.signed = signed

    @brevitas.jit.script_method
    def forward(self, bit_width: Tensor) -> Tensor:
        return max_int(self.signed, False, bit_width)


class CeilPowerOfTwoScale(brevitas.jit.ScriptModule):
    """Round a (linear-domain) scale up to a power of two; straight-through gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.log2 = LogTwo()
        self.ceil_po2 = PowerOfTwoRestrictValue(restrict_value_float_to_int_impl=CeilSte())

    @brevitas.jit.script_method
    def forward(self, x: Tensor) -> Tensor:
        return self.ceil_po2(self.log2(x))


class WeightPerTensorQuant(NarrowIntQuant, WeightQuantSolver):
    """Signed narrow-range weights, scale = max|w| / (2^(b-1)-1), learned after init."""

    bit_width = 8
    scaling_impl_type = ScalingImplType.PARAMETER_FROM_STATS
    scaling_stats_op = StatsOp.MAX
    scaling_per_output_type = ScalingPerOutputType.TENSOR
    restrict_scaling_type = RestrictValueType.FP
    scaling_min_val = SCALE_MIN
    int_scaling_impl = MaxIntScaling


class WeightPerChannelQuant(WeightPerTensorQuant):
    scaling_per_output_type = ScalingPerOutputType.CHANNEL


class CeilPowerOfTwoScaling(ExtendedInjector):
    """Scale = (range / largest level) rounded up to a power of two (the "po2" scale rule)."""

    restrict_scale_threshold_impl = CeilPowerOfTwoScale


class WeightPerTensorPo2Quant(CeilPowerOfTwoScaling, WeightPerTensorQuant):
    pass


class WeightPerChannelPo2Quant(CeilPowerOfTwoScaling, WeightPerChannelQuant):
    pass


class ActQuant(IntQuant, ActQuantSolver):
    """Per-tensor activations, scale = calibrated max|x| / largest level, learned after init.

    Signed range is the full [-2^(b-1), 2^(b-1)-1] (not narrow), as core/quantizer.py; unsigned
    variants are made with ``.let(signed=False)``. ``scaling_init`` is the calibrated max.
    """

    bit_width = 8
    scaling_impl_type = ScalingImplType.PARAMETER
    scaling_per_output_type = ScalingPerOutputType.TENSOR
    restrict_scaling_type = RestrictValueType.FP
    scaling_min_val = SCALE_MIN
    scaling_init = 1.0  # placeholder until `calibrate`
    int_scaling_impl = MaxIntScaling


class ActPo2Quant(CeilPowerOfTwoScaling, ActQuant):
    pass


_WEIGHT_QUANT = {  # (per_channel, po2) -> quantizer
    (False, False): WeightPerTensorQuant,
    (True, False): WeightPerChannelQuant,
    (False, True): WeightPerTensorPo2Quant,
    (True, True): WeightPerChannelPo2Quant,
}


def weight_quantizer(bits: int, spec: QuantSpec):
    """The Brevitas weight quantizer for ``bits`` under ``spec`` (None: float weights)."""
    if bits >= FLOAT_BITS:
        return None
    return _WEIGHT_QUANT[(spec.weight_per_channel, spec.weight_po2)].let(bit_width=bits)


def act_quantizer(bits: int, spec: QuantSpec, signed: bool = True, absmax: float = 1.0):
    """The Brevitas activation quantizer for ``bits`` with a calibrated range (None: float)."""
    if bits >= FLOAT_BITS:
        return None
    quant = ActPo2Quant if spec.act_po2 else ActQuant
    return quant.let(bit_width=bits, signed=signed, scaling_init=max(float(absmax), SCALE_MIN))


def _act_proxy(owner: nn.Module, quant):
    # What Brevitas's QuantProxyMixin does for an input/act quantizer without an activation.
    quant = quant.let(act_impl=None, passthrough_act=True)
    return quant.proxy_class(owner, quant)


# ----------------------------------------------------------------------------- build


def _is_bits(bits) -> bool:
    return (
        isinstance(bits, numbers.Integral)
        and not isinstance(bits, bool)
        and (MIN_BITS <= bits <= MAX_INT_BITS or bits == FLOAT_BITS)
    )


def _check_allocation(gm: torch.fx.GraphModule, layers: list[Layer], allocation: dict) -> dict[str, tuple[int, int]]:
    """The allocation as plain int pairs, or UserError naming what is wrong."""
    names = [layer.name for layer in layers]
    extra = sorted(set(allocation) - set(names))
    missing = [n for n in names if n not in allocation]
    if extra:
        raise UserError(
            f"the allocation names layer(s) {', '.join(extra)} that the model does not have; "
            "allocate for this model's layer table"
        )
    if missing:
        raise UserError(
            f"the allocation has no bit-widths for layer(s) {', '.join(missing)}; "
            "give every layer of the layer table a (w_bits, a_bits) pair"
        )
    modules = dict(gm.named_modules())
    for name in names:
        if not isinstance(modules.get(name), QUANTIZABLE):
            raise UserError(
                f"layer {name} of the layer table is not a Conv/Linear module of this model; "
                "rebuild the layer table from this model"
            )
    for name, pair in allocation.items():
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise UserError(f"the allocation for layer {name} is {pair!r}; give a (w_bits, a_bits) pair")
        for bits in pair:
            if not _is_bits(bits):
                raise UserError(
                    f"layer {name} is allocated {bits!r} bits; use an integer from {MIN_BITS} to "
                    f"{MAX_INT_BITS}, or {FLOAT_BITS} for float"
                )
    return {name: (int(w), int(a)) for name, (w, a) in allocation.items()}


def _quant_layer(module: nn.Module, w_bits: int, a_bits: int, spec: QuantSpec) -> nn.Module:
    cls = _QUANT_CLASS[type(module)]
    integer = w_bits < FLOAT_BITS and a_bits < FLOAT_BITS
    common = dict(
        weight_quant=weight_quantizer(w_bits, spec),
        input_quant=act_quantizer(a_bits, spec),
        bias_quant=Int32Bias if integer and module.bias is not None else None,
        return_quant_tensor=False,
        bias=module.bias is not None,
        device=module.weight.device,
        dtype=module.weight.dtype,
    )
    if isinstance(module, nn.Linear):
        new = cls(module.in_features, module.out_features, **common)
    else:
        new = cls(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            padding_mode=module.padding_mode,
            **common,
        )
    with torch.no_grad():
        # in-place: the weight quantizer tracks this very Parameter object
        new.weight.copy_(module.weight)
        if module.bias is not None:
            new.bias.copy_(module.bias)
    if new.weight_quant.is_quant_enabled:
        new.quant_weight()  # fixes the learned scale from these weights now, not at first use
        if spec.scale_rule != "minmax":
            # the learned parameter is the threshold (the scale is threshold / largest level, then
            # po2), so the reference rule's threshold makes Brevitas's scale the reference scale
            with torch.no_grad():
                value = new.weight_quant.tensor_quant.scaling_impl.value
                value.copy_(weight_threshold(module.weight, w_bits, spec).reshape(value.shape))
    new.train(module.training)
    return new


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def _feeds_quantized_layer(node: torch.fx.Node, layer_bits: dict[str, tuple[int, int]]) -> bool:
    """Whether a layer with a quantized input reads (through any ops) the value of ``node``."""
    seen, todo = set(), deque(node.users)
    while todo:
        user = todo.popleft()
        if user in seen:
            continue
        seen.add(user)
        if user.op == "call_module" and user.target in layer_bits:
            if layer_bits[user.target][1] < FLOAT_BITS:
                return True
            continue  # a float layer ends this path
        todo.extend(user.users)
    return False


def _plain(x):
    """The tensor of a quantizer's output (Brevitas proxies return a QuantTensor while quantizing)."""
    return x.value if isinstance(x, QuantTensor) else x


def _path_share(node: torch.fx.Node, shared_by: dict[str, str], modules: dict) -> str | None:
    """The layer whose input quantizer feeds ``node``, directly or through the grid-keeping path `plan_joins` found."""
    while node.name not in shared_by:
        tensor_args = [a for a in node.all_input_nodes if is_tensor(a)]
        if not (keeps_grid(node, modules) and len(tensor_args) == 1):
            return None
        node = tensor_args[0]
    return shared_by[node.name]


def _insert_join_quantizers(gm: torch.fx.GraphModule, allocation, spec: QuantSpec, join_bits: int) -> list[str]:
    quantized = {name for name, (_, a_bits) in allocation.items() if a_bits < FLOAT_BITS}
    plan = plan_joins(gm, quantized)
    nodes = {n.name: n for n in gm.graph.nodes}
    modules = dict(gm.named_modules())
    shared_by: dict[str, str] = {}  # inserted shared-quantizer output node -> layer
    # One quantizer per tensor: a join input that a quantized layer also reads goes through
    # that layer's own input quantizer (a second call of the same module: same scale, same
    # bits, one learned parameter); the QONNX export then merges the two identical Quant nodes.
    for share in plan.shares:
        consumer, source = nodes[share.consumer], nodes[share.source]
        with gm.graph.inserting_before(consumer):
            q = gm.graph.call_module(f"{share.layer}.input_quant", args=(source,))
            value = gm.graph.call_function(_plain, args=(q,))
        consumer.replace_input_with(source, value)
        shared_by[value.name] = share.layer
    names = []
    join_quant = {}  # join node name -> its own quantizer module
    for join_name, unshared in plan.own.items():
        node = nodes[join_name]
        if not _feeds_quantized_layer(node, allocation):
            continue
        name = f"{node.name}_quant"
        while hasattr(gm, name):
            name += "_"
        join = qnn.QuantIdentity(act_quant=act_quantizer(join_bits, spec), return_quant_tensor=False)
        gm.add_submodule(name, join.train(gm.training))
        names.append(name)
        join_quant[join_name] = name
        with gm.graph.inserting_before(node):
            for inp_name in unshared:
                inp = nodes[inp_name]
                node.replace_input_with(inp, gm.graph.call_module(name, args=(inp,)))
        if node.target is operator.iadd:
            node.target = operator.add  # the quantized operand is a fresh tensor: no aliasing
        elif node.op == "call_method" and node.target == "add_":
            node.target = "add"
    # what quantizes each input of each join, in graph order (verify compares the graph with it)
    record = []
    for node in gm.graph.nodes:
        ins = join_inputs_of(node)
        if ins is None:
            continue
        entries = []
        for inp in ins:
            if node.name in join_quant and inp.op == "call_module" and inp.target == join_quant[node.name]:
                entries.append(("join", join_quant[node.name]))
            else:
                layer = _path_share(inp, shared_by, modules)
                entries.append(("layer", layer) if layer else None)
        if any(e is not None for e in entries):
            record.append(entries)
    gm.meta[JOIN_INPUTS_KEY] = record
    gm.graph.lint()
    gm.recompile()
    return names


def _quantizer_output(node: torch.fx.Node, modules: dict) -> bool:
    """Whether ``node`` is an activation quantizer's output (a join's own, or a layer's shared
    one), directly or through grid-keeping ops (the option-A shortcut's slice and zero pad)."""
    while True:
        if node.op == "call_function" and node.target is _plain:
            node = node.args[0]
        if node.op == "call_module" and isinstance(modules.get(node.target), (qnn.QuantIdentity, ActQuantProxyFromInjector)):
            return True
        tensor_args = [a for a in node.all_input_nodes if is_tensor(a)]
        if not (keeps_grid(node, modules) and len(tensor_args) == 1):
            return False
        node = tensor_args[0]


def _insert_pool_quantizers(gm: torch.fx.GraphModule, allocation, spec: QuantSpec, bits: int) -> list[str]:
    """A QuantIdentity on the input of each average pool between two integer layers (importing/pool_inputs.py)."""
    integer = {n for n, (w, a) in allocation.items() if w < FLOAT_BITS and a < FLOAT_BITS}
    quantized = {n for n, (_, a) in allocation.items() if a < FLOAT_BITS}
    nodes = {n.name: n for n in gm.graph.nodes}
    modules = dict(gm.named_modules())
    # a residual add whose every input a quantizer writes (the join quantizers are in by now)
    # is an integer add once its output is quantized too
    integer_joins = {n.name for n in gm.graph.nodes if (ins := join_inputs_of(n)) is not None
                     and all(_quantizer_output(i, modules) for i in ins)}
    names = []
    for pool_name in plan_pool_inputs(gm, integer, quantized, integer_joins):
        pool = nodes[pool_name]
        name = f"{pool.name}_input_quant"
        while hasattr(gm, name):
            name += "_"
        gm.add_submodule(name, qnn.QuantIdentity(act_quant=act_quantizer(bits, spec), return_quant_tensor=False).train(gm.training))
        source = pool.args[0]
        with gm.graph.inserting_before(pool):
            pool.replace_input_with(source, gm.graph.call_module(name, args=(source,)))
        names.append(name)
    gm.graph.lint()
    gm.recompile()
    return names


def build_quant_model(
    gm: torch.fx.GraphModule,
    layers: list[Layer],
    allocation: dict[str, tuple[int, int]],
    spec: QuantSpec,
    *,
    join_bits: int = DEFAULT_JOIN_BITS,
    pool_inputs: bool = False,
) -> torch.fx.GraphModule:
    """A copy of ``gm`` with each layer quantized to its (w_bits, a_bits); call `calibrate` next.

    Layers at 32/32 bits stay plain torch modules; the others become Brevitas
    ``QuantConvNd``/``QuantLinear`` with ``weight_quant`` and ``input_quant`` (a_bits is the
    layer's input activation). Residual adds and concatenations feeding a quantized layer get
    one shared ``QuantIdentity`` on all their inputs (module ``<node>_quant``). With
    ``pool_inputs`` (targets whose runtime fuses a layer only when its output is quantized),
    an average pool between two integer layers gets one on its input (``<pool>_input_quant``),
    at ``join_bits`` too.
    """
    allocation = _check_allocation(gm, layers, allocation)
    if not (_is_bits(join_bits) and join_bits < FLOAT_BITS):
        raise UserError(f"join_bits is {join_bits}; use an integer from {MIN_BITS} to {MAX_INT_BITS}")
    qmodel = copy.deepcopy(gm)
    modules = dict(qmodel.named_modules())
    for layer in layers:
        w_bits, a_bits = allocation[layer.name]
        if w_bits < FLOAT_BITS or a_bits < FLOAT_BITS:
            _set_submodule(qmodel, layer.name, _quant_layer(modules[layer.name], w_bits, a_bits, spec))
    joins = _insert_join_quantizers(qmodel, allocation, spec, join_bits)
    if pool_inputs:
        qmodel.meta[POOL_INPUTS_KEY] = _insert_pool_quantizers(qmodel, allocation, spec, join_bits)
    # GraphModule.meta survives deepcopy (plain attributes do not)
    qmodel.meta[SPEC_KEY] = spec
    qmodel.meta[JOINS_KEY] = joins
    qmodel.meta[CALIBRATED_KEY] = not _act_sites(qmodel)  # nothing to calibrate when all float
    return qmodel


def is_calibrated(qmodel: nn.Module) -> bool:
    return bool(getattr(qmodel, "meta", {}).get(CALIBRATED_KEY, False))


# ----------------------------------------------------------------------------- calibrate


def _act_sites(qmodel: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Every enabled activation quantizer: name -> (owner module, proxy attribute)."""
    sites = {}
    for name, module in qmodel.named_modules():
        if isinstance(module, QuantWeightBiasInputOutputLayer) and module.input_quant.is_quant_enabled:
            sites[name] = (module, "input_quant")
        elif isinstance(module, qnn.QuantIdentity) and module.act_quant.is_quant_enabled:
            sites[name] = (module, "act_quant")
    return sites


def calibrate(qmodel: nn.Module, x: Tensor, batch_size: int = 256, progress: bool = False) -> None:
    """Set every activation quantizer's signedness and scale from the float values seen on ``x``.

    Ranges are global over ``x``, chosen by the spec's scale rule with the profilers' own
    `quantizer.RangeObserver` (max|x|, or under "mse" a histogram pass more), measured with
    all quantization disabled (weights too), as Brevitas's calibration_mode does.
    """
    if x.shape[0] == 0:
        raise UserError("the calibration set is empty; pass at least one input")
    if batch_size < 1:
        raise UserError(f"the calibration batch size is {batch_size}; use a positive integer")
    spec: QuantSpec = qmodel.meta[SPEC_KEY]
    sites = _act_sites(qmodel)
    observers = {name: RangeObserver(spec) for name in sites}

    def record(name):
        def hook(_module, inputs, _output):
            observers[name].observe(inputs[0].value if hasattr(inputs[0], "value") else inputs[0])

        return hook

    handles = [getattr(owner, attr).register_forward_hook(record(name)) for name, (owner, attr) in sites.items()]
    device = devices.of(qmodel)
    was_training = qmodel.training
    passes = 2 if spec.scale_rule != "minmax" else 1
    try:
        with torch.no_grad(), quantization_status_manager(
            qmodel, disable_act_quant=True, disable_weight_quant=True, disable_bias_quant=True, is_training=False
        ), tqdm(total=passes * x.shape[0], desc="calibrate", unit="img", disable=not progress, leave=False,
                  dynamic_ncols=True, file=sys.stderr) as bar:
            for p in range(passes):
                if p == 1:
                    for o in observers.values():
                        o.start_histogram()
                for start in range(0, x.shape[0], batch_size):
                    batch = x[start : start + batch_size]
                    qmodel(batch.to(device))
                    bar.update(len(batch))
    finally:
        for handle in handles:
            handle.remove()

    unseen = [name for name, o in observers.items() if not o.seen]
    if unseen:
        raise RuntimeError(f"calibration never reached the activation quantizer(s) {', '.join(unseen)}")
    for name, (owner, attr) in sites.items():
        r = observers[name].result()
        _, bits = act_quant_params(getattr(owner, attr))
        setattr(owner, attr, _act_proxy(owner, act_quantizer(bits, spec, signed=r.signed,
                                                             absmax=r.threshold(bits, spec))))
    qmodel.train(was_training)
    qmodel.meta[CALIBRATED_KEY] = True
    fit_bias_grid(qmodel)  # needs the input scales just set


def act_signedness(qmodel: nn.Module) -> dict[str, bool]:
    """What `calibrate` decided per activation quantizer and a state dict does not hold:
    whether it is signed (the scale itself is a parameter, so it is in the state dict)."""
    if not is_calibrated(qmodel):
        raise UserError("the quantized model has not been calibrated; run calibrate(qmodel, x) first")
    return {name: bool(getattr(owner, attr).is_signed) for name, (owner, attr) in _act_sites(qmodel).items()}


def restore_calibration(qmodel: nn.Module, signed: dict[str, bool]) -> None:
    """Make a freshly built model calibrated as ``act_signedness`` recorded, so that
    ``load_state_dict`` of the saved model then restores it exactly (scales included)."""
    spec: QuantSpec = qmodel.meta[SPEC_KEY]
    sites = _act_sites(qmodel)
    if set(sites) != set(signed):
        raise ValueError(f"calibration record names {sorted(signed)}, the model has {sorted(sites)}")
    for name, (owner, attr) in sites.items():
        _, bits = act_quant_params(getattr(owner, attr))
        setattr(owner, attr, _act_proxy(owner, act_quantizer(bits, spec, signed=bool(signed[name]))))
    qmodel.meta[CALIBRATED_KEY] = True


# ----------------------------------------------------------------------------- read back


def act_quant_params(proxy) -> tuple[Tensor, int]:
    """(scale, bits) of an enabled activation quantizer, computed now.

    The proxy's own ``scale()``/``bit_width()`` return the values cached by the last
    export or cached forward, which go stale once the scale is trained.
    """
    _, scale, _, bits = proxy.fused_activation_quant_proxy.tensor_quant(torch.zeros(()))
    return scale.detach(), int(bits)


def bias_steps(qmodel: nn.Module) -> dict[str, tuple[float, float]]:
    """Per integer layer with a quantized bias: (largest |bias| in steps of its int32 grid among
    the biases that grid holds, the smallest step), the step being input scale x weight scale
    as Int32Bias has it. Biases beyond the grid are clamped to its end, an integer, by Brevitas."""
    out = {}
    for name, m in qmodel.named_modules():
        if (isinstance(m, QuantWeightBiasInputOutputLayer) and m.bias is not None and m.bias_quant.is_quant_enabled
                and m.input_quant.is_quant_enabled and m.weight_quant.is_quant_enabled):
            with torch.no_grad():
                step = (act_quant_params(m.input_quant)[0] * m.quant_weight().scale).reshape(-1)
                ratio = m.bias.detach().abs() / step.expand_as(m.bias)
                held = ratio[ratio < 2 ** 31 - 1]
            out[name] = (float(held.max()) if held.numel() else 0.0, float(step.min()))
    return out


# Brevitas's export checks that bias / (input scale x weight scale) is within 0.2 of an integer,
# computed in float32 from the float32 bias: a k-step bias comes back with an error up to
# k x 2^-23, so only grids of up to about 2^20 steps pass for sure (2^24, the first bound, let a
# Lite0 bias through that then failed Brevitas's check: "QuantTensor not valid")
BIAS_GRID_STEPS = 2**20
# at most this part of a channel's bias may a raised weight scale move its output (EfficientNet-Lite0's
# fitted channels move theirs by at most 0.57% of it: bench/results/bias_grid_lite0.json)
BIAS_FIT_ERROR = 2**-5


def fit_bias_grid(qmodel: nn.Module) -> list[str]:
    """Raise the weight scale of each channel whose bias would need more than `BIAS_GRID_STEPS`
    steps of its int32 grid (input scale x weight scale) to bias / (input scale x
    `BIAS_GRID_STEPS`), where that moves the channel's output by at most `BIAS_FIT_ERROR` of its
    bias: the names of the layers changed.

    Such a channel has weights near zero beside a real bias: a convolution whose BatchNorm scale
    was ~0 folds into it (20 of EfficientNet-Lite0's layers on edge-cpu-ort, 26 on mcu-int at 4
    bits: `bench/results/bias_grid_lite0.json`), or the layer's inputs are near zero (an untrained model). Its
    scale from max|w| is then so small that the bias cannot be written exactly (or at all past
    int32, where Brevitas clamps it). The move is bounded per channel: the sum of |change| of its
    quantized weights times the largest input its input quantizer holds. Within the bound the
    bias is kept exactly (ONNX Runtime's static quantizer also raises the weight scale on int32
    bias overflow); beyond it the channel is left alone and the QCDQ export refuses the layer in
    one sentence. The reference quantizer the profiler simulates keeps max|w| for those channels."""
    changed = []
    for name, m in qmodel.named_modules():
        if not (isinstance(m, QuantWeightBiasInputOutputLayer) and m.bias is not None and m.bias_quant.is_quant_enabled
                and m.input_quant.is_quant_enabled and m.weight_quant.is_quant_enabled):
            continue
        with torch.no_grad():
            s_in, in_bits = act_quant_params(m.input_quant)
            quant = m.quant_weight()
            scale = quant.scale.reshape(-1).expand(m.bias.shape[0])
            bias = m.bias.detach().abs()
            need = bias / (s_in * BIAS_GRID_STEPS * (1 - 2**-8))  # a margin for float32 rounding
            if not bool((scale < need).any()):
                continue
            levels = 2 ** (int(quant.bit_width) - 1) - 1  # narrow range
            new_scale = torch.maximum(scale, need)
            shape = (-1,) + (1,) * (m.weight.dim() - 1)
            w = m.weight.detach()
            moved = (torch.clamp(torch.round(w / new_scale.reshape(shape)), -levels, levels) * new_scale.reshape(shape)
                     - quant.value.detach()).abs().reshape(w.shape[0], -1).sum(dim=1)
            largest = s_in * (2 ** (in_bits - 1) if m.input_quant.is_signed else 2**in_bits - 1)
            fits = moved * largest <= BIAS_FIT_ERROR * bias
            need = torch.where(fits, need, torch.zeros_like(need))
            value = m.weight_quant.tensor_quant.scaling_impl.value
            if value.numel() == 1 and not bool(fits[scale < new_scale].all()):
                continue  # one scale for the layer: only if every channel that needs it can take it
            if not bool((scale < need).any()):
                continue
            # the parameter is the threshold (largest |w| kept); the scale is threshold / largest
            # level, rounded up to a power of two on po2 targets: never below it
            floor = need * levels if value.numel() > 1 else need.max() * levels
            value.copy_(torch.maximum(value.reshape(-1), floor.reshape(-1)).reshape(value.shape))
            m._cached_weight = None
        changed.append(name)
    return changed


def clear_act_caches(qmodel: nn.Module) -> None:
    """Drop quantizer outputs cached by Brevitas (export fills them; they never refresh)."""
    for module in qmodel.modules():
        for attr in ("_cached_act", "_cached_weight"):
            if getattr(module, attr, None) is not None:
                setattr(module, attr, None)


def read_bits(qmodel: torch.fx.GraphModule) -> dict[str, tuple[int, int]]:
    """(w_bits, a_bits) of every Conv/Linear layer the graph calls, read from the modules (32 = float)."""
    modules = dict(qmodel.named_modules())
    bits = {}
    for node in qmodel.graph.nodes:
        if node.op != "call_module" or node.target in bits:
            continue
        name, module = node.target, modules[node.target]
        if isinstance(module, QuantWeightBiasInputOutputLayer):
            w = module.weight_quant
            a = module.input_quant
            bits[name] = (
                int(w.bit_width()) if w.is_quant_enabled else FLOAT_BITS,
                act_quant_params(a)[1] if a.is_quant_enabled else FLOAT_BITS,
            )
        elif isinstance(module, QUANTIZABLE):
            bits[name] = (FLOAT_BITS, FLOAT_BITS)
    return bits


def read_join_quantizers(qmodel: nn.Module) -> dict[str, int]:
    """Shared add/concat input quantizers, in graph order: module name -> bits."""
    modules = dict(qmodel.named_modules())
    return {name: act_quant_params(modules[name].act_quant)[1] for name in qmodel.meta.get(JOINS_KEY, [])}
