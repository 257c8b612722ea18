"""Which average pools get a quantizer on their input: the pools between two integer layers.

An integer layer's output is quantized by whatever reads it; a classifier head (conv -> ReLU6 ->
global average pool -> flatten -> linear) leaves the conv's output unquantized, because the
linear layer's input quantizer sits after the pool. ONNX Runtime fuses a convolution into an
integer kernel only when a QuantizeLinear reads its output, so that conv runs in float
(EfficientNet-Lite0's 1280-channel head: the one layer of 50 left in float). A quantizer on
the pool's input, reached from the layer through activations that the quantizer makes
redundant (ReLU, ReLU6, clamp: ORT folds them into it), lets the layer fuse; the pool then
averages quantized values and the linear layer's own input quantizer follows as before.

A residual add whose inputs are all quantized is the same case (a CIFAR ResNet's last block:
add -> ReLU -> pool): ORT makes it a QLinearAdd only with a quantizer on its output.

`plan_pool_inputs` states the rule; the Brevitas builder applies it on targets that ask for it
(``[activations] pool_inputs = "quantized"``: edge-cpu-ort). fpga-int does not: its QONNX export
puts a lossless quantizer on the accumulator grid there (`export/passes/quant_on_grid.py`).
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from infoq_deploy.importing.joins import is_tensor, keeps_grid

_POOL_FUNCTIONS = {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
                   F.avg_pool1d, F.avg_pool2d, F.avg_pool3d}
_POOL_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_ACT_FUNCTIONS = {F.relu, F.relu6, torch.relu, F.hardtanh, torch.clamp, torch.clip}
_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)


def _is(node: torch.fx.Node, functions, modules_types, modules: dict, methods=()) -> bool:
    if node.op == "call_function":
        return node.target in functions
    if node.op == "call_module":
        return isinstance(modules.get(node.target), modules_types)
    return node.op == "call_method" and node.target in methods


def is_average_pool(node: torch.fx.Node, modules: dict) -> bool:
    """An average pool: module, functional, or ``x.mean(...)``."""
    return _is(node, _POOL_FUNCTIONS, _POOL_MODULES, modules, methods=("mean",))


def _tensor_arg(node: torch.fx.Node) -> torch.fx.Node | None:
    args = [a for a in node.all_input_nodes if is_tensor(a)]
    return args[0] if len(args) == 1 else None


def plan_pool_inputs(gm: torch.fx.GraphModule, integer_layers: set[str], quantized_inputs: set[str],
                     integer_joins: set[str] = frozenset()) -> tuple[str, ...]:
    """Names of the average-pool nodes of ``gm`` whose input an integer layer or an integer add
    (``integer_joins``: every input quantized) computes, through activations only, and whose
    result a layer with a quantized input reads (through reshapes)."""
    modules = dict(gm.named_modules())
    found = []
    for node in gm.graph.nodes:
        if not is_average_pool(node, modules):
            continue
        # backwards: pool <- activations <- an integer layer, each value used once
        source = _tensor_arg(node)
        while source is not None and len(source.users) == 1 and _is(source, _ACT_FUNCTIONS, _ACT_MODULES, modules):
            source = _tensor_arg(source)
        if source is None or len(source.users) != 1 or not (
                (source.op == "call_module" and source.target in integer_layers) or source.name in integer_joins):
            continue
        # forwards: pool -> reshapes -> a layer that quantizes its input
        reader = node
        while len(reader.users) == 1:
            (user,) = reader.users
            if user.op == "call_module" and user.target in quantized_inputs and user.args and user.args[0] is reader:
                found.append(node.name)
                break
            if not keeps_grid(user, modules):
                break
            reader = user
    return tuple(found)
