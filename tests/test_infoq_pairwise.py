"""InfoQ --pairwise: ΔSMI of layer pairs quantized together, allocated by the quadratic program."""

from __future__ import annotations

import dataclasses

import pytest

from infoq_deploy import stages
from infoq_deploy.core.errors import UserError
from infoq_deploy.profile.table import load_sensitivity


def _target():
    """fpga-int, weights only at 2, 3 or 8 bits: the pairs are measured at 2 and 3."""
    t = stages.load_target("fpga-int")
    return dataclasses.replace(t, weights=dataclasses.replace(t.weights, bits=(2, 3, 8)),
                               activations=dataclasses.replace(t.activations, bits=(8,)))


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    model = stages.load_model(stages.DEFAULT_MODEL)
    plan = stages.plan_datasets(model.preprocess, data=stages.DEFAULT_DATA, eval_data=stages.DEFAULT_EVAL_DATA,
                                calib_size=160)
    cache = tmp_path_factory.mktemp("cache")
    target = _target()
    plain = stages.profile(model, target, plan.calibration, "infoq", n_proj=16, cache_dir=cache, progress=False)
    paired = stages.profile(model, target, plan.calibration, "infoq", n_proj=16, pairwise=True, cache_dir=cache,
                            progress=False)
    return model, plan, target, plain, paired


def test_pairs_add_terms_and_leave_the_single_scores_alone(tables):
    _, _, target, plain, paired = tables
    assert not plain.pairs and "pairwise" not in plain.meta
    assert paired.weights == plain.weights and paired.activations == plain.activations
    n = len(paired.layers)
    free = [l.name for l in paired.layers if len(target.layer_choices(l.order, n)) > 1]
    assert len(free) == n - 2  # fpga-int pins the first and the last layer
    assert {frozenset(p) for p in paired.pairs} == {frozenset((a, b)) for i, a in enumerate(free) for b in free[i + 1:]}
    assert all(set(t) == {(2, 2), (2, 3), (3, 2), (3, 3)} for t in paired.pairs.values())
    meta = paired.meta["pairwise"]
    assert meta["widths"] == [2, 3] and meta["pairs"] == len(paired.pairs)
    # each term is the super-additive part of (joint - the sum of each alone) at the later layer's
    # observers, over the mean width
    for row in meta["additivity"]:
        a, b = row["layers"]
        wa, wb = row["w_bits"]
        excess = max(row["joint"] - row["sum_alone"], 0.0)
        assert paired.pairs[(a, b)][(wa, wb)] == pytest.approx(excess / ((wa + wb) / 2), rel=1e-12, abs=1e-15)
        assert row["joint"] > 0 and row["sum_alone"] > 0
    assert meta["sub_additive_dropped"] == sum(r["joint"] < r["sum_alone"] for r in meta["additivity"])
    # the interaction is real: not every pair adds up
    assert any(abs(r["joint"] - r["sum_alone"]) > 0.05 * r["sum_alone"] for r in meta["additivity"])


def test_pairwise_table_round_trips_and_allocates_by_the_quadratic_program(tables, tmp_path):
    _, _, target, plain, paired = tables
    paired.save(tmp_path / "s.json")
    again = load_sensitivity(tmp_path / "s.json")
    assert again.pairs == paired.pairs
    doc = stages.allocation_document(again, target, ["3bit"])
    assert doc["solver"]["status"] == "Optimal" and doc["budgets"][0]["used"] <= doc["budgets"][0]["limit"]
    bits = {e["name"]: e["w_bits"] for e in doc["layers"]}
    own = sum(again.weights[e["name"]][e["w_bits"]] + again.activations[e["name"]][e["a_bits"]] for e in doc["layers"])
    cross = sum(t.get((bits[a], bits[b]), 0.0) for (a, b), t in again.pairs.items())
    assert doc["objective"] == pytest.approx(own + cross, rel=1e-9, abs=1e-12)
    from infoq_deploy.profile import registry

    assert any("--pairwise" in n for n in registry.notes("infoq", again))
    assert not any("--pairwise" in n for n in registry.notes("infoq", plain))


def test_same_inputs_same_pairs_and_a_cache_hit(tables, tmp_path):
    model, plan, target, _, paired = tables
    fresh = stages.profile(model, target, plan.calibration, "infoq", n_proj=16, pairwise=True, cache_dir=tmp_path,
                           progress=False)
    assert not fresh.meta["cache_hit"] and fresh.pairs == paired.pairs
    again = stages.profile(model, target, plan.calibration, "infoq", n_proj=16, pairwise=True, cache_dir=tmp_path,
                           progress=False)
    assert again.meta["cache_hit"] and again.pairs == paired.pairs


def test_pairwise_is_refused_for_another_method(tables):
    model, plan, target, _, _ = tables
    for method in ("mse", "clado"):
        with pytest.raises(UserError, match="--pairwise is a setting of --method infoq"):
            stages.profile(model, target, plan.calibration, method, pairwise=True)


def test_the_command_line_refuses_pairwise_for_another_method_in_one_line(tmp_path, capsys):
    from infoq_deploy.cli import main

    out = tmp_path / "s.json"
    code = main(["profile", stages.DEFAULT_MODEL, "--target", "fpga-int", "--data", stages.DEFAULT_DATA,
                 "--calib-size", "64", "--method", "mse", "--pairwise", "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert len(err) == 1 and "--pairwise is a setting of --method infoq, not of mse" in err[0]
