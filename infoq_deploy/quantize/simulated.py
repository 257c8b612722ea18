"""Post-training quantization with the reference quantizer: an allocation applied to a model.

Used to measure how good an allocation is before any fine-tuning (the paper's "direct
evaluation of the sensitivity metric"): weights are fake-quantized in place and every
quantizable layer's input is fake-quantized by a forward pre-hook, with the quantizer
of ``core/quantizer.py`` that the profilers simulate and Brevitas deploys.
"""

from __future__ import annotations

import copy
from typing import Mapping

import torch
import torch.fx
from torch import nn

from infoq_deploy.core.errors import UserError
from infoq_deploy.core.quantizer import FLOAT_BITS, ActRange, QuantSpec, quantize_act, quantize_weight
from infoq_deploy.importing.joins import plan_joins
from infoq_deploy.importing.layers import Layer


def apply_allocation(
    gm: torch.fx.GraphModule,
    layers: list[Layer],
    bits: Mapping[str, tuple[int, int]],
    spec: QuantSpec,
    act_ranges: Mapping[str, ActRange],
) -> nn.Module:
    """A copy of ``gm`` (BatchNorm already folded) with each layer at its (w_bits, a_bits)."""
    names = {layer.name for layer in layers}
    if set(bits) != names:
        missing, extra = sorted(names - set(bits)), sorted(set(bits) - names)
        raise UserError(f"the allocation does not match the model (missing {missing}, unknown {extra}); allocate for this model")
    qm = copy.deepcopy(gm).eval()
    modules = dict(qm.named_modules())
    for name, (w_bits, a_bits) in bits.items():
        module = modules[name]
        with torch.no_grad():
            module.weight.copy_(quantize_weight(module.weight, w_bits, spec))
        if a_bits < FLOAT_BITS:
            r = act_ranges[name]
            module.register_forward_pre_hook(
                lambda m, args, b=a_bits, r=r: (quantize_act(args[0], b, r, spec), *args[1:])
            )
    # one quantizer per tensor: the consumers that share a layer's input quantizer (importing/joins.py)
    quantized = {name for name, (_, a_bits) in bits.items() if a_bits < FLOAT_BITS}
    nodes = {n.name: n for n in qm.graph.nodes}
    for k, share in enumerate(plan_joins(qm, quantized).shares):
        name = f"infoq_shared_act_{k}"
        qm.add_submodule(name, _FakeAct(bits[share.layer][1], act_ranges[share.layer], spec))
        consumer, source = nodes[share.consumer], nodes[share.source]
        with qm.graph.inserting_before(consumer):
            consumer.replace_input_with(source, qm.graph.call_module(name, args=(source,)))
    qm.recompile()
    return qm


class _FakeAct(nn.Module):
    def __init__(self, bits: int, r: ActRange, spec: QuantSpec):
        super().__init__()
        self.bits, self.r, self.spec = bits, r, spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_act(x, self.bits, self.r, self.spec)
