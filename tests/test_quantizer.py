import math

import pytest
import torch

from infoq_deploy.core.quantizer import QuantSpec, act_range, act_scale, quantize_act, quantize_weight, weight_scale


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("po2", [True, False])
def test_weight_levels_and_scale(bits, per_channel, po2):
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3) * torch.linspace(0.1, 2.0, 8).reshape(-1, 1, 1, 1)
    spec = QuantSpec(weight_per_channel=per_channel, weight_po2=po2)
    q = quantize_weight(w, bits, spec)
    scale = weight_scale(w, bits, spec)
    ints = q / scale
    # every value is an integer multiple of the scale, inside the narrow signed range
    assert torch.allclose(ints, ints.round(), atol=1e-4)
    assert ints.abs().max() <= 2 ** (bits - 1) - 1 + 1e-4
    if po2:
        log = torch.log2(scale)
        assert torch.allclose(log, log.round())
    # rounding the scale up never clips: the largest magnitude stays representable
    qmax = 2 ** (bits - 1) - 1
    absmax = w.abs().reshape(8, -1).amax(1) if per_channel else w.abs().max()
    assert torch.all(scale.flatten() * qmax >= absmax - 1e-6)
    # error shrinks as bits grow
    if bits < 8:
        finer = quantize_weight(w, bits + 1, spec)
        assert ((finer - w) ** 2).sum() < ((q - w) ** 2).sum()


def test_float_bits_are_identity():
    w = torch.randn(3, 3)
    assert torch.equal(quantize_weight(w, 32, QuantSpec()), w)


def test_activation_unsigned_after_relu_and_signed_otherwise():
    spec = QuantSpec(act_po2=True)
    x = torch.relu(torch.randn(1000))
    r = act_range(x, spec)
    assert not r.signed
    q = quantize_act(x, 4, r, spec)
    s = act_scale(r, 4, spec)
    assert math.log2(s) == round(math.log2(s))
    assert len(torch.unique(q)) <= 16 and q.min() >= 0
    xs = torch.randn(1000)
    rs = act_range(xs, spec)
    assert rs.signed
    qs = quantize_act(xs, 4, rs, spec)
    assert len(torch.unique(qs)) <= 16 and qs.min() < 0
