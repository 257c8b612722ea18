"""Each stage as its own subcommand, taking the previous stage's files.

quantize -> QUANTIZED.pt -> finetune -> QUANTIZED.pt -> export -> MODEL.onnx -> verify ->
VERIFY.json -> report. The chain runs on the bundled Fashion-MNIST CNN (a real trained
model, committed data) so that fine-tuning has something real to recover.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from infoq_deploy.cli import main
from infoq_deploy.core.evaluate import predict

TINY = str(Path(__file__).parent / "fixtures" / "tiny_cnn.py") + ":build"


def _run(*argv):
    return main([str(a) for a in argv])


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INFOQ_DEPLOY_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """profile -> allocate -> quantize -> finetune -> export -> verify -> report, as a user types it."""
    d = tmp_path_factory.mktemp("chain")
    steps = [
        ("profile", "zoo:fashion-cnn", "--target", "fpga-int", "--method", "mse", "--data", "builtin:fashion-mnist",
         "-o", d / "s.json"),
        ("allocate", d / "s.json", "--target", "fpga-int", "--budget", "3bit", "-o", d / "a.json"),
        # round-to-nearest, so fine-tuning has accuracy to win back (GPTQ, the default, keeps most of it)
        ("quantize", "zoo:fashion-cnn", d / "a.json", "--ptq", "minmax", "--no-bias-correction", "-o", d / "q.pt"),
        ("finetune", d / "q.pt", "--epochs", "2", "--lr", "1e-3", "-o", d / "f.pt"),
        ("export", d / "f.pt", "-o", d / "m.onnx"),
        ("verify", d / "m.onnx", d / "f.pt", "-o", d / "v.json"),
        ("report", d / "f.pt", d / "v.json", "--sensitivity", d / "s.json", "-o", d / "rep"),
    ]
    for step in steps:
        assert _run(*step) == 0, step[0]
    return d


def test_chain_writes_each_stage_file(chain):
    for name in ("s.json", "a.json", "q.pt", "f.pt", "checkpoints/best.pt", "checkpoints/last.pt", "m.onnx", "v.json",
                 "rep/report.json", "rep/report.md", "rep/bits_per_layer.png", "rep/sensitivity_heatmap.png",
                 "rep/cost_vs_budget.png", "rep/accuracy.png"):
        assert (chain / name).is_file(), name


def test_chain_finetunes_exports_and_verifies(chain):
    report = json.loads((chain / "rep" / "report.json").read_text())
    alloc = json.loads((chain / "a.json").read_text())
    acc = report["accuracies"]
    # 3-bit weights cost the trained CNN most of its accuracy; two epochs of LSQ win much of it back
    assert acc["float"] > 0.85 and acc["ptq"] < acc["float"] - 0.2
    assert acc["finetuned"] > acc["ptq"] + 0.2
    assert report["verify"]["ok"] and report["verify"]["agreement"] >= 0.995
    # the exported accuracy is the file's own, measured on the same 1,000 held-out images
    assert abs(acc["exported"] - acc["finetuned"]) <= 0.005
    wanted = {d["name"]: [d["w_bits"], d["a_bits"]] for d in alloc["layers"]}
    assert report["verify"]["bits_in_graph"] == wanted
    assert report["finetune"]["epochs_run"] == 2
    assert set(report["timings"]) >= {"profile", "allocate", "quantize", "finetune", "verify"}


def test_quantized_file_rebuilds_the_same_model(chain):
    from infoq_deploy.data.load import load_data
    from infoq_deploy.quantize.file import load_quantized

    a, b = load_quantized(chain / "f.pt"), load_quantized(chain / "f.pt")
    x = load_data("builtin:fashion-mnist:eval", a.model.preprocess, limit=64).x
    assert torch.equal(predict(a.qmodel, x), predict(b.qmodel, x))
    q = load_quantized(chain / "q.pt")
    assert q.stage == "ptq" and a.stage == "finetuned"
    assert q.state_sha256() != a.state_sha256()  # fine-tuning changed weights and scales
    assert q.bits == a.bits


def test_finetune_resume_from_the_files_matches_a_straight_run(chain, tmp_path):
    """Stopped after epoch 1 and resumed from the checkpoint directory by a new command,
    fine-tuning ends where the chain's straight 2-epoch run ended."""
    from infoq_deploy.quantize.file import load_quantized

    ck = tmp_path / "ck"
    assert _run("finetune", chain / "q.pt", "--epochs", "1", "--lr", "1e-3", "--checkpoints", ck, "-o", tmp_path / "f1.pt") == 0
    assert _run("finetune", chain / "q.pt", "--epochs", "2", "--lr", "1e-3", "--checkpoints", ck, "--resume",
                "-o", tmp_path / "f2.pt") == 0
    resumed = load_quantized(tmp_path / "f2.pt")
    assert resumed.finetune["resumed_from"] == 1
    assert resumed.state_sha256() == load_quantized(chain / "f.pt").state_sha256()


