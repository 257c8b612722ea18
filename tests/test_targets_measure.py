"""`infoq-deploy targets measure`: a target whose latency table holds one model's own layer times,
measured in ONNX Runtime, which the allocator then costs that model with (and no other)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infoq_deploy.allocate.costs import model_cost
from infoq_deploy.cli import main
from infoq_deploy.core.targets import load_target
from infoq_deploy.importing.deployable import deployable
from infoq_deploy.importing.sources import load_model

TINY = str(Path(__file__).parent / "fixtures" / "tiny_cnn.py") + ":build"


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("measure") / "tiny-edge.toml"
    assert main(["targets", "measure", "edge-cpu-ort", TINY, "--input-shape", "1,8,8", "--runs", "5", "-o", str(out)]) == 0
    return out


def test_the_measured_target_costs_the_model_with_its_own_layer_times(measured):
    target = load_target(str(measured))
    doc = json.loads(measured.with_suffix(".latency.json").read_text())
    model = load_model(TINY, input_shape=(1, 8, 8))
    layers = deployable(model).layers
    assert doc["model_fingerprint"] == model.fingerprint
    assert {(r["layer"], r["w_bits"], r["a_bits"]) for r in doc["layers"]} == {
        (l.name, w, a) for l in layers for w, a in target.choices()}
    assert all(r["ms"] > 0 for r in doc["layers"])
    for w, a in target.choices():
        own = sum(r["ms"] for r in doc["layers"] if (r["w_bits"], r["a_bits"]) == (w, a))
        cost = model_cost("latency", layers, [(w, a)] * len(layers), target)
        assert cost == pytest.approx(own + doc["model_overhead_ms"])
        # the rest of the graph is the whole graph as ORT ran it less its layers' kernels
        whole, rest = (doc["provenance"][k][f"w{w}/a{a}"] for k in ("whole_graph_ms", "rest_of_graph_ms"))
        assert rest == pytest.approx(max(0.0, whole - own))
        # the profiled kernel times are scaled to the unprofiled run: the layers never exceed it
        assert own <= whole * (1 + 1e-9) and own + rest == pytest.approx(whole)
    assert doc["model_overhead_ms"] == max(doc["provenance"]["rest_of_graph_ms"].values())


def test_integer_layers_left_in_float_are_measured_and_costed(measured):
    """Every other layer integer: an integer layer a float layer reads has no output quantizer
    and ORT runs it in float; the table holds that time, measured so, and the cost uses it."""
    from infoq_deploy.allocate.costs import layer_cost, unfused

    target = load_target(str(measured))
    doc = json.loads(measured.with_suffix(".latency.json").read_text())
    layers = deployable(load_model(TINY, input_shape=(1, 8, 8))).layers
    integer, fp = target.choices()
    expected = set()
    for parity in (0, 1):
        expected |= unfused(layers, [integer if l.order % 2 == parity else fp for l in layers])
    assert {r["layer"] for r in doc["unfused_layers"]} == expected and "fc" not in expected
    assert all(r["ms"] > 0 and (r["w_bits"], r["a_bits"]) == integer for r in doc["unfused_layers"])
    bits = [integer if l.order % 2 == 0 else fp for l in layers]
    left = unfused(layers, bits)
    by_layer = {r["layer"]: r["ms"] for r in doc["unfused_layers"]}
    want = sum(by_layer[l.name] if l.name in left else layer_cost("latency", l, *b, target) for l, b in zip(layers, bits))
    assert model_cost("latency", layers, bits, target) == pytest.approx(want + doc["model_overhead_ms"])


def test_another_model_is_refused_with_a_measured_table(measured, tmp_path, capsys):
    other = tmp_path / "s.json"
    assert main(["profile", TINY, "--input-shape", "1,6,6", "--target", str(measured), "--method", "mse",
                 "--data", str(_data(tmp_path)), "-o", str(other)]) == 0
    code = main(["allocate", str(other), "--target", str(measured), "--budget", "1ms", "-o", str(tmp_path / "a.json")])
    err = capsys.readouterr().err
    assert code == 2 and "was measured on another model" in err and "targets measure" in err
    assert not (tmp_path / "a.json").exists()


def _data(tmp_path):
    import numpy as np

    p = tmp_path / "calib.npz"
    rng = np.random.default_rng(0)
    np.savez(p, x=rng.integers(0, 256, size=(32, 1, 6, 6), dtype=np.uint8), y=rng.integers(0, 4, size=32))
    return p


@pytest.mark.parametrize("argv, says", [
    (["targets", "measure", "fpga-int", TINY, "--input-shape", "1,8,8", "-o", "x.toml"], "no latency metric"),
    (["targets", "measure", "edge-cpu-ort", TINY, "--input-shape", "1,8,8", "-o", "x.json"], "name it NAME.toml"),
])
def test_measure_refuses_in_one_sentence(argv, says, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
