"""The fpga-int export as the FPGA flows read it: hls4ml's documented QONNX flow and its g++ C
simulation, against qonnx's execution of the same file (verify/consumer.py)."""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
import torch
import torch.fx
from brevitas.export import export_qonnx

from infoq_deploy.backends import hls4ml_csim
from infoq_deploy.cli import main
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.targets import load_target
from infoq_deploy.export.writer import export_model
from infoq_deploy.importing.fold_bn import FoldBatchNorm
from infoq_deploy.importing.layers import build_layer_table
from infoq_deploy.models.cifar_resnet import cifar_resnet
from infoq_deploy.quantize.brevitas_model import build_quant_model, calibrate
from infoq_deploy.stages import consumers_for
from infoq_deploy.verify.check import MIN_AGREEMENT, verify_export
from infoq_deploy.verify.consumer import NOT_RUN, PASSED, REFUSED, check_consumer

needs_hls4ml = pytest.mark.skipif(hls4ml_csim.unavailable() is not None, reason=str(hls4ml_csim.unavailable()))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INFOQ_DEPLOY_CACHE", str(tmp_path / "cache"))


def _resnet8(tmp_path):
    """CIFAR ResNet-8 (option-A shortcuts, residual adds, 8x8 average pool), random weights, mixed bits."""
    torch.manual_seed(0)
    model = cifar_resnet(8).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    gm = FoldBatchNorm().apply(torch.fx.symbolic_trace(model))
    layers = build_layer_table(gm, (3, 32, 32))
    bits = [8, 3, 5, 4, 6, 2, 7, 8][: len(layers)]
    allocation = {layer.name: (b, 8 if i in (0, len(layers) - 1) else max(b, 4)) for i, (layer, b) in enumerate(zip(layers, bits))}
    qmodel = build_quant_model(gm, layers, allocation, load_target("fpga-int").quant_spec())
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    calibrate(qmodel, x)
    path = tmp_path / "resnet8.onnx"
    export_model(qmodel, x[:1], "qonnx", path)
    return qmodel, allocation, x, path


@needs_hls4ml
def test_resnet_block_matches_qonnx_in_hls4ml(tmp_path):
    qmodel, allocation, x, path = _resnet8(tmp_path)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    # the rewrites hls4ml needs (export/passes/): no Slice/Pad shortcut, pool, Gemm or conv bias Quant left
    assert not ops & {"Slice", "Pad", "GlobalAveragePool", "Gemm"}, ops
    ours = verify_export(path, "qonnx", qmodel, x[:32], allocation=allocation)
    assert ours.ok, ours.mismatches
    result = check_consumer(path, "hls4ml", x[:24].numpy())
    assert result.status == PASSED, result.line()
    # Fixed point throughout, and hls4ml's accumulators are exact; qonnx sums in float32, which
    # rounds once a sum needs more than 24 bits (8-bit x 8-bit over 576 terms can), and such a
    # sum next to a rounding boundary moves one step: nearly every logit is identical
    assert result.agreement_all == 1.0 and result.exact_fraction >= 0.9, result.line()
    assert result.mean_abs_diff < result.tolerance / 10, result.line()


@needs_hls4ml
def test_default_model_runs_in_hls4ml(tmp_path):
    """The README's first command on fpga-int: verify.json carries hls4ml's C simulation, passed."""
    run_dir = tmp_path / "run"
    assert main(["--target", "fpga-int", "--budget", "4bit", "--method", "mse", "--consumer-size", "60",
                 "-o", str(run_dir)]) == 0
    (consumer,) = json.loads((run_dir / "verify.json").read_text())["consumers"]
    assert consumer["backend"] == "hls4ml" and consumer["status"] == PASSED, consumer
    assert consumer["n_inputs"] == 60 and consumer["agreement"] >= MIN_AGREEMENT
    # the average pool divides by 49: a mean exactly half-way between two levels may round the
    # other way, so not every logit is identical; most are
    assert consumer["exact_fraction"] > 0.5, consumer
    assert "hls4ml: passed" in (run_dir / "report.md").read_text()


@needs_hls4ml
def test_a_file_hls4ml_cannot_take_is_refused_in_one_sentence(tmp_path):
    """Brevitas's own QONNX export of the ResNet block, without our rewrites: hls4ml cannot take it,
    and the check says so (no traceback, status refused, which fails the verification)."""
    qmodel, _, x, _ = _resnet8(tmp_path)
    raw = tmp_path / "raw.onnx"
    export_qonnx(qmodel, x[:1], export_path=str(raw), dynamo=False, opset_version=13)
    result = check_consumer(raw, "hls4ml", x[:4].numpy())
    assert result.status == REFUSED and not result.ok
    assert "\n" not in result.reason and result.reason, result.reason


def test_missing_consumer_is_said_plainly(tmp_path, monkeypatch):
    monkeypatch.setattr(hls4ml_csim, "unavailable", lambda: "hls4ml is not installed (pip install -e '.[fpga]')")
    result = check_consumer(tmp_path / "never-read.onnx", "hls4ml", np.zeros((2, 1, 4, 4), np.float32))
    assert result.status == NOT_RUN and result.ok  # not run is no failure, but it is stated
    assert result.line() == "hls4ml: not run: hls4ml is not installed (pip install -e '.[fpga]')"
    with pytest.raises(UserError, match="cannot run here: hls4ml is not installed"):
        consumers_for("qonnx", "hls4ml")


def test_a_too_slow_simulation_is_not_run_but_named(tmp_path, monkeypatch):
    monkeypatch.setattr(hls4ml_csim, "unavailable", lambda: None)
    monkeypatch.setattr(hls4ml_csim, "seconds_per_input", lambda model: 40.0)
    monkeypatch.setattr(onnx, "load", lambda path: None)
    result = check_consumer(tmp_path / "m.onnx", "hls4ml", np.zeros((200, 3), np.float32), budget_seconds=300)
    assert result.status == NOT_RUN and "40.0 s per input" in result.reason and "--backend hls4ml" in result.reason


def test_backend_choice_is_checked_against_the_format():
    assert consumers_for("qonnx", "qonnx") == ()  # the reference executor only
    assert consumers_for("qcdq", None) == () and consumers_for("qcdq", "ort") == ()
    with pytest.raises(UserError, match="back end hls4ml does not run qcdq files; for qcdq use ort"):
        consumers_for("qcdq", "hls4ml")
    with pytest.raises(UserError, match="does not run qonnx files"):
        consumers_for("qonnx", "ort")


@needs_hls4ml
def test_a_build_past_its_time_limit_is_stopped_and_named(tmp_path):
    """The pipeline bounds a consumer's whole check (stages.CONSUMER_TIMEOUT_SECONDS): hls4ml's
    child process is stopped there, and the check is not run, with the command that runs it."""
    _, _, x, path = _resnet8(tmp_path)
    start = time.perf_counter()
    result = check_consumer(path, "hls4ml", x[:4].numpy(), timeout=1.0)
    assert time.perf_counter() - start < 60  # qonnx's reference run plus a stopped child, not a g++ build
    assert result.status == NOT_RUN and result.ok
    assert "did not finish within 1 s" in result.reason and "--backend hls4ml" in result.reason
