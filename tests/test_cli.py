"""The command-line contract: subcommands, files they write, and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from infoq_deploy.cli import main

TINY = str(Path(__file__).parent / "fixtures" / "tiny_cnn.py") + ":build"


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 1, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 4, size=64)
    p = tmp_path / "calib.npz"
    np.savez(p, x=x, y=y)
    return str(p)


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_targets_lists_shipped_targets(capsys):
    code, out, _ = run(capsys, "targets", "--json")
    assert code == 0
    names = {t["name"] for t in json.loads(out)}
    assert {"fpga-int", "edge-cpu-ort", "mcu-int"} <= names


def test_inspect_json_counts(capsys):
    code, out, _ = run(capsys, "inspect", TINY, "--input-shape", "1,8,8", "--json")
    assert code == 0
    doc = json.loads(out)
    assert [layer["name"] for layer in doc["layers"]] == ["conv1", "dw", "pw", "fc"]
    # conv1 8*1*9*64, dw 8*1*9*64, pw 8*8*64, fc 4*8
    assert doc["macs"] == 4608 + 4608 + 4096 + 32
    assert doc["layers"][1]["kind"] == "dwconv"


def test_inspect_counts_what_the_allocator_costs(capsys, tmp_path, data):
    """One accounting: inspect lists the BatchNorm-folded layers (folded biases count), and its
    float size is the reference that an "Nx" budget divides, as the allocation reports it."""
    code, out, _ = run(capsys, "inspect", TINY, "--input-shape", "1,8,8", "--json")
    doc = json.loads(out)
    assert doc["layers"][0]["bias_params"] == 8  # conv1 has no bias of its own; its BatchNorm gives 8
    table, alloc = tmp_path / "s.json", tmp_path / "a.json"
    code, _, err = run(capsys, "profile", TINY, "--input-shape", "1,8,8", "--target", "fpga-int", "--method", "mse",
                       "--data", data, "-o", str(table))
    assert code == 0, err
    code, _, err = run(capsys, "allocate", str(table), "--target", "fpga-int", "--budget", "3x", "-o", str(alloc))
    assert code == 0, err
    a = json.loads(alloc.read_text())
    assert a["cost"]["compression"] == pytest.approx(doc["float_size_bytes"] / a["cost"]["size_bytes"])
    assert a["budgets"][0]["limit"] == pytest.approx(doc["float_size_bytes"] / 3)


def test_profile_allocate_roundtrip(capsys, tmp_path, data):
    table = tmp_path / "s.json"
    code, _, err = run(
        capsys, "profile", TINY, "--input-shape", "1,8,8", "--target", "fpga-int", "--method", "mse", "--data", data, "-o", str(table)
    )
    assert code == 0, err
    doc = json.loads(table.read_text())
    assert set(doc["weights"]) == {"conv1", "dw", "pw", "fc"}
    assert set(doc["weights"]["dw"]) == {str(b) for b in range(2, 9)}
    alloc = tmp_path / "a.json"
    code, _, err = run(capsys, "allocate", str(table), "--target", "fpga-int", "--budget", "5bit", "-o", str(alloc))
    assert code == 0, err
    a = json.loads(alloc.read_text())
    bits = {layer["name"]: (layer["w_bits"], layer["a_bits"]) for layer in a["layers"]}
    assert bits["conv1"] == (8, 8) and bits["fc"] == (8, 8)  # pinned by fpga-int
    assert a["cost"]["avg_weight_bits"] <= 5 + 1e-9
    assert {"size_bytes", "bitops"} <= set(a["cost"])


@pytest.mark.parametrize(
    "budget, needle",
    [("1B", "cannot be met"), ("4.5MBB", "unknown unit"), ("3mb", "lower-case b")],
)
def test_bad_budget_fails_cleanly(capsys, tmp_path, data, budget, needle):
    table = tmp_path / "s.json"
    assert run(capsys, "profile", TINY, "--input-shape", "1,8,8", "--target", "fpga-int", "--method", "mse", "--data", data, "-o", str(table))[0] == 0
    alloc = tmp_path / "a.json"
    code, out, err = run(capsys, "allocate", str(table), "--target", "fpga-int", "--budget", budget, "-o", str(alloc))
    assert code == 2
    assert needle in err and err.count("\n") == 1
    assert not alloc.exists()


def test_unknown_target_and_missing_model(capsys, tmp_path):
    code, _, err = run(capsys, "inspect", str(tmp_path / "nope.onnx"))
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "targets")
    assert code == 0
    code, _, err = run(capsys, "profile", TINY, "--input-shape", "1,8,8", "--target", "fpga-intt", "-o", str(tmp_path / "s.json"))
    assert code == 2 and "fpga-int" in err


def test_pipeline_writes_run_dir_and_refuses_another_run(capsys, tmp_path, data):
    run_dir = tmp_path / "run"
    argv = [TINY, "--input-shape", "1,8,8", "--data", data, "--method", "mse", "--target", "fpga-int", "--budget", "5bit", "-o", str(run_dir)]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    for name in ("sensitivity.json", "allocation.json", "report.json", "run.json"):
        assert (run_dir / name).is_file()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    code, _, err = run(capsys, *argv[:-4], "--budget", "3bit", "-o", str(run_dir))
    assert code == 2 and "another run" in err


def test_console_script_exit_codes(tmp_path):
    exe = Path(sys.executable).with_name("infoq-deploy")
    ok = subprocess.run([str(exe), "targets"], capture_output=True, text=True)
    assert ok.returncode == 0 and "fpga-int" in ok.stdout
    bad = subprocess.run([str(exe), "inspect", str(tmp_path / "missing.py") + ":build", "--input-shape", "1,8,8"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and bad.stderr.startswith("infoq-deploy: error:")


def test_profile_infoq_writes_table_and_plots(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("INFOQ_DEPLOY_CACHE", str(tmp_path / "cache"))
    table = tmp_path / "s.json"
    code, out, err = run(
        capsys, "profile", "zoo:fashion-cnn", "--target", "fpga-int", "--method", "infoq",
        "--data", "builtin:fashion-mnist", "--calib-size", "300", "--n-proj", "8", "-o", str(table),
    )
    assert code == 0, err
    doc = json.loads(table.read_text())
    assert doc["meta"]["method"] == "infoq" and doc["meta"]["observers"]
    assert all(set(s) == {str(b) for b in range(2, 9)} for s in doc["weights"].values())
    for png in ("sensitivity.png", "observers.png"):
        assert (tmp_path / "s_plots" / png).stat().st_size > 1000
    assert "observer" in out


def test_profile_noise_floor_reaches_the_profiler(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("INFOQ_DEPLOY_CACHE", str(tmp_path / "cache"))
    table = tmp_path / "s.json"
    code, out, err = run(
        capsys, "profile", "zoo:fashion-cnn", "--target", "fpga-int", "--data", "builtin:fashion-mnist",
        "--calib-size", "120", "--n-proj", "8", "--noise-floor", "-o", str(table),
    )
    assert code == 0, err
    doc = json.loads(table.read_text())
    assert doc["meta"]["settings"]["noise_floor"] == {"null_bits": 16}
    assert any(s["8"] > 0 for s in doc["weights"].values())  # 8 bits scored by the null run, not 0


def test_profile_label_term_and_shrink_reach_the_profiler(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("INFOQ_DEPLOY_CACHE", str(tmp_path / "cache"))
    table = tmp_path / "s.json"
    code, out, err = run(
        capsys, "profile", "zoo:fashion-cnn", "--target", "fpga-int", "--data", "builtin:fashion-mnist",
        "--calib-size", "120", "--n-proj", "8", "--label-term", "logits", "--shrink", "-o", str(table),
    )
    assert code == 0, err
    doc = json.loads(table.read_text())
    assert doc["meta"]["settings"]["label_term"] == "logits"
    assert doc["meta"]["settings"]["shrink"] == {"standard_errors": 1.0}
    code, out, err = run(capsys, "profile", "zoo:fashion-cnn", "--target", "fpga-int", "--method", "mse",
                         "--label-term", "logits", "-o", str(tmp_path / "m.json"))
    assert code == 2 and "--label-term is a setting of --method infoq" in err and "Traceback" not in err


def test_a_reader_that_stops_early_gets_no_error():
    """`infoq-deploy inspect MODEL | head -1`: a closed pipe ends the command quietly, as SIGPIPE
    ends a shell tool (exit 141), with no error line on stderr. `true` reads nothing and exits at
    once, so the tool's first write (after the model is loaded) meets a closed pipe."""
    exe = str(Path(sys.executable).with_name("infoq-deploy"))
    proc = subprocess.run(f"'{exe}' inspect zoo:fashion-cnn | true; exit ${{PIPESTATUS[0]}}", shell=True,
                          executable="/bin/bash", capture_output=True, text=True)
    assert proc.returncode == 141 and proc.stderr == "", (proc.returncode, proc.stderr)


def test_threads_sets_torchs_thread_count_before_the_stage_runs(tmp_path, capsys, monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    missing = tmp_path / "missing.onnx"
    code = main(["profile", str(missing), "--target", "fpga-int", "--threads", "1", "-o", str(tmp_path / "s.json")])
    assert calls == [1] and code == 2 and "missing.onnx" in capsys.readouterr().err
    code = main(["profile", str(missing), "--target", "fpga-int", "--threads", "0", "-o", str(tmp_path / "s.json")])
    assert code == 2 and calls == [1] and "--threads" in capsys.readouterr().err
