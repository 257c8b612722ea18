"""Bad input and faults a build pipeline hits: one sentence, a non-zero exit, no traceback, nothing left behind.

Each case is one command line run in-process against a shared workspace (an exception other
than the tool's own error would fail the test with its traceback). After every case the
workspace holds exactly the files it held before.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from infoq_deploy.cli import main
from infoq_deploy.core.atomic import dumps
from infoq_deploy.core.outputs import run_lock


class Pickled:
    """A class a hostile weights file makes torch import."""


def _run(*argv) -> int:
    return main([str(a) for a in argv])


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _edit_json(src: Path, dest: Path, edit) -> Path:
    doc = json.loads(src.read_text())
    edit(doc)
    dest.write_text(json.dumps(doc))
    return dest


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Files of a real run of the bundled model, and broken copies of them."""
    d = tmp_path_factory.mktemp("ws")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INFOQ_DEPLOY_CACHE", str(d / "cache"))
        yield _workspace(d)
    for path in d.rglob("*.json"):  # what the tool wrote here is strict JSON too
        json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{path}: {name} in JSON"))


def _workspace(d: Path) -> Path:
    assert _run("profile", "zoo:fashion-cnn", "--target", "fpga-int", "--method", "mse",
                "--data", "builtin:fashion-mnist", "-o", d / "s.json") == 0
    assert _run("allocate", d / "s.json", "--target", "fpga-int", "--budget", "4bit", "-o", d / "a.json") == 0
    assert _run("allocate", d / "s.json", "--target", "fpga-int", "--budget", "3bit", "-o", d / "a3.json") == 0
    assert _run("quantize", "zoo:fashion-cnn", d / "a.json", "-o", d / "q.pt") == 0
    assert _run("quantize", "zoo:fashion-cnn", d / "a3.json", "-o", d / "q3.pt") == 0
    assert _run("export", d / "q.pt", "-o", d / "m.onnx") == 0
    assert _run("verify", d / "m.onnx", d / "q.pt", "--verify-size", "100", "-o", d / "v.json") == 0
    assert _run("profile", "zoo:fashion-cnn", "--target", "mcu-int", "--method", "mse", "-o", d / "s_mcu.json") == 0
    assert _run("allocate", d / "s_mcu.json", "--target", "mcu-int", "--budget", "4bit", "-o", d / "a_mcu.json") == 0

    def set_bits(i, w=None, a=None):
        def edit(doc):
            doc["layers"][i].update({k: v for k, v in (("w_bits", w), ("a_bits", a)) if v is not None})
        return edit

    _edit_json(d / "a_mcu.json", d / "a_mcu_w3.json", set_bits(1, w=3))
    _edit_json(d / "a.json", d / "a_a16.json", set_bits(2, a=16))
    _edit_json(d / "a.json", d / "a_pin.json", set_bits(0, w=2))
    _edit_json(d / "s.json", d / "s_twice.json", lambda doc: doc["layers"].append(dict(doc["layers"][0])))
    _edit_json(d / "s.json", d / "s_negative.json",
               lambda doc: doc["weights"][doc["layers"][1]["name"]].update({"4": -0.5}))
    _edit_json(d / "s.json", d / "s_macs.json", lambda doc: doc["layers"][1].update(macs=-7))
    _edit_json(d / "s.json", d / "s_unscored.json", lambda doc: doc["weights"].pop(doc["layers"][0]["name"]))
    _edit_json(d / "a.json", d / "a_budget.json", lambda doc: doc["budgets"][0].update(text="four bits"))
    _edit_json(d / "v.json", d / "v_short.json", lambda doc: doc.update(result={"ok": True}))
    record = torch.load(d / "q.pt", weights_only=True)
    record["source"].pop("spec")
    torch.save(record, d / "q_damaged.pt")
    record = torch.load(d / "q.pt", weights_only=True)
    record["ptq"] = {"algorithm": "adaround", "bias_correction": True}
    torch.save(record, d / "q_ptq.pt")
    (d / "broken.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(300))
    (d / "fake.npz").write_bytes(b"just some text, not a zip archive\n")
    torch.save({"weight": Pickled()}, d / "evil.pt")
    small = d / "small" / "cls"
    small.mkdir(parents=True)
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(small / "a.png")
    _lstm_onnx(d / "lstm.onnx")
    (d / "broken_model.py").write_text("def build(:\n")
    (d / "a_dir").mkdir()
    (d / "a_file").write_text("a file, not a directory\n")
    return d


def _lstm_onnx(path: Path) -> None:
    """A valid ONNX model with a standard operator the importer has no converter for."""
    hidden, feat = 4, 16
    w = numpy_helper.from_array(np.zeros((1, 4 * hidden, feat), np.float32), "W")
    r = numpy_helper.from_array(np.zeros((1, 4 * hidden, hidden), np.float32), "R")
    shape = numpy_helper.from_array(np.array([1, 1, feat], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["seq"]),
             helper.make_node("LSTM", ["seq", "W", "R"], ["y"], hidden_size=hidden, name="lstm")]
    graph = helper.make_graph(nodes, "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, hidden])], [w, r, shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


M = "zoo:fashion-cnn"
CASES = [
    # (id, argv with {d} for the workspace, what the one sentence must say)
    ("forbidden bits in a given allocation", ["quantize", M, "{d}/a_mcu_w3.json", "-o", "{d}/out.pt"],
     "target mcu-int does not allow"),
    ("16-bit activations on fpga-int", ["quantize", M, "{d}/a_a16.json", "-o", "{d}/out.pt"], "does not allow"),
    ("a violated pin", ["quantize", M, "{d}/a_pin.json", "-o", "{d}/out.pt"], "(pinned at w8/a8)"),
    ("the pipeline with a forbidden allocation", ["--target", "mcu-int", "--allocation", "{d}/a_mcu_w3.json",
                                                 "-o", "{d}/run"], "does not allow"),
    ("a verification of another model", ["report", "{d}/q3.pt", "{d}/v.json", "-o", "{d}/rep"],
     "made for another quantized model"),
    ("a table naming a layer twice", ["allocate", "{d}/s_twice.json", "--target", "fpga-int", "--budget", "4bit",
                                      "-o", "{d}/out.json"], "listed twice"),
    ("a negative score", ["allocate", "{d}/s_negative.json", "--target", "fpga-int", "--budget", "4bit",
                          "-o", "{d}/out.json"], "finite numbers >= 0"),
    ("a negative MAC count", ["allocate", "{d}/s_macs.json", "--target", "fpga-int", "--budget", "4bit",
                              "-o", "{d}/out.json"], "counts must be >= 0"),
    ("-o names a directory", ["allocate", "{d}/s.json", "--target", "fpga-int", "--budget", "4bit", "-o", "{d}/a_dir"],
     "is a directory"),
    ("-o is empty", ["export", "{d}/q.pt", "-o", ""], "-o is empty"),
    ("-o is empty for the pipeline", ["--target", "fpga-int", "--budget", "4bit", "-o", ""], "-o is empty"),
    ("-o under a file", ["export", "{d}/q.pt", "-o", "{d}/a_file/m.onnx"], "is a file, not a directory"),
    ("report -o names a file", ["report", "{d}/q.pt", "{d}/v.json", "-o", "{d}/a_file"], "is not a directory"),
    ("profile -o names a directory, found before the sweep",
     ["profile", M, "--target", "fpga-int", "--data", "builtin:fashion-mnist", "-o", "{d}/a_dir"], "is a directory"),
    ("an overflowing budget", ["allocate", "{d}/s.json", "--target", "fpga-int", "--budget", "1e308MB",
                               "-o", "{d}/out.json"], "out of range"),
    ("a negative seed", ["profile", M, "--target", "fpga-int", "--method", "mse", "--seed", "-1",
                         "-o", "{d}/out.json"], "argument --seed"),
    ("a zero calibration size", ["profile", M, "--target", "fpga-int", "--method", "mse", "--data",
                                 "builtin:fashion-mnist", "--calib-size", "0", "-o", "{d}/out.json"],
     "argument --calib-size"),
    ("--verify-size beyond the data", ["verify", "{d}/m.onnx", "{d}/q.pt", "--verify-size", "5000"],
     "is more than the 1000 evaluation samples"),
    ("--verify-size beyond the data, before the pipeline starts",
     ["--target", "fpga-int", "--budget", "4bit", "--verify-size", "5000", "-o", "{d}/run"], "--verify-size 5000"),
    ("a standard ONNX operator the importer cannot take", ["inspect", "{d}/lstm.onnx"],
     "standard ONNX operator LSTM"),
    ("a weights file that imports a global", ["inspect", M, "--weights", "{d}/evil.pt"],
     "is refused: loading it would import "),
    ("a corrupt .tar.gz", ["profile", M, "--target", "fpga-int", "--method", "mse", "--data", "{d}/broken.tar.gz",
                           "-o", "{d}/out.json"], "truncated, damaged or not a tar archive"),
    ("an .npz that is not a zip", ["profile", M, "--target", "fpga-int", "--method", "mse", "--data", "{d}/fake.npz",
                                   "-o", "{d}/out.json"], "is not an .npz archive"),
    ("a mistyped subcommand", ["profle", M], "did you mean `infoq-deploy profile`"),
    ("images of another size", ["profile", M, "--target", "fpga-int", "--method", "mse", "--data", "{d}/small",
                                "-o", "{d}/out.json"], "resize the images to 28x28"),
    ("a table without scores for a layer", ["allocate", "{d}/s_unscored.json", "--target", "fpga-int", "--budget",
                                            "4bit", "-o", "{d}/out.json"], "has no scores for layer"),
    ("an allocation whose budget is not one", ["quantize", M, "{d}/a_budget.json", "-o", "{d}/out.pt"],
     "is not a budget"),
    ("a verification without its numbers", ["report", "{d}/q.pt", "{d}/v_short.json", "-o", "{d}/rep"], "is damaged"),
    ("a quantized file whose record is damaged", ["export", "{d}/q_damaged.pt", "-o", "{d}/out.onnx"], "is damaged"),
    ("a model file with a syntax error", ["inspect", "{d}/broken_model.py:build"], "SyntaxError"),
    ("a factory the file lacks", ["inspect", "{d}/lstm.onnx.py:build"], "does not exist"),
    ("a damaged quantized file", ["export", "{d}/s.json", "-o", "{d}/out.onnx"], "cannot be read as a quantized model"),
    ("a table profiled under other thresholds", ["allocate", "{d}/s.json", "--target", "fpga-int", "--budget", "4bit",
                                                 "--ptq", "mse", "-o", "{d}/out.json"],
     "the sensitivity table was profiled with minmax thresholds, but the --ptq given deploys mse"),
    ("an allocation profiled under other thresholds", ["quantize", M, "{d}/a.json", "--ptq", "mse", "-o",
                                                       "{d}/out.pt"], "was profiled with minmax thresholds"),
    ("GPTQ on too few samples", ["quantize", M, "{d}/a.json", "--ptq", "gptq", "--calib-size", "32", "-o", "{d}/out.pt"],
     "--ptq gptq needs at least 64 calibration samples: layer fc has 64 inputs per output"),
    ("a quantized file with an unknown PTQ record", ["export", "{d}/q_ptq.pt", "-o", "{d}/out.onnx"], "is damaged"),
]


@pytest.mark.parametrize("argv,says", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_sentence_and_leaves_nothing(ws, capsys, argv, says):
    before = _snapshot(ws)
    capsys.readouterr()
    code = _run(*[a.format(d=ws) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("infoq-deploy: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    assert says in err, err
    assert _snapshot(ws) == before, "the command left files behind"


def test_a_run_directory_is_locked_while_a_run_writes_it(ws, capsys):
    from infoq_deploy import commands
    from infoq_deploy.cli import build_parsers

    run_dir = ws / "locked"
    run_dir.mkdir()
    argv = ["--target", "fpga-int", "--budget", "4bit", "--method", "mse", "-o", str(run_dir)]
    cfg = commands._run_config(build_parsers()[1].parse_args(argv), budgets=["4bit"], method="mse")
    (run_dir / "run.json").write_text(json.dumps({"status": "running", "pid": 4242, "inputs": cfg.inputs()}))
    with run_lock(run_dir, "the test"):  # as the run of process 4242 would hold it
        code = _run(*argv)
    err = capsys.readouterr().err
    shutil.rmtree(run_dir)
    assert code == 2 and "being written by another infoq-deploy run (process 4242)" in err, err


@contextmanager
def small_mount(path: Path, size: str, *options: str):
    """A tmpfs of ``size`` at ``path`` (needs root); the test is skipped, saying why, where it cannot mount."""
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8); run the suite as root (as .ci/run does)")
    opts = ",".join((f"size={size}", *options))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the full-disk cases need one")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_fails_in_one_sentence_and_marks_the_run_failed(ws, tmp_path, capsys):
    with small_mount(tmp_path / "full", "48k") as full:
        code = _run("quantize", M, ws / "a.json", "-o", full / "q.pt")
        err = capsys.readouterr().err
        assert code == 2 and "the disk is full" in err and "\n" not in err.strip(), err
        assert list(full.iterdir()) == [], "a half-written file was left on the full disk"

        code = _run("--target", "fpga-int", "--budget", "4bit", "--method", "mse", "-o", full / "run")
        err = capsys.readouterr().err
        assert code == 2 and "the disk is full" in err, err
        status = json.loads((full / "run" / "run.json").read_text())
        assert status["status"] == "failed" and "the disk is full" in status["reason"]
        assert not [p for p in (full / "run").iterdir() if p.name.endswith(".part")]


def test_a_read_only_location_is_refused_before_any_work(ws, tmp_path, capsys):
    with small_mount(tmp_path / "ro", "64k", "ro") as ro:
        cache = ws / "cache-ro"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("INFOQ_DEPLOY_CACHE", str(cache))
            code = _run("profile", M, "--target", "fpga-int", "--data", "builtin:fashion-mnist", "-o", ro / "s.json")
        err = capsys.readouterr().err
        assert code == 2 and "the file system is read-only" in err, err
        assert not cache.exists(), "the InfoQ sweep started before the output location was checked"
        code = _run("--target", "fpga-int", "--budget", "4bit", "-o", ro / "run")
        assert code == 2 and "read-only" in capsys.readouterr().err

        with pytest.MonkeyPatch.context() as mp:  # the sweep checkpoints into the cache: found before it starts
            mp.setenv("INFOQ_DEPLOY_CACHE", str(ro / "cache"))
            code = _run("profile", M, "--target", "fpga-int", "--data", "builtin:fashion-mnist",
                        "-o", tmp_path / "s.json")
        err = capsys.readouterr().err
        assert code == 2 and "the profile cache" in err and "read-only" in err, err
        assert not (tmp_path / "s.json").exists()


def test_written_json_is_strict():
    assert json.loads(dumps({"a": 1.5})) == {"a": 1.5}
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            dumps({"limit": bad})


def test_a_verification_of_a_changed_file_is_refused(ws, tmp_path, capsys):
    onnx_copy = tmp_path / "m.onnx"
    shutil.copy(ws / "m.onnx", onnx_copy)
    verified = _edit_json(ws / "v.json", tmp_path / "v.json", lambda doc: doc.update(onnx=str(onnx_copy)))
    assert _run("report", ws / "q.pt", verified, "-o", tmp_path / "ok") == 0
    onnx_copy.write_bytes(onnx_copy.read_bytes() + b"\0")
    capsys.readouterr()
    assert _run("report", ws / "q.pt", verified, "-o", tmp_path / "changed") == 2
    assert "has changed since" in capsys.readouterr().err and not (tmp_path / "changed").exists()
    damaged = _edit_json(ws / "v.json", tmp_path / "v2.json", lambda doc: doc.pop("eval"))
    assert _run("report", ws / "q.pt", damaged, "-o", tmp_path / "damaged") == 2
    assert "is damaged" in capsys.readouterr().err


def test_a_verdict_edited_into_a_verification_is_not_believed(ws, tmp_path):
    edited = _edit_json(ws / "v.json", tmp_path / "v.json", lambda doc: doc["result"].update(agreement=0.5, ok=True))
    assert _run("report", ws / "q.pt", edited, "-o", tmp_path / "rep") == 0
    assert "**verification**: FAILED" in (tmp_path / "rep" / "report.md").read_text()
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["verify"]["ok"] is False


def test_sigterm_cleans_up_and_marks_the_run_failed(tmp_path):
    """A build pipeline's timeout sends SIGTERM: no temporary file stays, and run.json says why the run stopped."""
    import signal
    import sys
    import time

    exe = str(Path(sys.executable).with_name("infoq-deploy"))
    env = dict(os.environ, INFOQ_DEPLOY_CACHE=str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([exe, "--target", "fpga-int", "--budget", "4bit", "-o", str(run_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "cache").is_dir():  # the InfoQ sweep has begun
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "infoq-deploy: terminated (SIGTERM); no output was left half-written" in err and "Traceback" not in err
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "failed" and status["reason"] == "interrupted"
    assert not [p for p in tmp_path.rglob("*.part")], "a temporary file survived SIGTERM"


def test_pins_are_overridden_from_the_command_line_and_reported(ws, tmp_path, capsys):
    """A model whose pinned classifier alone breaks the budget needs a way to unpin it."""
    freed = tmp_path / "free.json"
    assert _run("allocate", ws / "s.json", "--target", "fpga-int", "--budget", "3bit", "--no-pin", "-o", freed) == 0
    layers = json.loads(freed.read_text())["layers"]
    assert (layers[0]["w_bits"], layers[-1]["w_bits"]) != (8, 8), "--no-pin changed nothing at a tight budget"
    pinned = tmp_path / "pinned.json"
    assert _run("allocate", ws / "s.json", "--target", "fpga-int", "--budget", "3bit", "--pin", "last=4,8",
                "-o", pinned) == 0
    doc = json.loads(pinned.read_text())
    assert (doc["layers"][-1]["w_bits"], doc["layers"][-1]["a_bits"]) == (4, 8)
    assert (doc["layers"][0]["w_bits"], doc["layers"][0]["a_bits"]) == (8, 8)  # the target's first pin stays
    assert doc["pins"]["from"] == "--pin last=4,8"
    q, m, v = tmp_path / "q.pt", tmp_path / "m.onnx", tmp_path / "v.json"
    assert _run("quantize", M, pinned, "-o", q) == 0  # the rules it is checked against are the recorded pins
    assert _run("export", q, "-o", m) == 0 and _run("verify", m, q, "--verify-size", "50", "-o", v) == 0
    assert _run("report", q, v, "-o", tmp_path / "rep") == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "fc (last layer) at w4/a8, by target fpga-int with --pin last=4,8" in md
    capsys.readouterr()
    assert _run("allocate", ws / "s.json", "--target", "fpga-int", "--budget", "3bit", "--pin", "last=9,9",
                "-o", tmp_path / "bad.json") == 2
    assert "does not allow" in capsys.readouterr().err and not (tmp_path / "bad.json").exists()
    assert _run("--target", "fpga-int", "--allocation", pinned, "--no-pin", "-o", tmp_path / "run") == 2
    assert "--pin/--no-pin have nothing to do" in capsys.readouterr().err
