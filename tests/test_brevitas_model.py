"""Brevitas model built from an allocation: bits, reference quantizers, shared join quantizers."""

from __future__ import annotations

import operator

import brevitas.nn as qnn
import numpy as np
import pytest
import torch
import torch.fx
from torch import nn

from infoq_deploy.core.errors import UserError
from infoq_deploy.core.quantizer import QuantSpec, act_range, quantize_act, quantize_weight
from infoq_deploy.importing.fold_bn import FoldBatchNorm
from infoq_deploy.importing.layers import build_layer_table
from infoq_deploy.quantize.brevitas_model import build_quant_model, calibrate, read_bits, read_join_quantizers

INPUT_SHAPE = (3, 16, 16)

# Mixed bits 2..8 and float; conv3 keeps float weights but a 5-bit input, pw the reverse.
MIXED = {
    "stem": (8, 8),
    "dw": (3, 4),
    "pw": (2, 32),
    "conv_a": (5, 6),
    "conv_b": (7, 3),
    "conv3": (32, 5),
    "fc": (32, 32),
}

SPECS = [
    QuantSpec(weight_per_channel=True, weight_po2=False),
    QuantSpec(weight_per_channel=False, weight_po2=False),
    QuantSpec(weight_per_channel=True, weight_po2=True, act_po2=True),
    QuantSpec(weight_per_channel=False, weight_po2=True, act_po2=True),
    QuantSpec(weight_per_channel=True, weight_po2=False, scale_rule="mse"),
    QuantSpec(weight_per_channel=False, weight_po2=False, scale_rule="mse"),
    QuantSpec(weight_per_channel=True, weight_po2=True, act_po2=True, scale_rule="mse"),
]


def _spec_id(s: QuantSpec) -> str:
    return f"pc{int(s.weight_per_channel)}-po2{int(s.weight_po2)}-{s.scale_rule}"


class TinyNet(nn.Module):
    """Stem, depthwise + pointwise with a residual add, two branches concatenated, linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.pool = nn.MaxPool2d(2)
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 8, 1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        y = self.pw(nn.functional.relu6(self.dw(x)))
        x = self.pool(torch.relu(x + y))
        x = torch.relu(torch.cat([self.conv_a(x), self.conv_b(x)], dim=1))
        x = torch.relu(self.conv3(x))
        return self.fc(torch.flatten(self.gap(x), 1))


def make_tiny(seed: int = 0):
    """A folded, traced TinyNet and its layer table (random init, non-trivial BatchNorm)."""
    torch.manual_seed(seed)
    model = TinyNet()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 2.0)
    gm = FoldBatchNorm().apply(torch.fx.symbolic_trace(model.eval()))
    return gm, build_layer_table(gm, INPUT_SHAPE)


def inputs(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((n, *INPUT_SHAPE), generator=gen)


def float_layer_inputs(gm, names, x) -> dict[str, torch.Tensor]:
    """Each layer's float input activation on ``x``."""
    seen = {}
    handles = [
        gm.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: seen.__setitem__(n, a[0].detach()))
        for n in names
    ]
    with torch.no_grad():
        gm(x)
    for h in handles:
        h.remove()
    return seen


def test_read_bits_equal_allocation():
    gm, layers = make_tiny()
    # allocations loaded from a solver may carry numpy integers
    qmodel = build_quant_model(gm, layers, {k: (np.int64(w), np.int64(a)) for k, (w, a) in MIXED.items()}, QuantSpec())
    assert read_bits(qmodel) == MIXED
    calibrate(qmodel, inputs(64, 1))
    assert read_bits(qmodel) == MIXED


def test_bias_is_int32_at_accumulator_scale_only_for_integer_layers():
    gm, layers = make_tiny()
    qmodel = build_quant_model(gm, layers, MIXED, QuantSpec())
    calibrate(qmodel, inputs(64, 8))
    layer_inputs = float_layer_inputs(gm, [layer.name for layer in layers], inputs(4, 9))
    checked = 0
    for layer in layers:
        module = qmodel.get_submodule(layer.name)
        integer = MIXED[layer.name][0] < 32 and MIXED[layer.name][1] < 32 and module.bias is not None
        quant = getattr(module, "bias_quant", None)
        assert (quant is not None and quant.is_quant_enabled) == integer, layer.name
        if not integer:
            continue
        x = layer_inputs[layer.name]
        q_in = module.input_quant(x)
        q_w = module.quant_weight()
        acc_scale = q_in.scale * q_w.scale.reshape(-1)
        q_bias = torch.round(module.bias / acc_scale) * acc_scale
        with torch.no_grad():
            expected = module._conv_forward(q_in.value, q_w.value, q_bias)
            assert torch.allclose(module(x), expected, rtol=0, atol=1e-6), layer.name
        checked += 1
    assert checked == 4  # stem (bias from BN folding), dw, conv_a, conv_b; the rest have a float side


def test_float_layers_stay_float():
    gm, layers = make_tiny()
    qmodel = build_quant_model(gm, layers, MIXED, QuantSpec())
    fc = qmodel.get_submodule("fc")
    assert type(fc) is nn.Linear
    assert isinstance(qmodel.get_submodule("conv3"), qnn.QuantConv2d)
    assert not qmodel.get_submodule("conv3").weight_quant.is_quant_enabled
    assert not qmodel.get_submodule("pw").input_quant.is_quant_enabled
    all_float = {name: (32, 32) for name in MIXED}
    plain = build_quant_model(gm, layers, all_float, QuantSpec())
    assert read_join_quantizers(plain) == {}
    x = inputs(8, 2)
    with torch.no_grad():
        assert torch.equal(plain(x), gm(x))


