"""ONNX file -> torch.fx GraphModule (onnx2torch), with the fixes the layer table needs.

onnx2torch makes every Conv an ``nn.Conv2d`` and a Gemm with constant weights an
``nn.Linear`` -- but only when the weights are initializers, and it wraps a Conv
with asymmetric padding in ``nn.Sequential(pad, conv)``, which fx sees as one
opaque module. Weights that arrive through Identity or Constant nodes, Gemms
onnx2torch leaves as ``OnnxGemm`` and those Sequentials are normalised here, so
every convolution and fully connected layer shows up in the layer table.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import onnxoptimizer
import torch
import torch.fx
from torch import nn

from infoq_deploy.core.errors import UserError

# onnx2torch's Slice indexes with a list, which torch deprecates; the result is the
# same, and the note would print on every forward pass of an imported model
warnings.filterwarnings("ignore", message="Using a non-tuple sequence", module="onnx2torch")

WEIGHT_OPS = {"Conv": (1, 2), "Gemm": (1, 2)}  # op -> input positions that hold weights / bias


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist; check the path")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise UserError(
            f"{path} is not a valid ONNX model ({_first_line(exc)}); re-export it, e.g. with torch.onnx.export"
        ) from None
    return model


def _graph_input_shape(
    model: onnx.ModelProto, path: Path, wanted: tuple[int, int, int] | None
) -> tuple[int, int, int]:
    """C,H,W of the single image input; a symbolic batch dimension is fine."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UserError(f"{path} has {len(inputs)} inputs; export a model with one image input (N,C,H,W)")
    tensor_type = inputs[0].type.tensor_type
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
        raise UserError(f"{path} takes {kind} input; export the model with a float32 input")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim]
    if len(dims) != 4:
        raise UserError(f"{path} takes a rank-{len(dims)} input; export a model whose input is N,C,H,W")
    fixed = dims[1:]
    if wanted is not None:
        if any(f is not None and f != w for f, w in zip(fixed, wanted)):
            raise UserError(
                f"{path} takes inputs of shape {tuple(fixed)}, not {tuple(wanted)}; drop --input-shape or fix it"
            )
        return tuple(wanted)
    if None in fixed:
        raise UserError(f"{path} has a symbolic input size {tuple(fixed)}; pass --input-shape C,H,W")
    return tuple(fixed)


def _constants_to_initializers(model: onnx.ModelProto) -> None:
    """Turn Constant nodes that feed Conv/Gemm weights into initializers, which onnx2torch requires."""
    graph = model.graph
    weight_inputs = {
        node.input[i] for node in graph.node if node.op_type in WEIGHT_OPS
        for i in WEIGHT_OPS[node.op_type] if i < len(node.input)
    }
    keep = []
    for node in graph.node:
        attr = node.attribute[0] if node.op_type == "Constant" and len(node.attribute) == 1 else None
        if attr is not None and attr.name == "value" and node.output[0] in weight_inputs:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attr.t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _inline_sequentials(gm: torch.fx.GraphModule) -> None:
    """Call the children of each ``nn.Sequential`` one by one so fx sees the Conv inside."""
    changed = True
    while changed:
        changed = False
        modules = dict(gm.named_modules())
        for node in list(gm.graph.nodes):
            if node.op != "call_module" or not isinstance(modules[node.target], nn.Sequential):
                continue
            if len(node.args) != 1 or node.kwargs:
                continue
            value = node.args[0]
            with gm.graph.inserting_before(node):
                for child, _ in modules[node.target].named_children():
                    value = gm.graph.call_module(f"{node.target}.{child}", (value,))
            node.replace_all_uses_with(value)
            gm.graph.erase_node(node)
            changed = True
    gm.recompile()


def _fetch(gm: torch.fx.GraphModule, node) -> torch.Tensor | None:
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        return None
    value = gm
    for part in node.target.split("."):
        value = getattr(value, part)
    return value if isinstance(value, torch.Tensor) else None


def _gemms_to_linear(gm: torch.fx.GraphModule) -> None:
    """Replace each OnnxGemm with constant weights by the equivalent ``nn.Linear``."""
    from onnx2torch.node_converters.gemm import OnnxGemm

    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], OnnxGemm) or node.kwargs:
            continue
        gemm = modules[node.target]
        weight = _fetch(gm, node.args[1]) if len(node.args) > 1 else None
        c_node = node.args[2] if len(node.args) > 2 else None
        bias = _fetch(gm, c_node)
        if gemm.trans_a or weight is None or weight.dim() != 2 or (c_node is not None and bias is None):
            continue  # a product of two activations: no weights to quantize
        weight = weight if gemm.trans_b else weight.T
        out_features, in_features = weight.shape
        if bias is not None and bias.numel() != out_features:
            continue  # a full (batch, out) C matrix is not a bias
        linear = nn.Linear(in_features, out_features, bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight * gemm.alpha)
            if bias is not None:
                linear.bias.copy_(bias.reshape(out_features) * gemm.beta)
        gm.add_submodule(node.target, linear)
        node.args = (node.args[0],)
    gm.graph.eliminate_dead_code()
    gm.recompile()


def _check_counts(model: onnx.ModelProto, gm: torch.fx.GraphModule, path: Path) -> None:
    """Every ONNX Conv must have become a conv module the layer table counts."""
    modules = dict(gm.named_modules())
    convs = sum(
        1 for n in gm.graph.nodes
        if n.op == "call_module" and isinstance(modules[n.target], (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    )
    expected = sum(1 for n in model.graph.node if n.op_type == "Conv")
    if convs != expected:
        raise UserError(
            f"{path}: only {convs} of its {expected} Conv nodes became convolution layers; "
            "export the model with static convolution weights (initializers)"
        )


def _check_operators(model: onnx.ModelProto, path: Path) -> None:
    """Name the first operator onnx2torch has no converter for, before it fails on it."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY

    known = {(d.domain or "", d.operation_type) for d in _CONVERTER_REGISTRY}
    for node in model.graph.node:
        if (node.domain or "", node.op_type) not in known:
            standard = node.domain in ("", "ai.onnx")
            kind = f"the standard ONNX operator {node.op_type}" if standard else f"the operator {node.domain}.{node.op_type}"
            raise UserError(
                f"{path}: node {node.name or node.op_type} is {kind}, which the ONNX importer "
                f"(onnx2torch) cannot convert; export the model from PyTorch with torchvision:NAME or "
                f"file.py:factory instead, or replace {node.op_type} before exporting"
            )


def import_onnx(
    path: str | Path, input_shape: tuple[int, int, int] | None = None
) -> tuple[torch.fx.GraphModule, tuple[int, int, int]]:
    """(GraphModule in eval mode, C,H,W input shape) for the ONNX file at ``path``."""
    from onnx2torch import convert

    path = Path(path)
    model = _read(path)
    shape = _graph_input_shape(model, path, input_shape)
    # onnx2torch 1.5.15 looks weights up by name among initializers: an Identity in
    # between (TorchScript exporter output) makes it fail with a KeyError
    model = onnxoptimizer.optimize(model, ["eliminate_identity"])
    _constants_to_initializers(model)
    _check_operators(model, path)
    try:
        gm = convert(model)
    except Exception as exc:
        raise UserError(
            f"onnx2torch cannot convert {path} ({type(exc).__name__}: {_first_line(exc)}); "
            "re-export it with standard operators (opset 13-17)"
        ) from None
    _inline_sequentials(gm)
    _gemms_to_linear(gm)
    _check_counts(model, gm, path)
    return gm.eval(), shape
