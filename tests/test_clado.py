"""CLADO (--method clado): measured single-layer and pairwise loss changes, and the table that carries them."""

from __future__ import annotations

import json

import numpy as np
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
    # the measured terms (meta.measured; the table holds them projected onto the PSD cone)
    measured = table.meta["measured"]["pairs"][0]
    (a, b), terms = measured["layers"], measured["w_bits"]
    q = lambda n, bits: quantize_weight(gm.get_submodule(n).weight.detach(), bits, spec)  # noqa: E731
    base = _loss(gm, x, y, {})
    d_a, d_b = _loss(gm, x, y, {a: q(a, 3)}) - base, _loss(gm, x, y, {b: q(b, 2)}) - base
    joint = _loss(gm, x, y, {a: q(a, 3), b: q(b, 2)}) - base
    assert terms["3,2"] == pytest.approx(joint - d_a - d_b, abs=1e-5)
    assert table.meta["base_loss"] == pytest.approx(base, rel=1e-5)
    # singles are shifted so each layer's best width scores 0: the optimum is unchanged
    for part in (table.weights, table.activations):
        assert all(min(d.values()) == 0.0 and min(d.values()) >= 0 for d in part.values())
    # pinned layers (fpga-int's first and last) have one width, so no pair terms
    free = {l.name for l in table.layers if l.order not in (0, len(table.layers) - 1)}
    assert {n for pair in table.pairs for n in pair} == free
    assert len(table.pairs) == len(free) * (len(free) - 1) // 2
    assert any(v < 0 for m in table.meta["measured"]["pairs"] for v in m["w_bits"].values()), \
        "measured cross terms take both signs"


def test_the_solved_matrix_is_the_measured_one_projected_onto_the_psd_cone(clado):
    _, _, _, table = clado
    free = sorted({n for pair in table.pairs for n in pair}, key=lambda n: next(l.order for l in table.layers if l.name == n))
    widths = {n: sorted(table.weights[n]) for n in free}
    index = [(n, b) for n in free for b in widths[n]]
    pos = {k: i for i, k in enumerate(index)}

    def matrix(singles, pairs):
        g = np.zeros((len(index), len(index)))
        for (n, b), i in pos.items():
            g[i, i] = singles[n][b]
        for (a, b), t in pairs.items():
            for (wa, wb), v in t.items():
                g[pos[(a, wa)], pos[(b, wb)]] = g[pos[(b, wb)], pos[(a, wa)]] = v / 2
        return g

    raw = table.meta["measured"]
    raw_singles = {n: {int(b): v for b, v in d.items()} for n, d in raw["weights"].items()}
    raw_pairs = {tuple(m["layers"]): {tuple(int(w) for w in k.split(",")): v for k, v in m["w_bits"].items()}
                 for m in raw["pairs"]}
    measured = matrix(raw_singles, raw_pairs)
    solved = matrix(table.weights, table.pairs)
    ev_m, ev_s = np.linalg.eigvalsh(measured), np.linalg.eigvalsh(solved)
    assert table.meta["psd"]["negative_eigenvalues"] == int((ev_m < 0).sum()) > 0
    # the solved singles are the projection's diagonal shifted per layer, which moves a layer's
    # whole block by a constant: no longer exactly PSD, but only by those shifts
    proj = measured
    ev, vec = np.linalg.eigh(measured)
    proj = (vec * np.clip(ev, 0, None)) @ vec.T
    assert np.linalg.eigvalsh(proj).min() > -1e-9
    for (a, b), t in table.pairs.items():
        for (wa, wb), v in t.items():
            assert v == pytest.approx(2 * proj[pos[(a, wa)], pos[(b, wb)]], abs=1e-12)
    for n in free:
        diag = {b: proj[pos[(n, b)], pos[(n, b)]] for b in widths[n]}
        assert table.weights[n] == pytest.approx({b: v - min(diag.values()) for b, v in diag.items()}, abs=1e-12)
    assert ev_s.min() > ev_m.min()


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
