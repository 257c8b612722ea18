"""FPGA costs: the allocator's LUT / BRAM / cycle table against FINN's estimate of the graph FINN
builds from the exported file, and what a LUT or cycles budget buys in accuracy.

For each model the profile runs once (the bundled Fashion-MNIST CNN with InfoQ; the pretrained
CIFAR-10 ResNet-20 with the quick `mse` criterion), then for each budget set the allocator
chooses bits on fpga-int (its costs: allocate/fpga_resources.py, FINN's estimators on one-layer
graphs), the model is quantized (post-training, 8-bit calibration as the pipeline does) and
exported as QONNX, and FINN converts the exported file to its hardware layers
(backends/finn_exec.py), specializes and folds them for the same part and cycles per frame,
and estimates every node (``res_estimation``, ``get_exp_cycles``). Reported per allocation:
the allocator's predicted LUTs, BRAMs, DSPs and cycles per frame; FINN's for the same layers'
nodes (predicted / FINN per metric); FINN's for the nodes that are no layer's (padding, pools,
thresholds, stream duplication, residual adds) and for the whole graph; post-training top-1 on
the evaluation set; the time the allocator's table took against FINN's conversion.

These are FINN's analytical estimates (FINN-R), not synthesis results: Vivado is not
available here, so no post-place-and-route number backs them.

Reproduce: .venv/bin/python bench/bench_fpga_resources.py [--models fashion,resnet20]
           (writes bench/results/fpga_resources.json; about 12 minutes on 2 cores, most of it
           FINN's conversion of ResNet-20, once per allocation)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import onnx
from machine import machine_info  # bench/machine.py (the script's folder is on sys.path)

from infoq_deploy import __version__, stages
from infoq_deploy.allocate import fpga_resources
from infoq_deploy.allocate.budgets import folded_for, parse_budget
from infoq_deploy.allocate.costs import layer_cost
from infoq_deploy.backends import finn_exec
from infoq_deploy.core.atomic import write_json
from infoq_deploy.importing.deployable import deployable

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
CIFAR = {"data": str(DATA / "cifar10" / "train.tar.gz"), "calib_size": 500,
         "eval_data": str(DATA / "cifar10" / "test"), "data_root": str(DATA)}
MODELS = {
    "fashion": ("zoo:fashion-cnn", "infoq", {"data": stages.DEFAULT_DATA, "eval_data": stages.DEFAULT_EVAL_DATA}),
    "resnet20": ("zoo:cifar10-resnet20", "mse", CIFAR),
}
METRICS = ("luts", "brams", "dsps", "cycles")


def budget_sets(layers, target) -> list[list[str]]:
    """8 bits everywhere, 4 bits per weight, a LUT budget at 60% of the 8-bit layers' LUTs, and
    4 bits per weight at five times the default throughput (a fifth of its cycles per frame)."""
    n = len(layers)
    luts8 = sum(layer_cost("luts", l, 8, 8, target, last=l.order == n - 1) for l in layers)
    fast = target.fpga.cycles_per_frame // 5
    return [["8bit"], ["4bit"], [f"{0.6 * luts8 / 1000:.1f}kLUT"], ["4bit", f"{fast / 1000:g}kcycles"]]


def predicted(layers, bits, target) -> dict:
    n = len(layers)
    each = {l.name: fpga_resources.layer_resources(l, *bits[l.name], last=l.order == n - 1, fpga=target.fpga)
            for l in layers}
    return {"luts": sum(r.luts for r in each.values()), "brams": sum(r.brams for r in each.values()),
            "dsps": sum(r.dsps for r in each.values()), "cycles": max(r.cycles for r in each.values()),
            "layers": {k: {"luts": r.luts, "brams": r.brams, "dsps": r.dsps, "cycles": r.cycles,
                           "folding": [list(f) for f in r.folding]} for k, r in each.items()}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default=str(HERE / "results" / "fpga_resources.json"))
    args = ap.parse_args()
    target = stages.load_target("fpga-int")
    results = {}
    for key in args.models.split(","):
        spec, method, opts = MODELS[key]
        model = stages.load_model(spec, data_root=opts.get("data_root"))
        plan = stages.plan_datasets(model.preprocess, data=opts["data"], eval_data=opts["eval_data"],
                                    calib_size=opts.get("calib_size"))
        t0 = time.perf_counter()
        table = stages.profile(model, target, plan.calibration, method=method)
        profile_s = time.perf_counter() - t0
        layers = sorted(deployable(model).layers, key=lambda l: l.order)
        runs = []
        for texts in budget_sets(layers, target):
            t0 = time.perf_counter()
            allocation = stages.allocation_document(table, target, texts)
            allocate_s = time.perf_counter() - t0
            qm = stages.quantize(model, target, allocation, plan, stages.ModelSource.of(spec))
            bits = {l["name"]: (l["w_bits"], l["a_bits"]) for l in qm.allocation["layers"]}
            folded = folded_for([parse_budget(t) for t in texts], target)
            ours = predicted(layers, bits, folded)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.onnx"
                stages.export_quantized(qm, path)
                t0 = time.perf_counter()
                rows = finn_exec.resource_estimates(onnx.load(str(path)), folded.fpga)
                finn_s = time.perf_counter() - t0
            finn_layers, rest = finn_exec.per_layer(rows, layers)
            finn = {m: (max if m == "cycles" else sum)(finn_layers[l.name][m] for l in layers) for m in METRICS}
            whole = {m: (max(finn[m], rest[m]) if m == "cycles" else finn[m] + rest[m]) for m in METRICS}
            mismatched = [l.name for l in layers
                          if any(ours["layers"][l.name][m] != finn_layers[l.name][m] for m in METRICS)]
            run = {
                "budgets": texts, "fold_cycles_per_frame": folded.fpga.cycles_per_frame,
                "bits": {k: list(v) for k, v in bits.items()},
                "avg_weight_bits": qm.allocation["cost"]["avg_weight_bits"],
                "ptq_top1": qm.accuracies.get("ptq"), "float_top1": qm.accuracies.get("float"),
                "predicted": {m: ours[m] for m in METRICS}, "finn_same_layers": finn,
                "predicted_over_finn": {m: (ours[m] / finn[m] if finn[m] else None) for m in METRICS},
                "layers_not_identical": mismatched,
                "finn_rest_of_graph": rest, "finn_whole_graph": whole,
                "layer_share_of_whole_luts": finn["luts"] / whole["luts"] if whole["luts"] else None,
                "per_layer": {"predicted": ours["layers"], "finn": finn_layers},
                "allocate_seconds": allocate_s, "finn_conversion_and_estimate_seconds": finn_s,
            }
            runs.append(run)
            print(key, texts, {m: (ours[m], finn[m], whole[m]) for m in METRICS}, f"top1 {run['ptq_top1']}",
                  f"finn {finn_s:.0f}s", flush=True)
        results[key] = {"model": spec, "method": method, "eval_data": opts["eval_data"],
                        "calibration": len(plan.calibration), "evaluation": len(plan.evaluation),
                        "profile_seconds": profile_s, "runs": runs}
    write_json(Path(args.out), {
        "benchmark": "fpga-int LUT/BRAM/DSP/cycle costs as the allocator predicts them (FINN's estimators on "
                     "one-layer graphs) against FINN's estimate of the hardware graph it builds from the exported "
                     "QONNX file, per allocation, with post-training top-1",
        "command": f"python bench/bench_fpga_resources.py --models {args.models}"
                   + (f" --out {args.out}" if args.out != ap.get_default("out") else ""),
        "tool_version": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "part": target.fpga.part, "default_cycles_per_frame": target.fpga.cycles_per_frame,
        "finn_flow": "finn-plus 1.6.1: step_qonnx_to_finn, step_resnet_tidy, step_resnet_streamline, "
                     "step_convert_to_hw, SpecializeLayers(part), SetFolding(cycles, two_pass_relaxation=False), "
                     "res_estimation, get_exp_cycles",
        "estimates_not_synthesis": "FINN-R analytical estimates; no Vivado run backs them",
        "results": results,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
