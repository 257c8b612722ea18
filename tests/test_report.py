"""The run report from a small, self-consistent set of inputs (3 layers, 2 budgets)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from infoq_deploy.allocate.costs import BYTES_PER_MB, fp32_size_bytes, model_cost
from infoq_deploy.importing.layers import Layer
from infoq_deploy.profile.table import SensitivityTable
from infoq_deploy.report.plots import plot_bits_per_layer, plot_sensitivity_heatmap
from infoq_deploy.report.write import PLOTS, write_report

LAYERS = [
    Layer("conv1", "conv", 432, 16, 442368, (3, 32, 32), (16, 32, 32), 0),
    Layer("block.dw", "dwconv", 144, 16, 147456, (16, 32, 32), (16, 32, 32), 1),
    Layer("fc", "linear", 160, 10, 160, (16,), (10,), 2),
]
BITS = [(8, 8), (3, 4), (8, 8)]


def _table() -> SensitivityTable:
    weights = {l.name: {b: round((i + 1) * 0.7 / b**2, 6) for b in (2, 3, 4, 8)} for i, l in enumerate(LAYERS)}
    acts = {l.name: {b: round((i + 2) * 0.3 / b**2, 6) for b in (4, 8)} for i, l in enumerate(LAYERS)}
    return SensitivityTable("zoo:toy", "fpga-int", LAYERS, weights, acts, {"method": "infoq", "seed": 0})


def _allocation() -> dict:
    size = model_cost("size", LAYERS, BITS)
    bitops = model_cost("bitops", LAYERS, BITS)
    return {
        "format": "infoq-deploy/allocation/1",
        "target": "fpga-int",
        "alpha": 1.0,
        "budgets": [
            {"text": "3KB", "metric": "size", "limit": 3 * 1024.0, "used": size, "unit": "KB"},
            {"text": "3x", "metric": "size", "limit": fp32_size_bytes(LAYERS) / 3, "used": size, "unit": "x"},
        ],
        "layers": [{"name": l.name, "w_bits": w, "a_bits": a} for l, (w, a) in zip(LAYERS, BITS)],
        "cost": {"size_bytes": size, "size_mb": size / BYTES_PER_MB,
                 "compression": fp32_size_bytes(LAYERS) / size, "avg_weight_bits": model_cost("wbits", LAYERS, BITS),
                 "bitops": bitops},
        "objective": 0.42,
        "solver": {"name": "CBC", "status": "Optimal", "seconds": 0.01},
        "sensitivity": {"method": "infoq"},
    }


def _write(run_dir, **over):
    args = dict(
        inputs={"model": "zoo:toy", "target": "fpga-int", "budgets": ["3KB", "3x"], "seed": 0},
        model_info={"spec": "zoo:toy", "fingerprint": "abc123", "input_shape": [3, 32, 32]},
        allocation=_allocation(),
        sensitivity=_table(),
        accuracies={"float": 0.8123, "ptq": 0.6512, "finetuned": 0.7788, "exported": 0.7791},
        verify={"fmt": "qonnx", "n_inputs": 500, "agreement": 0.9987, "max_abs_diff": 0.00042,
                "mean_abs_diff": 1.5e-05, "tolerance": 0.001, "accuracy": 0.7791, "reference_accuracy": 0.7788,
                "bits_in_graph": {l.name: list(b) for l, b in zip(LAYERS, BITS)}, "mismatches": [], "ok": True},
        timings={"import": 0.51, "profile": 12.346, "allocate": 0.03},
        finetune={"epochs_run": 2, "best_epoch": 2, "best_accuracy": 0.7788, "history": [
            {"epoch": 1, "lr": 1e-4, "loss": 0.9, "train_acc": 0.7, "eval_acc": 0.75, "seconds": 3.0},
            {"epoch": 2, "lr": 5e-5, "loss": 0.8, "train_acc": 0.72, "eval_acc": 0.7788, "seconds": 3.0}]},
        notes=["encoder: pixels (random projection of the input)", "labels: true labels"],
    )
    args.update(over)
    write_report(run_dir, **args)
    return args


def test_report_writes_everything(tmp_path):
    args = _write(tmp_path)
    for name in ("report.json", "report.md", *PLOTS):
        assert (tmp_path / name).is_file(), name
    assert not list(tmp_path.glob("*.part")), "temporary files left behind"
    for name in PLOTS:
        with Image.open(tmp_path / name) as img:
            img.verify()
        with Image.open(tmp_path / name) as img:
            assert img.format == "PNG" and img.size[0] > 200 and img.size[1] > 150

    md = (tmp_path / "report.md").read_text()
    table = _table()
    for layer, (w, a) in zip(LAYERS, BITS):
        row = next(line for line in md.splitlines() if line.startswith("|") and f"| {layer.name} |" in line)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1:7] == [layer.name, layer.kind, str(layer.params), str(layer.macs), str(w), str(a)]
        assert cells[7] == f"{table.weights[layer.name][w]:.4g}"
        assert cells[8] == f"{table.activations[layer.name][a]:.4g}"
    for v in args["accuracies"].values():
        assert f"{100 * v:.2f}%" in md
    assert f"{100 * (0.7788 - 0.8123):+.2f} pt" in md
    assert "99.87%" in md and "0.00042" in md
    assert "3/3 layers carry the allocated" in md
    assert "12.35" in md  # profile timing
    for budget in args["allocation"]["budgets"]:
        assert f"{100 * budget['used'] / budget['limit']:.1f}%" in md
    assert "8/8-bit" in md  # bitops has no budget: shown against the 8-bit reference
    for note in args["notes"]:
        assert note in md

    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["format"] == "infoq-deploy/report/1"
    # what a rerun must match to reproduce the run: the thread count changes GPTQ's weights
    assert doc["environment"]["torch_threads"] == torch.get_num_threads() and doc["environment"]["torch"]
    assert f"on {torch.get_num_threads()} thread(s)" in md
    assert [r["name"] for r in doc["layers"]] == [l.name for l in LAYERS]
    assert doc["accuracies"] == args["accuracies"]
    assert doc["plots"] == list(PLOTS)
    bitops_panel = next(p for p in doc["cost_panels"] if p["metric"] == "bitops")
    expected = model_cost("bitops", LAYERS, BITS) / sum(l.macs * 64 for l in LAYERS)
    assert bitops_panel["bars"][0]["fraction"] == pytest.approx(expected)


def test_missing_accuracy_and_sensitivity(tmp_path):
    # a stale plot from an earlier run must not survive next to a report that lacks it
    (tmp_path / "sensitivity_heatmap.png").write_bytes(b"old")
    bad_bits = {"conv1": [8, 8], "block.dw": [4, 4], "fc": [8, 8]}
    _write(tmp_path, accuracies={"float": 0.8123, "ptq": None, "finetuned": 0.7788},
           sensitivity=None, finetune=None,
           verify={"agreement": 0.95, "bits_in_graph": bad_bits, "mismatches": ["layer block.dw weight: 4 != 3"]},
           model_info={"spec": "zoo:toy", "layers": [l.to_json() for l in LAYERS]})
    md = (tmp_path / "report.md").read_text()
    assert "not measured" in md and "81.23%" in md
    assert "2/3 layers carry the allocated" in md and "block.dw: graph 4, 4, allocated 3, 4" in md
    assert "layer block.dw weight: 4 != 3" in md
    assert not (tmp_path / "sensitivity_heatmap.png").exists()
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["accuracies"]["ptq"] is None and doc["accuracies"]["exported"] is None
    assert doc["plots_skipped"].keys() == {"sensitivity_heatmap.png"}
    # params/MACs still come from the model's layer table
    assert doc["layers"][2]["macs"] == LAYERS[2].macs
    with Image.open(tmp_path / "accuracy.png") as img:
        assert img.format == "PNG"


def test_bad_accuracy_rejected(tmp_path):
    with pytest.raises(ValueError, match="fraction"):
        _write(tmp_path, accuracies={"float": 81.2})
    assert not (tmp_path / "report.json").exists()


def test_plots_stay_legible_for_many_layers(tmp_path):
    names = [f"features.{i}.block.conv" for i in range(64)]
    w = [2 + i % 7 for i in range(64)]
    a = [32 if i == 0 else 8 for i in range(64)]
    plot_bits_per_layer(tmp_path / "bits.png", names, w, a)
    scores = {n: {b: 1.0 / b**2 for b in range(2, 9)} for n in names}
    plot_sensitivity_heatmap(tmp_path / "heat.png", names, scores, scores, list(zip(w, a)))
    with Image.open(tmp_path / "bits.png") as img:
        # ~0.22 in per layer: 64 bars do not crowd into a default-width figure
        assert img.size[0] >= 64 * 0.2 * 110
    with Image.open(tmp_path / "heat.png") as img:
        assert img.size[1] >= 64 * 0.18 * 110
