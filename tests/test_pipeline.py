"""End to end: one command from a float model to a verified, exported graph and a report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from infoq_deploy.cli import main

TINY = str(Path(__file__).parent / "fixtures" / "tiny_cnn.py") + ":build"
EXE = str(Path(sys.executable).with_name("infoq-deploy"))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INFOQ_DEPLOY_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def data(quadrant_data):
    return quadrant_data


def _run(*argv):
    return main([str(a) for a in argv])


@pytest.mark.parametrize(
    "target, budget, method, fmt",
    [("fpga-int", "5bit", "infoq", "qonnx"), ("edge-cpu-ort", "400B", "mse", "qcdq")],
)
def test_tiny_model_end_to_end(tmp_path, data, target, budget, method, fmt, capsys):
    run_dir = tmp_path / "run"
    code = _run(TINY, "--input-shape", "1,8,8", "--data", data, "--target", target, "--budget", budget,
                "--method", method, "--epochs", "1", "-o", run_dir)
    err = capsys.readouterr().err
    assert code == 0, err
    for name in ("model.onnx", "report.json", "report.md", "allocation.json", "sensitivity.json",
                 "bits_per_layer.png", "cost_vs_budget.png", "accuracy.png", "checkpoints/best.pt"):
        assert (run_dir / name).is_file(), name
    report = json.loads((run_dir / "report.json").read_text())
    alloc = json.loads((run_dir / "allocation.json").read_text())
    assert report["verify"]["ok"] and report["verify"]["agreement"] >= 0.995
    assert report["verify"]["mismatches"] == []
    # the graph on disk carries the allocated bits (verify read them out of the file)
    in_graph = {k: tuple(v) for k, v in report["verify"]["bits_in_graph"].items()}
    assert in_graph == {d["name"]: (d["w_bits"], d["a_bits"]) for d in alloc["layers"]}
    graph = onnx.load(run_dir / "model.onnx").graph
    ops = {n.op_type for n in graph.node}
    assert ("Quant" in ops) if fmt == "qonnx" else ({"QuantizeLinear", "DequantizeLinear"} <= ops)
    if fmt == "qonnx":  # shipped in qonnx's cleaned form: shapes inferred for every tensor
        assert len(graph.value_info) >= len(graph.node) - 1
    acc = report["accuracies"]
    assert set(acc) >= {"float", "ptq", "finetuned", "exported"}
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"


def test_run_from_an_allocation_file(tmp_path, data, capsys):
    first = tmp_path / "a"
    assert _run(TINY, "--input-shape", "1,8,8", "--data", data, "--target", "fpga-int", "--budget", "6bit",
                "--method", "mse", "-o", first) == 0
    second = tmp_path / "b"
    code = _run(TINY, "--allocation", first / "allocation.json", "--input-shape", "1,8,8", "--data", data,
                "--target", "fpga-int", "-o", second)
    assert code == 0, capsys.readouterr().err
    a = json.loads((first / "allocation.json").read_text())["layers"]
    b = json.loads((second / "report.json").read_text())["verify"]["bits_in_graph"]
    assert {d["name"]: [d["w_bits"], d["a_bits"]] for d in a} == b
    capsys.readouterr()
    code = _run(TINY, "--allocation", first / "allocation.json", "--budget", "5bit", "--input-shape", "1,8,8",
                "--data", data, "--target", "fpga-int", "-o", tmp_path / "c")
    assert code == 2 and "one or the other" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_bad_inputs_leave_nothing(tmp_path, data, capsys):
    run_dir = tmp_path / "run"
    # an allocation made for another model: a real allocation with one layer renamed
    table = tmp_path / "s.json"
    assert _run("profile", TINY, "--input-shape", "1,8,8", "--target", "fpga-int", "--method", "mse", "--data", data, "-o", table) == 0
    alloc = tmp_path / "a.json"
    assert _run("allocate", table, "--target", "fpga-int", "--budget", "6bit", "-o", alloc) == 0
    doc = json.loads(alloc.read_text())
    doc["layers"][1]["name"] = "nope"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(doc))
    capsys.readouterr()
    code = _run(TINY, "--allocation", other, "--input-shape", "1,8,8", "--data", data, "--target", "fpga-int", "-o", run_dir)
    assert code == 2 and "does not match" in capsys.readouterr().err
    assert not run_dir.exists()
    # an impossible budget, a unit typo, an empty data folder
    for argv, needle in (
        (["--budget", "1B"], "cannot be met"),
        (["--budget", "4.5MBB"], "unknown unit"),
    ):
        code = _run(TINY, "--input-shape", "1,8,8", "--data", data, "--target", "fpga-int", "--method", "mse", *argv, "-o", run_dir)
        assert code == 2 and needle in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    code = _run(TINY, "--input-shape", "1,8,8", "--data", empty, "--target", "fpga-int", "--budget", "5bit", "-o", run_dir)
    assert code == 2 and capsys.readouterr().err.count("\n") == 1
    # a budget failure surfaces after profiling, so only the run marker may exist, never a report
    assert not (run_dir / "report.json").exists()
    assert not (run_dir / "model.onnx").exists()


def test_run_dir_holding_another_run_is_refused(tmp_path, data, capsys):
    run_dir = tmp_path / "run"
    base = [TINY, "--input-shape", "1,8,8", "--data", data, "--target", "fpga-int", "--method", "mse", "-o", run_dir]
    assert _run(*base, "--budget", "6bit") == 0
    code = _run(*base, "--budget", "5bit")
    assert code == 2 and "another run" in capsys.readouterr().err
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    code = _run(*base[:-1], stray, "--budget", "6bit")
    assert code == 2 and "not empty" in capsys.readouterr().err


def test_default_run(tmp_path):
    """What the README's first command runs: the bundled model, no network, no apt."""
    env = dict(os.environ, INFOQ_DEPLOY_CACHE=str(tmp_path / "cache"))
    out = subprocess.run([EXE, "--target", "fpga-int", "--budget", "4bit", "-o", str(tmp_path / "run")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["verify"]["ok"]
    acc = report["accuracies"]
    # the bundled CNN is a real trained model: PTQ at ~4-bit weights stays close to float
    assert acc["float"] > 0.85 and acc["exported"] > acc["float"] - 0.05
    assert "## Accuracy" in out.stdout


def test_verification_subset_is_class_balanced():
    import torch

    from infoq_deploy.data.load import Dataset
    from infoq_deploy.stages import verification_subset

    y = torch.arange(4).repeat_interleave(50)  # ordered by class, as image folders are
    ds = Dataset(x=torch.zeros(200, 1, 2, 2), y=y, classes=None, source="t", sha256="0")
    sub = verification_subset(ds, 40, seed=0)
    assert torch.bincount(sub.y, minlength=4).tolist() == [10, 10, 10, 10]
    assert verification_subset(ds, 200, seed=0) is ds
