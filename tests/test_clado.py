"""CLADO (--method clado): measured single-layer and pairwise loss changes, and the table that carries them."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from infoq_deploy import stages
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.quantizer import quantize_weight
from infoq_deploy.profile import registry as profile_methods
from infoq_deploy.profile.table import load_sensitivity


@pytest.fixture(scope="module")
def clado():
    model = stages.load_model(stages.DEFAULT_MODEL)
    plan = stages.plan_datasets(model.preprocess, data=stages.DEFAULT_DATA, eval_data=stages.DEFAULT_EVAL_DATA,
                                calib_size=96)
    target = stages.load_target("fpga-int")
    return model, plan, target, stages.profile(model, target, plan.calibration, "clado")


def _loss(gm, x, y, weights):
    saved = {n: gm.get_submodule(n).weight.data for n in weights}
    try:
        for n, w in weights.items():
            gm.get_submodule(n).weight.data = w
        with torch.no_grad():
            return float(F.cross_entropy(gm(x), y))
    finally:
        for n, w in saved.items():
            gm.get_submodule(n).weight.data = w


def test_pair_terms_are_the_joint_loss_change_minus_the_singles(clado):
    model, plan, target, table = clado
    gm = stages.deployable(model).graph.eval()
    x, y = plan.calibration.x, plan.calibration.y
    spec = target.quant_spec()
    (a, b), terms = next(iter(table.pairs.items()))
    q = lambda n, bits: quantize_weight(gm.get_submodule(n).weight.detach(), bits, spec)  # noqa: E731
    base = _loss(gm, x, y, {})
    d_a, d_b = _loss(gm, x, y, {a: q(a, 3)}) - base, _loss(gm, x, y, {b: q(b, 2)}) - base
    joint = _loss(gm, x, y, {a: q(a, 3), b: q(b, 2)}) - base
    assert terms[(3, 2)] == pytest.approx(joint - d_a - d_b, abs=1e-5)
    assert table.meta["base_loss"] == pytest.approx(base, rel=1e-5)
    # singles are shifted so each layer's best width scores 0: the optimum is unchanged
    for part in (table.weights, table.activations):
        assert all(min(d.values()) == 0.0 and min(d.values()) >= 0 for d in part.values())
    # pinned layers (fpga-int's first and last) have one width, so no pair terms
    free = {l.name for l in table.layers if l.order not in (0, len(table.layers) - 1)}
    assert {n for pair in table.pairs for n in pair} == free
    assert len(table.pairs) == len(free) * (len(free) - 1) // 2
    assert any(v < 0 for t in table.pairs.values() for v in t.values()), "cross terms take both signs"


def test_the_table_round_trips_and_allocates_within_budget(clado, tmp_path):
    _, _, target, table = clado
    table.save(tmp_path / "s.json")
    again = load_sensitivity(tmp_path / "s.json")
    assert again.pairs == table.pairs and again.weights == table.weights
    doc = stages.allocation_document(again, target, ["3bit"])
    assert doc["budgets"][0]["used"] <= doc["budgets"][0]["limit"] and doc["solver"]["status"] == "Optimal"
    assert doc["sensitivity"]["method"] == "clado"
    assert any("CLADO" in n for n in profile_methods.notes("clado", table))
    # the objective counts the pair terms of the chosen widths
    bits = {e["name"]: e["w_bits"] for e in doc["layers"]}
    own = sum(table.weights[n][bits[n]] + table.activations[n][e["a_bits"]] for n, e in
              ((e["name"], e) for e in doc["layers"]))
    cross = sum(t.get((bits[a], bits[b]), 0.0) for (a, b), t in table.pairs.items())
    assert doc["objective"] == pytest.approx(own + cross, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d["pairs"][0].update(layers=["nope", d["layers"][1]["name"]]), "must name two different layers"),
    (lambda d: d["pairs"][0]["w_bits"].update({"4;3": 0.1}), "not 'WA,WB'"),
    (lambda d: d["pairs"][0]["w_bits"].update({"4,3": "0.1"}), "finite numbers"),
    (lambda d: d.update(pairs={"a": 1}), "'pairs' must be a list"),
])
def test_a_corrupt_pairs_list_is_one_sentence(clado, tmp_path, mutate, match):
    table = clado[3]
    doc = json.loads(json.dumps(table.to_json()))
    mutate(doc)
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match=match):
        load_sensitivity(tmp_path / "bad.json")


def test_clado_needs_data(clado):
    model, _, target, _ = clado
    with pytest.raises(UserError, match="--method clado needs calibration data"):
        stages.profile(model, target, None, "clado")
