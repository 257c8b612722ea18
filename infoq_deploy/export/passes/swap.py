"""Move a Quant from after an op to before it: x -> op -> Quant  becomes  x -> Quant -> op.

Shared by the passes that swap a quantizer with an op it commutes with (a reshape, a max
pool); each pass decides when the swap is exact.
"""

from __future__ import annotations

from qonnx.transformation.infer_shapes import InferShapes


def quant_before(model, node, quant, infer_shapes: bool = True):
    """``node``'s single reader ``quant`` moved in front of it; shapes inferred anew unless the
    caller swaps several and infers once (each inference copies the whole model)."""
    graph = model.graph
    x, between, quantized = node.input[0], node.output[0], quant.output[0]
    quant.input[0], quant.output[0] = x, between  # x -> Quant -> between -> node -> quantized
    node.input[0], node.output[0] = between, quantized
    graph.node.remove(node)
    graph.node.insert(list(graph.node).index(quant) + 1, node)
    for info in list(graph.value_info):
        if info.name in (between, quantized):
            graph.value_info.remove(info)  # shapes changed
    return model.transform(InferShapes()) if infer_shapes else model
