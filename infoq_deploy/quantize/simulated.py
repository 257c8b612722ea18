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
    return qm
