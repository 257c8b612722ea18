"""Where branches meet (residual adds, concatenations) and which tensor quantizer each input reuses.

One quantizer per tensor: a tensor that a quantized layer reads is quantized once, by that
layer's input quantizer, and every other consumer on the way to a join reads the same
quantized values. Hardware flows need this: hls4ml and FINN store each tensor once, at
one precision, and qonnx's channels-last pass breaks on a tensor that forks into two
quantizers (a ReLU output read unsigned by a conv and signed by a residual add).

`plan_joins` states the rule once; the Brevitas builder (`quantize/brevitas_model.py`),
the reference simulation (`quantize/simulated.py`) and the profiler's suffix runner all
follow it, so what is profiled is what is deployed.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}

_SCALAR_METHODS = {"size", "dim", "numel", "item", "tolist", "nelement"}
_SCALAR_ATTRS = {"shape", "ndim", "dtype", "device"}

# Ops that map a quantized tensor onto the same grid (they select, move or take the max of
# values, or pad with zero), so a quantized input gives an exactly quantized output.
_GRID_FUNCTIONS = {operator.getitem, torch.flatten, F.max_pool1d, F.max_pool2d, F.max_pool3d}
_GRID_METHODS = {"view", "reshape", "flatten", "permute", "contiguous", "transpose"}
_GRID_MODULES = (nn.Identity, nn.Flatten, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def is_tensor(node) -> bool:
    """Structural guess that an fx value is a tensor (not an int from ``x.size(0)`` etc.)."""
    if not isinstance(node, torch.fx.Node):
        return False
    if node.op == "call_method" and node.target in _SCALAR_METHODS:
        return False
    if node.op == "call_function":
        if node.target is getattr and len(node.args) > 1 and node.args[1] in _SCALAR_ATTRS:
            return False
        if node.target is len:
            return False
        if getattr(node.target, "__module__", None) in ("_operator", "operator", "math"):
            node_args = [a for a in node.args if isinstance(a, torch.fx.Node)]
            return any(is_tensor(a) for a in node_args)
    return True


def is_constant(node) -> bool:
    """An fx value computed from parameters and buffers alone (a ViT's position embedding, its
    class token expanded to the batch): it does not change with the input."""
    if not isinstance(node, torch.fx.Node):
        return True
    if node.op == "get_attr":
        return True
    if node.op in ("placeholder", "call_module", "output"):
        return False
    # sizes read from the input (the batch a class token is expanded to) do not make it vary
    return all(is_constant(a) for a in node.all_input_nodes if is_tensor(a))


def join_inputs(node: torch.fx.Node) -> list[torch.fx.Node] | None:
    """The tensor inputs of a residual add / concatenation node, or None if it is not one.

    An add or concatenation with a constant (a position embedding, a class token) is not a
    join of branches: it is a bias on one tensor, and stays in float like a layer's bias."""
    if node.op == "call_function" and node.target in ADD_FUNCTIONS:
        ins = list(node.args[:2])
    elif node.op == "call_method" and node.target in ("add", "add_"):
        ins = list(node.args[:2])
    elif node.op == "call_function" and node.target in CAT_FUNCTIONS:
        ins = list(node.args[0]) if node.args else list(node.kwargs.get("tensors", ()))
    else:
        return None
    if len(ins) < 2 or not all(is_tensor(a) for a in ins) or any(is_constant(a) for a in ins):
        return None
    return ins


def keeps_grid(node: torch.fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _GRID_MODULES)
    if node.op == "call_method":
        return node.target in _GRID_METHODS
    if node.op == "call_function":
        if node.target is F.pad:
            value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else 0)
            mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
            return mode == "constant" and not value
        return node.target in _GRID_FUNCTIONS
    return False


@dataclass(frozen=True)
class Share:
    """``consumer`` reads ``source`` through the input quantizer of ``layer`` (not a quantizer of its own)."""

    consumer: str  # fx node name
    source: str  # fx node name: the tensor the layer reads
    layer: str  # qualified module name of the quantizable layer whose input quantizer is shared


@dataclass(frozen=True)
class JoinPlan:
    shares: tuple[Share, ...]
    # join node name -> its inputs (fx node names) that no layer quantizes: one shared join quantizer
    own: dict[str, tuple[str, ...]]


def _reader(source: torch.fx.Node, quantized: set[str]) -> str | None:
    """The first quantized layer (graph order) that reads ``source`` as its input."""
    for user in source.users:
        if user.op == "call_module" and user.target in quantized and user.args and user.args[0] is source:
            return user.target
    return None


def plan_joins(gm: torch.fx.GraphModule, quantized_inputs: set[str]) -> JoinPlan:
    """For every join of ``gm``: which of its inputs reuse a layer's input quantizer, and which do not.

    ``quantized_inputs`` names the layers whose input activation is quantized. A join input
    reuses layer L's quantizer when L reads the input itself, or reads a tensor from which the
    input follows through grid-keeping ops (slice, zero pad, max pool, reshape) used by
    nothing else; the consumer is then the first op after that tensor on the way to the join.
    """
    modules = dict(gm.named_modules())
    shares: dict[tuple[str, str], Share] = {}
    own: dict[str, tuple[str, ...]] = {}
    for node in gm.graph.nodes:
        ins = join_inputs(node)
        if ins is None:
            continue
        unshared = []
        for inp in dict.fromkeys(ins):  # one decision per distinct input
            consumer, source = node, inp
            found = None
            while True:
                layer = _reader(source, quantized_inputs)
                if layer is not None:
                    found = Share(consumer=consumer.name, source=source.name, layer=layer)
                    break
                if not (keeps_grid(source, modules) and len(source.users) == 1):
                    break
                tensor_args = [a for a in source.all_input_nodes if is_tensor(a)]
                if len(tensor_args) != 1:
                    break
                consumer, source = source, tensor_args[0]
            if found is None:
                unshared.append(inp.name)
            else:
                shares[(found.consumer, found.source)] = found
        if unshared:
            own[node.name] = tuple(unshared)
    return JoinPlan(shares=tuple(shares.values()), own=own)
