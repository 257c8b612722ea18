"""The layer table: one row per quantizable layer of a traced model.

Counts are exact for one input sample: MACs of a convolution are
``out_elements * (C_in / groups) * k_h * k_w``, of a linear layer
``out_features * in_features`` times any extra leading dimensions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from infoq_deploy.core.errors import UserError
from infoq_deploy.importing.joins import join_inputs
from infoq_deploy.importing.pool_inputs import is_average_pool

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class Layer:
    name: str  # qualified module name, as fx calls it (e.g. "layer1.0.conv1")
    kind: str  # "conv" | "dwconv" | "linear"
    weight_params: int
    bias_params: int
    macs: int  # per sample
    in_shape: tuple[int, ...]  # one sample, no batch dimension
    out_shape: tuple[int, ...]
    order: int  # topological position among quantizable layers
    # an activation quantizer of its own allocation reads its output (through an activation
    # function); False when the output goes into an average pool or is the model's output: a
    # FINN hardware layer then writes the accumulator instead of thresholding it
    requantized: bool = True
    # who reads its output, as groups of layers (`_readers`): on a runtime that fuses a layer into
    # an integer kernel only when quantizers alone read its output (ONNX Runtime), an integer layer
    # runs in float unless every group has a layer with a quantized input. Empty: the model's
    # output, or a table written before this existed: no boundary is modelled.
    readers: tuple[tuple[str, ...], ...] = ()

    @property
    def params(self) -> int:
        return self.weight_params + self.bias_params

    def to_json(self) -> dict:
        d = asdict(self)
        d["params"] = self.params
        d["in_shape"] = list(self.in_shape)
        d["out_shape"] = list(self.out_shape)
        d["readers"] = [list(g) for g in self.readers]
        return d

    @staticmethod
    def from_json(d: dict) -> "Layer":
        return Layer(
            name=d["name"],
            kind=d["kind"],
            weight_params=int(d["weight_params"]),
            bias_params=int(d["bias_params"]),
            macs=int(d["macs"]),
            in_shape=tuple(d["in_shape"]),
            out_shape=tuple(d["out_shape"]),
            order=int(d["order"]),
            requantized=bool(d.get("requantized", True)),  # absent in tables written before it existed
            readers=tuple(tuple(g) for g in d.get("readers", ())),
        )


def layer_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if module.groups > 1 and module.groups == module.in_channels:
        return "dwconv"
    return "conv"


def layer_macs(module: nn.Module, out_shape: tuple[int, ...]) -> int:
    out_elems = math.prod(out_shape)
    if isinstance(module, nn.Linear):
        return out_elems * module.in_features
    kernel = math.prod(module.kernel_size)
    return out_elems * (module.in_channels // module.groups) * kernel


def build_layer_table(gm: torch.fx.GraphModule, input_shape: tuple[int, ...]) -> list[Layer]:
    """Propagate one sample of ``input_shape`` (no batch dim) and list the quantizable layers."""
    example = torch.zeros((1, *input_shape))
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception as exc:  # the model's own error says why the shape is wrong
        cause = exc.__cause__ or exc  # ShapeProp wraps the real error in a multi-line message
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise UserError(
            f"the model rejects inputs of shape {tuple(input_shape)} ({reason}); "
            "pass the right one with --input-shape C,H,W"
        ) from None
    finally:
        gm.train(was_training)

    modules = dict(gm.named_modules())
    layers: list[Layer] = []
    seen: set[str] = set()
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = modules[node.target]
        if not isinstance(module, QUANTIZABLE) or node.target in seen:
            continue
        seen.add(node.target)
        in_meta = node.args[0].meta.get("tensor_meta")
        out_meta = node.meta.get("tensor_meta")
        in_shape = tuple(in_meta.shape[1:])
        out_shape = tuple(out_meta.shape[1:])
        bias = getattr(module, "bias", None)
        layers.append(
            Layer(
                name=node.target,
                kind=layer_kind(module),
                weight_params=module.weight.numel(),
                bias_params=0 if bias is None else bias.numel(),
                macs=layer_macs(module, out_shape),
                in_shape=in_shape,
                out_shape=out_shape,
                order=len(layers),
                requantized=_requantized(node, modules),
                readers=_readers(node, modules),
            )
        )
    return layers


def _readers(node: torch.fx.Node, modules: dict) -> tuple[tuple[str, ...], ...]:
    """Who must quantize ``node``'s output for it to be quantized everywhere, as groups of layers:
    a layer that reads it (through activations, pools, reshapes) is a group of its own; a residual
    add or concatenation it reaches is one group, every layer reachable past the join, because
    the join gets its quantizer when any of them quantizes its input (quantize/brevitas_model.py,
    `_feeds_quantized_layer`)."""
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    layers, joins = _reached(node, modules, stop_at_joins=True)
    groups = [(order[n], (n.target,)) for n in layers]
    for join in joins:
        past, _ = _reached(join, modules, stop_at_joins=False)
        if past:
            groups.append((order[join], tuple(dict.fromkeys(n.target for n in sorted(past, key=order.get)))))
    return tuple(dict.fromkeys(g for _, g in sorted(groups)))


def _reached(start: torch.fx.Node, modules: dict, stop_at_joins: bool) -> tuple[list, list]:
    """The layer calls reached from ``start``'s output without passing another layer (nor, with
    ``stop_at_joins``, a residual add or concatenation), and the joins it stopped at."""
    layers, joins, todo, seen = [], [], list(start.users), set()
    while todo:
        user = todo.pop()
        if user in seen:
            continue
        seen.add(user)
        if user.op == "call_module" and isinstance(modules.get(user.target), QUANTIZABLE):
            layers.append(user)
        elif stop_at_joins and join_inputs(user) is not None:
            joins.append(user)
        else:
            todo.extend(user.users)
    return layers, joins


_PASS_THROUGH = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Identity, nn.Dropout, nn.ReLU, nn.ReLU6, nn.Hardtanh,
                 nn.SiLU, nn.Hardswish, nn.Sigmoid, nn.GELU, nn.LeakyReLU)
_PASS_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.sigmoid,
                   torch.nn.functional.silu, torch.nn.functional.hardswish, torch.nn.functional.hardtanh}


def _requantized(node: torch.fx.Node, modules: dict) -> bool:
    """False when the layer's output, past normalisation and activation functions, reaches an
    average pool or the graph output: there no activation quantizer of the allocated bits reads
    it (the pool's input is quantized on the accumulator grid, export/passes/quant_on_grid.py).
    A residual add's inputs are quantized (importing/joins.py), so an add counts as requantized."""
    todo, seen = list(node.users), set()
    while todo:
        user = todo.pop()
        if user in seen:
            continue
        seen.add(user)
        module = modules.get(user.target) if user.op == "call_module" else None
        if user.op == "output" or is_average_pool(user, modules):
            return False
        if isinstance(module, _PASS_THROUGH) or (user.op == "call_function" and user.target in _PASS_FUNCTIONS) or (
                user.op == "call_method" and user.target in ("relu", "relu_")):
            todo.extend(user.users)
    return True