@pytest.mark.parametrize("spec", SPECS, ids=_spec_id)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_weight_quant_equals_reference(spec, bits):
    gm, layers = make_tiny()
    allocation = {layer.name: (bits, 32) for layer in layers}
    qmodel = build_quant_model(gm, layers, allocation, spec)
    kinds = set()
    for layer in layers:
        ours = qmodel.get_submodule(layer.name).quant_weight().value
        ref = quantize_weight(gm.get_submodule(layer.name).weight, bits, spec)
        assert torch.equal(ours, ref), layer.name
        assert len(torch.unique(ref)) > 1  # not a degenerate all-zero comparison
        kinds.add(layer.kind)
    assert kinds == {"conv", "dwconv", "linear"}


@pytest.mark.parametrize("spec", [SPECS[0], SPECS[3], SPECS[4], SPECS[6]], ids=_spec_id)
def test_act_quant_equals_reference_after_calibration(spec):
    gm, layers = make_tiny()
    qmodel = build_quant_model(gm, layers, MIXED, spec)
    calib = inputs(96, 3)
    calibrate(qmodel, calib, batch_size=40)  # several batches: the range must still be global
    quantized = [n for n, (_, a) in MIXED.items() if a < 32]
    ranges = {n: act_range(t, spec) for n, t in float_layer_inputs(gm, quantized, calib).items()}
    assert {r.signed for r in ranges.values()} == {True, False}  # stem input signed, the rest after ReLU
    test_inputs = float_layer_inputs(gm, quantized, inputs(16, 4))
    for name in quantized:
        proxy = qmodel.get_submodule(name).input_quant
        assert proxy.is_signed == ranges[name].signed, name
        out = proxy(test_inputs[name])
        ours = out.value if hasattr(out, "value") else out
        ref = quantize_act(test_inputs[name], MIXED[name][1], ranges[name], spec)
        assert torch.equal(ours, ref), name


def test_one_quantizer_per_tensor_at_joins():
    """x feeds both the dw layer and the residual add: the add reads dw's own input quantizer;
    the branch output and the concatenated convs go through one join quantizer per join."""
    gm, layers = make_tiny()
    qmodel = build_quant_model(gm, layers, MIXED, QuantSpec())
    joins = read_join_quantizers(qmodel)
    assert len(joins) == 2 and set(joins.values()) == {8}
    modules = dict(qmodel.named_modules())
    seen = {}
    for node in qmodel.graph.nodes:
        if node.op == "call_function" and node.target in (operator.add, torch.cat):
            ins = node.args[0] if node.target is torch.cat else node.args[:2]
            seen[node.target] = [
                a.args[0].target if a.op == "call_function" else a.target for a in ins  # _plain(proxy(x)) or join(x)
            ]
    add, cat = seen[operator.add], seen[torch.cat]
    assert "dw.input_quant" in add  # shared with the layer that reads the same tensor
    (own,) = [t for t in add if t != "dw.input_quant"]
    assert isinstance(modules[own], qnn.QuantIdentity)
    assert len(set(cat)) == 1 and isinstance(modules[cat[0]], qnn.QuantIdentity)
    calibrate(qmodel, inputs(32, 5))
    assert read_join_quantizers(qmodel) == joins


def test_float_input_layer_does_not_share():
    """A layer whose input stays float has no quantizer to share: the join quantizes that input itself."""
    gm, layers = make_tiny()
    qmodel = build_quant_model(gm, layers, {**MIXED, "dw": (3, 32)}, QuantSpec())
    add = next(n for n in qmodel.graph.nodes if n.op == "call_function" and n.target is operator.add)
    targets = {a.target for a in add.args[:2]}
    assert len(targets) == 1 and isinstance(qmodel.get_submodule(targets.pop()), qnn.QuantIdentity)


def test_scales_are_trainable():
    gm, layers = make_tiny()
    qmodel = build_quant_model(gm, layers, MIXED, QuantSpec())
    calibrate(qmodel, inputs(32, 6))
    scales = {n: p for n, p in qmodel.named_parameters() if n.endswith("scaling_impl.value")}
    # one weight scale per quantized weight, one input scale per quantized input, 2 join scales
    n_w = sum(w < 32 for w, _ in MIXED.values())
    n_a = sum(a < 32 for _, a in MIXED.values())
    assert len(scales) == n_w + n_a + 2
    qmodel.train()
    loss = qmodel(inputs(8, 7)).square().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in scales.values())
    assert sum(float(p.grad.abs().sum()) > 0 for p in scales.values()) >= len(scales) - 2


def test_allocation_must_match_layers():
    gm, layers = make_tiny()
    missing = {k: v for k, v in MIXED.items() if k != "dw"}
    with pytest.raises(UserError, match="dw"):
        build_quant_model(gm, layers, missing, QuantSpec())
    extra = {**MIXED, "head.proj": (4, 4)}
    with pytest.raises(UserError, match="head.proj"):
        build_quant_model(gm, layers, extra, QuantSpec())
    for bad in (1, 0, 20, 4.0):
        with pytest.raises(UserError, match="stem"):
            build_quant_model(gm, layers, {**MIXED, "stem": (bad, 8)}, QuantSpec())
