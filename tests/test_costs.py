"""Cost metrics on a 3-layer example computed by hand, and ResNet-18's published float size."""

from __future__ import annotations

import pytest

from infoq_deploy.allocate.budgets import size_mb
from infoq_deploy.allocate.costs import fp32_size_bytes, layer_cost, model_cost
from infoq_deploy.core.targets import load_target
from infoq_deploy.importing.layers import Layer

# conv 3->16 3x3 on 32x32, depthwise 16 3x3 on 32x32, linear 16->10
LAYERS = [
    Layer("conv", "conv", 432, 16, 442368, (3, 32, 32), (16, 32, 32), 0),
    Layer("dw", "dwconv", 144, 16, 147456, (16, 32, 32), (16, 32, 32), 1),
    Layer("fc", "linear", 160, 10, 160, (16,), (10,), 2),
]
BITS = [(8, 8), (4, 6), (2, 32)]


def test_size_in_bytes_biases_at_32_bit():
    # 432*8/8 + 16*4  +  144*4/8 + 16*4  +  160*2/8 + 10*4
    assert layer_cost("size", LAYERS[1], 4, 6) == 72 + 64
    assert model_cost("size", LAYERS, BITS) == 432 + 64 + 72 + 64 + 40 + 40 == 712


def test_bitops():
    # 442368*8*8 + 147456*4*6 + 160*2*32
    assert model_cost("bitops", LAYERS, BITS) == 28311552 + 3538944 + 10240 == 31860736


def test_average_weight_bits_excludes_biases():
    # (432*8 + 144*4 + 160*2) / (432 + 144 + 160)
    assert model_cost("wbits", LAYERS, BITS) == pytest.approx(4352 / 736)


def test_fp32_size_and_mb():
    assert fp32_size_bytes(LAYERS) == (432 + 16 + 144 + 16 + 160 + 10) * 4 == 3112
    assert size_mb(3 * 2**20) == 3.0


def test_bits_by_name_equal_bits_in_order():
    by_name = {l.name: b for l, b in zip(LAYERS, BITS)}
    for metric in ("size", "bitops", "wbits"):
        assert model_cost(metric, LAYERS, by_name) == model_cost(metric, LAYERS, BITS)


def test_latency_from_the_table(tmp_path):
    p = tmp_path / "lat.toml"
    p.write_text(
        """
name = "lat"
description = "latency test"
export = "qcdq"
metrics = ["latency"]
pairs = [[8, 8], [32, 32]]
[weights]
bits = [8, 32]
granularity = "per-channel"
scale = "float"
[activations]
bits = [8, 32]
scale = "float"
[latency]
entries = [
  {kind = "conv", w_bits = 8, a_bits = 8, ns_per_mac = 0.5, overhead_ns = 1000},
  {kind = "conv", w_bits = 32, a_bits = 32, ns_per_mac = 9.0, overhead_ns = 9},
  {kind = "dwconv", w_bits = 8, a_bits = 8, ns_per_mac = 9.0, overhead_ns = 9},
  {kind = "dwconv", w_bits = 32, a_bits = 32, ns_per_mac = 2.0, overhead_ns = 500},
  {kind = "linear", w_bits = 8, a_bits = 8, ns_per_mac = 1.0, overhead_ns = 250},
  {kind = "linear", w_bits = 32, a_bits = 32, ns_per_mac = 9.0, overhead_ns = 9},
]
"""
    )
    t = load_target(p)
    bits = [(8, 8), (32, 32), (8, 8)]
    # (442368*0.5 + 1000) + (147456*2 + 500) + (160*1 + 250) ns
    assert model_cost("latency", LAYERS, bits, t) == pytest.approx((222184 + 295412 + 410) / 1e6)
    assert layer_cost("latency", LAYERS[0], 8, 8, t) == pytest.approx(0.222184)


def test_unknown_metric_is_a_programming_error():
    with pytest.raises(ValueError):
        layer_cost("energy", LAYERS[0], 8, 8)


def test_resnet18_float_size_matches_the_literature():
    # DESIGN.md / MPQ literature: ResNet-18 fp32 = 44.6 MB (2^20 bytes), BN folded into conv biases
    import torch.fx
    import torchvision

    from infoq_deploy.importing.layers import build_layer_table

    gm = torch.fx.symbolic_trace(torchvision.models.resnet18(weights=None))
    layers = build_layer_table(gm, (3, 224, 224))
    # torchvision's convs have no bias; after BN folding each conv gains one per output channel
    folded = [
        Layer(l.name, l.kind, l.weight_params, l.bias_params or l.out_shape[0], l.macs, l.in_shape, l.out_shape, l.order)
        for l in layers
    ]
    assert len(layers) == 21
    assert size_mb(fp32_size_bytes(folded)) == pytest.approx(44.6, abs=0.05)
    # and the 1.8 GMACs everyone quotes
    assert sum(l.macs for l in layers) == pytest.approx(1.82e9, rel=0.01)
