"""FPGA resource costs (allocate/fpga_resources.py): FINN's estimators on one-layer graphs,
checked against FINN's estimate of the graph FINN itself builds from an exported file; LUT,
BRAM and cycles budgets in the allocator."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch

from infoq_deploy.allocate import fpga_resources
from infoq_deploy.allocate.budgets import parse_budget
from infoq_deploy.allocate.costs import layer_cost, model_cost
from infoq_deploy.allocate.ilp import allocate
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.targets import load_target
from infoq_deploy.importing.fold_bn import FoldBatchNorm
from infoq_deploy.importing.layers import build_layer_table
from infoq_deploy.models.cifar_resnet import cifar_resnet

from test_fpga_consumers import _resnet8

needs_finn = pytest.mark.skipif(fpga_resources.unavailable() is not None, reason=str(fpga_resources.unavailable()))


def _layers():
    gm = FoldBatchNorm().apply(torch.fx.symbolic_trace(cifar_resnet(8).eval()))
    return build_layer_table(gm, (3, 32, 32))


def _scores(layers, bits):
    # more bits, less loss; later layers matter less: an allocation the budget has to bend
    w = {l.name: {b: (8 - b + 1) ** 2 / (1 + l.order) for b in bits} for l in layers}
    return w, {l.name: {b: 0.5 * (8 - b + 1) ** 2 / (1 + l.order) for b in bits} for l in layers}


@pytest.mark.slow
@needs_finn
def test_layer_costs_are_finns_own_estimates_of_the_graph_it_builds_from_the_export(tmp_path):
    """Every layer's LUTs, BRAMs, DSPs and cycles, as the allocator costs them, equal FINN's
    res_estimation / get_exp_cycles of that layer's nodes in the hardware graph FINN makes of the
    exported QONNX file (mixed 2..8-bit weights, stride-2 convolutions, the classifier)."""
    from infoq_deploy.backends import finn_exec

    _, allocation, _, path = _resnet8(tmp_path)
    target = load_target("fpga-int").with_cycles(20000)  # a folding with PE and SIMD above 1
    layers = _layers()
    got, rest = finn_exec.per_layer(finn_exec.resource_estimates(onnx.load(str(path)), target.fpga), layers)
    last = len(layers) - 1
    folded = 0
    for layer in layers:
        w, a = allocation[layer.name]
        ours = fpga_resources.layer_resources(layer, w, a, last=layer.order == last, fpga=target.fpga)
        finn = got[layer.name]
        assert finn["weight_type"] == f"INT{w}", layer.name
        assert (ours.luts, ours.brams, ours.dsps, ours.cycles) == (
            finn["luts"], finn["brams"], finn["dsps"], finn["cycles"]), (layer.name, ours, finn)
        folded += any(pe * simd > 1 for _, pe, simd in ours.folding)
    assert folded >= len(layers) // 2
    assert rest["nodes"] > 0  # padding, adds, the pool: FINN hardware that is no layer's


def test_lut_budget_is_met_and_binds():
    layers = _layers()
    target = load_target("fpga-int")
    s_w, s_a = _scores(layers, target.weights.bits)
    free = allocate(layers, s_w, s_a, target, [parse_budget("8bit")])
    assert all((l["w_bits"], l["a_bits"]) == (8, 8) for l in free.layers)
    limit = 0.8 * free.cost["luts"]
    tight = allocate(layers, s_w, s_a, target, [parse_budget(f"{limit:.0f}LUT")])
    assert tight.cost["luts"] <= limit and tight.budgets[0]["used"] == tight.cost["luts"]
    bits = [(l["w_bits"], l["a_bits"]) for l in tight.layers]
    assert tight.cost["luts"] == model_cost("luts", layers, bits, target)
    assert any(b != (8, 8) for b in bits)
    # the optimum is tight: no single layer can take one more bit-width step and still fit
    assert tight.cost["luts"] > 0.95 * limit


def test_a_cycles_budget_sets_the_folding_and_limits_every_layer():
    layers = _layers()
    target = load_target("fpga-int")
    s_w, s_a = _scores(layers, target.weights.bits)
    slow = allocate(layers, s_w, s_a, target, [parse_budget("8bit")])
    fast = allocate(layers, s_w, s_a, target, [parse_budget("8bit"), parse_budget("10kcycles")])
    assert fast.cost["fold_cycles_per_frame"] == 10000 and slow.cost["fold_cycles_per_frame"] == 100000
    assert fast.cost["cycles"] <= 10000 < slow.cost["cycles"]
    assert fast.cost["luts"] > 2 * slow.cost["luts"]  # throughput costs logic
    folded = target.with_cycles(10000)
    n = len(layers)
    for layer, choice in zip(layers, fast.layers):
        assert layer_cost("cycles", layer, choice["w_bits"], choice["a_bits"], folded,
                          last=layer.order == n - 1) <= 10000
    # FINN widens a weight stream only to mvau_wwidth_max bits: at this throughput some layer
    # misses it at 8-bit weights, so the budget is met by fewer bits there
    missed = [l for l in layers[1:-1] if layer_cost("cycles", l, 8, 8, folded) > 10000]
    assert missed, "the budget does not bind: pick a tighter one"
    chosen = {c["name"]: c["w_bits"] for c in fast.layers}
    assert all(chosen[l.name] < 8 for l in missed)


def test_an_impossible_cycles_budget_says_what_is_reachable():
    layers = _layers()
    target = load_target("fpga-int")
    s_w, s_a = _scores(layers, target.weights.bits)
    with pytest.raises(UserError) as e:
        allocate(layers, s_w, s_a, target, [parse_budget("50cycles")])
    msg = str(e.value)
    assert "50cycles cannot be met on fpga-int" in msg and "the fewest cycles per frame reachable are" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("text,metric,limit", [
    ("20kLUT", "luts", 20000), ("20000 LUTs", "luts", 20000), ("150BRAM", "brams", 150),
    ("3 BRAMs", "brams", 3), ("50kcycles", "cycles", 50000), ("1.5Mcycles", "cycles", 1.5e6)])
def test_fpga_budgets_parse(text, metric, limit):
    b = parse_budget(text)
    assert (b.metric, b.limit) == (metric, limit)


def test_without_finn_fpga_budgets_are_refused_in_one_sentence(monkeypatch):
    monkeypatch.setattr(fpga_resources, "unavailable", lambda: "FINN is not installed; pip install it")
    layers = _layers()
    target = load_target("fpga-int")
    with pytest.raises(UserError, match="^FINN is not installed"):
        allocate(layers, *_scores(layers, target.weights.bits), target, [parse_budget("20kLUT")])
    # other budgets still work, without the FPGA costs
    a = allocate(layers, *_scores(layers, target.weights.bits), target, [parse_budget("4bit")])
    assert "luts" not in a.cost and a.cost["avg_weight_bits"] <= 4


def test_target_files_with_fpga_metrics_need_an_fpga_table(tmp_path):
    text = (tmp_path / "x.toml")
    base = load_target("fpga-int")
    src = open(base.path).read()
    text.write_text(src.split("[fpga]")[0])
    with pytest.raises(UserError, match=r"key 'fpga' is missing, but 'metrics' lists luts, brams, cycles"):
        load_target(str(text))
    text.write_text(src.replace('"luts", "brams", "cycles"', ""))
    with pytest.raises(UserError, match="key 'fpga' is given but 'metrics' lists none"):
        load_target(str(text))
    text.write_text(src.replace("cycles_per_frame = 100000", "cycles_per_frame = 0"))
    with pytest.raises(UserError, match="fpga.cycles_per_frame' must be a positive integer"):
        load_target(str(text))


def test_a_layer_finn_has_no_hardware_for_is_named():
    layer = dataclasses.replace(_layers()[1], in_shape=(16, 32), out_shape=(16, 32))  # a 1-d convolution
    assert "is not a 2-d convolution" in fpga_resources.why_not([layer])
    assert np.isfinite(layer_cost("size", layer, 4, 4))


def test_layers_whose_output_no_quantizer_reads_are_marked():
    """FINN thresholds a layer's accumulator inside the layer unless the output goes, through
    its activation, into the average pool or out of the model (then the layer is an MVAU
    without thresholds, which FINN may build from DSPs): the layer table says which."""
    from infoq_deploy import stages
    from infoq_deploy.importing.deployable import deployable

    fashion = {l.name: l.requantized for l in deployable(stages.load_model(stages.DEFAULT_MODEL)).layers}
    assert [n for n, r in fashion.items() if not r] == ["pw.0", "fc"]  # pw -> ReLU -> avgpool; fc -> logits
    # a residual branch's last conv feeds the add through the join quantizer (importing/joins.py)
    assert fashion["res_conv2"] and [l.name for l in _layers() if not l.requantized] == ["linear"]