def test_verify_fails_against_another_model(chain, capsys):
    """The fine-tuned export checked against the post-training model: a wrong pairing is caught."""
    capsys.readouterr()
    code = _run("verify", chain / "m.onnx", chain / "q.pt", "--verify-size", "300")
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "failed verification" in err


def test_report_refuses_a_verification_of_another_model(chain, tmp_path, capsys):
    code = _run("report", chain / "q.pt", chain / "v.json", "-o", tmp_path / "rep")
    err = capsys.readouterr().err
    assert code == 2 and "another quantized model" in err
    assert not (tmp_path / "rep").exists()


def test_export_format_override(chain, tmp_path, capsys):
    capsys.readouterr()
    assert _run("export", chain / "f.pt", "--format", "qcdq", "-o", tmp_path / "m.onnx", "--json") == 0
    assert json.loads(capsys.readouterr().out)["format"] == "qcdq"
    ops = {n.op_type for n in onnx.load(tmp_path / "m.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "Quant" not in ops
    assert _run("verify", tmp_path / "m.onnx", chain / "f.pt", "--format", "qcdq", "--verify-size", "200") == 0


def test_stages_reproduce_the_pipeline(tmp_path, quadrant_data, capsys):
    """The run directory's files are the stage files: re-running verify and report on them
    gives the pipeline's own numbers, and re-exporting gives a graph that verifies."""
    data = quadrant_data
    run_dir = tmp_path / "run"
    assert _run(TINY, "--input-shape", "1,8,8", "--data", data, "--target", "edge-cpu-ort", "--budget", "400B",
                "--method", "mse", "--epochs", "1", "-o", run_dir) == 0
    for name in ("quantized.pt", "finetuned.pt", "verify.json", "sensitivity.json", "allocation.json"):
        assert (run_dir / name).is_file(), name
    pipeline = json.loads((run_dir / "report.json").read_text())

    assert _run("export", run_dir / "finetuned.pt", "-o", tmp_path / "again.onnx") == 0
    assert _run("verify", tmp_path / "again.onnx", run_dir / "finetuned.pt", "-o", tmp_path / "v.json") == 0
    assert _run("verify", run_dir / "model.onnx", run_dir / "finetuned.pt", "-o", tmp_path / "v2.json") == 0
    ours = json.loads((tmp_path / "v2.json").read_text())["result"]
    for key in ("agreement", "accuracy", "mean_abs_diff", "bits_in_graph", "ok", "ort_float"):
        assert ours[key] == pipeline["verify"][key], key
    assert isinstance(ours["ort_float"], dict) and ours["ort_integer_ops"]  # what ORT runs, from its own graph
    assert _run("report", run_dir / "finetuned.pt", tmp_path / "v2.json", "--sensitivity",
                run_dir / "sensitivity.json", "-o", tmp_path / "rep") == 0
    again = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert again["accuracies"] == pipeline["accuracies"]
    assert again["layers"] == pipeline["layers"]
    assert again["cost_panels"] == pipeline["cost_panels"]
    assert "- **ONNX Runtime**: " in (tmp_path / "rep" / "report.md").read_text()

    # the whole pipeline from an allocation file, skipping profile and allocate
    capsys.readouterr()
    assert _run(TINY, "--input-shape", "1,8,8", "--data", data, "--target", "edge-cpu-ort",
                "--allocation", run_dir / "allocation.json", "-o", tmp_path / "run2") == 0
    second = json.loads((tmp_path / "run2" / "report.json").read_text())
    assert second["verify"]["bits_in_graph"] == pipeline["verify"]["bits_in_graph"]
    assert not (tmp_path / "run2" / "sensitivity.json").exists()


@pytest.fixture
def tiny_quantized(tmp_path, quadrant_data):
    data = quadrant_data
    assert _run("profile", TINY, "--input-shape", "1,8,8", "--target", "fpga-int", "--method", "mse", "--data", data,
                "-o", tmp_path / "s.json") == 0
    assert _run("allocate", tmp_path / "s.json", "--target", "fpga-int", "--budget", "6bit", "-o", tmp_path / "a.json") == 0
    assert _run("quantize", TINY, tmp_path / "a.json", "--input-shape", "1,8,8", "--data", data, "-o",
                tmp_path / "q.pt") == 0
    return tmp_path, data


def _one_line_error(capsys, code, needle):
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and needle in err, err


def test_bad_stage_inputs_get_one_line_and_no_output(tiny_quantized, capsys):
    d, data = tiny_quantized
    capsys.readouterr()
    (d / "trunc.pt").write_bytes((d / "q.pt").read_bytes()[:300])
    (d / "bad.onnx").write_text("not a model")
    out = d / "out.pt"
    _one_line_error(capsys, _run("finetune", d / "trunc.pt", "--epochs", "1", "-o", out), "cannot be read")
    _one_line_error(capsys, _run("finetune", d / "a.json", "--epochs", "1", "-o", out), "cannot be read")
    _one_line_error(capsys, _run("finetune", d / "q.pt", "--epochs", "0", "-o", out), "at least one epoch")
    _one_line_error(capsys, _run("export", d / "missing.pt", "-o", d / "m.onnx"), "does not exist")
    _one_line_error(capsys, _run("verify", d / "bad.onnx", d / "q.pt", "-o", d / "v.json"), "not a readable ONNX")
    _one_line_error(capsys, _run("report", d / "q.pt", d / "a.json", "-o", d / "rep"), "not an infoq-deploy verification")
    # an allocation for another target, and one for another model
    _one_line_error(capsys, _run("quantize", TINY, d / "a.json", "--input-shape", "1,8,8", "--data", data,
                                 "--target", "edge-cpu-ort", "-o", out), "allocated for target fpga-int")
    _one_line_error(capsys, _run("quantize", "zoo:fashion-cnn", d / "a.json", "-o", out), "does not match")
    for name in ("out.pt", "m.onnx", "v.json", "rep"):
        assert not (d / name).exists(), name
    # a checkpoint from another model is refused on --resume
    assert _run("finetune", d / "q.pt", "--epochs", "1", "-o", d / "f.pt") == 0
    alloc = json.loads((d / "a.json").read_text())
    alloc["layers"][1]["w_bits"] = 8 if alloc["layers"][1]["w_bits"] != 8 else 7
    (d / "a2.json").write_text(json.dumps(alloc))
    assert _run("quantize", TINY, d / "a2.json", "--input-shape", "1,8,8", "--data", data, "-o", d / "q2.pt") == 0
    capsys.readouterr()
    _one_line_error(capsys, _run("finetune", d / "q2.pt", "--epochs", "2", "--resume", "-o", out), "another model")
    assert not out.exists()


def test_recorded_data_that_changed_is_refused(tiny_quantized, capsys):
    """Later stages redraw the recorded evaluation set; edited data must not pass silently."""
    d, data = tiny_quantized
    z = dict(np.load(data))
    z["x"][:, :, 0, 0] ^= 1  # every sample, so the held-out half changes too
    np.savez(data, **z)
    capsys.readouterr()
    assert _run("export", d / "q.pt", "-o", d / "m.onnx") == 0
    _one_line_error(capsys, _run("verify", d / "m.onnx", d / "q.pt"), "content hash differs")
    # naming the data explicitly is the way out
    shutil.copy(data, d / "other.npz")
    assert _run("verify", d / "m.onnx", d / "q.pt", "--eval-data", d / "other.npz") == 0
