"""HAWQ-v2 (--method hawq): Hutchinson's trace against the exact Hessian, and the table it writes."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from infoq_deploy import stages
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.quantizer import quantize_weight
from infoq_deploy.profile import hawq
from infoq_deploy.profile import registry as profile_methods


class _Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(5, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def test_hutchinson_traces_match_the_exact_hessian():
    """Weights and the second layer's input: the estimate is within a few standard errors of the
    exact trace (one batch, so the only noise is the random vectors), and the error shrinks."""
    net = _Mlp().eval()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 5, generator=gen), torch.randint(0, 3, (64,), generator=gen)

    def loss_of_w2(w):
        return F.cross_entropy(F.linear(torch.tanh(net.fc1(x)), w, net.fc2.bias), y)

    def loss_of_h(h):  # h: fc2's input over the batch
        return F.cross_entropy(net.fc2(h), y)

    exact_w = torch.autograd.functional.hessian(loss_of_w2, net.fc2.weight.detach()).reshape(12, 12).trace()
    h = torch.tanh(net.fc1(x)).detach()
    exact_a = torch.autograd.functional.hessian(loss_of_h, h).reshape(h.numel(), h.numel()).trace()
    est = hawq.hessian_traces(net, ["fc1", "fc2"], x, y, seed=0, batch_size=64, tol=0.0, min_iter=2, max_iter=400)
    assert est["iterations"] == 400 and not est["converged"]
    for got, exact in ((est["weights"]["fc2"], exact_w), (est["activations"]["fc2"], exact_a)):
        assert abs(got["mean"] - float(exact)) <= 4 * got["stderr"], (got, float(exact))
        assert got["stderr"] < 0.1 * abs(float(exact))
    assert est["activations"]["fc2"]["elements"] == 4
    assert not any(p.requires_grad is False for p in net.parameters())  # left as it found them


@pytest.fixture(scope="module")
def fashion_table():
    model = stages.load_model(stages.DEFAULT_MODEL)
    plan = stages.plan_datasets(model.preprocess, data=stages.DEFAULT_DATA, eval_data=stages.DEFAULT_EVAL_DATA,
                                calib_size=128)
    target = stages.load_target("fpga-int")
    return model, plan, target, stages.profile(model, target, plan.calibration, "hawq", max_iter=20)


def test_scores_are_half_the_mean_curvature_times_the_deployed_perturbation(fashion_table):
    model, _, target, table = fashion_table
    assert table.meta["method"] == "hawq" and table.meta["scale_rule"] == "minmax"
    gm = stages.deployable(model).graph
    for layer in table.layers:
        w = gm.get_submodule(layer.name).weight.detach()
        trace = max(table.meta["traces"]["weights"][layer.name], 0.0)
        for b in (2, 5, 8):
            expected = 0.5 * trace / w.numel() * float(((quantize_weight(w, b, target.quant_spec()) - w) ** 2).sum())
            assert math.isclose(table.weights[layer.name][b], expected, rel_tol=1e-9)
        for part in (table.weights, table.activations):
            scores = [part[layer.name][b] for b in sorted(part[layer.name])]
            assert scores == sorted(scores, reverse=True), "fewer bits never score lower"
    # the table allocates and records what it is
    doc = stages.allocation_document(table, target, ["4bit"])
    assert doc["sensitivity"]["method"] == "hawq"
    assert any("HAWQ-v2" in n for n in profile_methods.notes("hawq", table))


def test_the_sweep_is_reproducible_and_the_method_is_listed(fashion_table):
    model, plan, target, table = fashion_table
    again = stages.profile(model, target, plan.calibration, "hawq", max_iter=20)
    assert again.weights == table.weights and again.activations == table.activations
    assert "hawq" in profile_methods.names()
    with pytest.raises(UserError, match="--method hawq needs calibration data"):
        stages.profile(model, target, None, "hawq")


def test_unlabelled_data_uses_the_float_models_own_top1(fashion_table):
    model, plan, target, _ = fashion_table
    unlabelled = dataclasses.replace(plan.calibration, y=None)
    table = stages.profile(model, target, unlabelled, "hawq", max_iter=12)
    assert "float model's top-1" in table.meta["settings"]["loss"]
    assert all(v >= 0 for d in table.weights.values() for v in d.values())
