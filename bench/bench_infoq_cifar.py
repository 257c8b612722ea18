"""Issue-3 evidence on CIFAR-10 ResNets: observers, post-training accuracy of allocations, cost.

For one zoo model (default zoo:cifar10-resnet20) this script
1. profiles InfoQ on N calibration images drawn (seeded, class-balanced) from the CIFAR-10
   training archive, weights only (activations stay at 8 bits), with the fpga-int
   quantizer (per-channel power-of-two weights, first and last layer pinned at w8/a8);
2. builds the weight-error proxy table (`--method mse`) with the same quantizer;
3. allocates at average weight bit-widths 2.5, 3, 3.5, 4 and 5 from: InfoQ, InfoQ without
   the 1/b factor (the paper's ablation: Eq. 4 times b, computed from the same ΔSMI),
   the proxy, and uniform precision (every free layer at floor(budget) bits);
4. measures post-training accuracy (no fine-tuning, reference quantizer, activation
   ranges calibrated on the calibration images) on the 10,000 test images;
5. writes bench/results/infoq_<model>.json and .png, plus the profiler's own plots.

Reproduce: .venv/bin/python bench/bench_infoq_cifar.py --model zoo:cifar10-resnet20
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from machine import machine_info  # noqa: E402  (bench/machine.py; the script folder is on sys.path)

from infoq_deploy import __version__  # noqa: E402
from infoq_deploy.allocate.budgets import parse_budget  # noqa: E402
from infoq_deploy.allocate.ilp import allocate  # noqa: E402
from infoq_deploy.core.atomic import atomic_path, write_json  # noqa: E402
from infoq_deploy.core.evaluate import accuracy  # noqa: E402
from infoq_deploy.core.targets import load_target  # noqa: E402
from infoq_deploy.data.load import load_data  # noqa: E402
from infoq_deploy.importing.sources import load_model  # noqa: E402
from infoq_deploy.profile.infoq import profile_infoq  # noqa: E402
from infoq_deploy.profile.mse import calibrate_act_ranges  # noqa: E402
from infoq_deploy.quantize.simulated import apply_allocation  # noqa: E402
from infoq_deploy.stages import deployable, profile_mse  # noqa: E402

BUDGETS = (2.5, 3.0, 3.5, 4.0, 5.0)
HERE = Path(__file__).resolve().parent


def weights_only(target):
    """The target with activations fixed at 8 bits: the paper's weight-only MPQ setting."""
    return dataclasses.replace(target, activations=dataclasses.replace(target.activations, bits=(8,)))


def uniform_bits(layers, target, bits: int) -> dict[str, tuple[int, int]]:
    n = len(layers)
    out = {}
    for layer in layers:
        choices = target.layer_choices(layer.order, n)
        out[layer.name] = choices[0] if len(choices) == 1 else (bits, 8)
    return out


def avg_weight_bits(layers, bits) -> float:
    return sum(layer.weight_params * bits[layer.name][0] for layer in layers) / sum(layer.weight_params for layer in layers)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="zoo:cifar10-resnet20")
    ap.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--calib-size", type=int, default=1000)
    ap.add_argument("--eval-limit", type=int, default=None, help="test images (default: all 10,000)")
    ap.add_argument("--n-proj", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--weight-bits", default=None,
                    help="restrict the candidate weight bits, e.g. 2,8: with --observers-only this runs just the "
                         "correlation analysis (its lowest-bit runs) for deep models")
    ap.add_argument("--observers-only", action="store_true", help="profile and report observers; no allocations")
    args = ap.parse_args()

    root = Path(args.data_root)
    slug = args.model.split(":")[-1]
    out_dir = Path(args.out)
    model = load_model(args.model, data_root=root)
    target = weights_only(load_target("fpga-int"))
    if args.weight_bits:
        bits = tuple(sorted(int(b) for b in args.weight_bits.split(",")))
        target = dataclasses.replace(target, weights=dataclasses.replace(target.weights, bits=bits))
    t0 = time.perf_counter()
    calib = load_data(root / "cifar10" / "train.tar.gz", model.preprocess, limit=args.calib_size, seed=args.seed)
    test = None if args.observers_only else load_data(root / "cifar10" / "test", model.preprocess, limit=args.eval_limit, seed=args.seed)
    load_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    infoq = profile_infoq(
        model, target, calib, seed=args.seed, n_proj=args.n_proj, plots_dir=out_dir / f"infoq_{slug}_plots"
    )
    infoq_wall = time.perf_counter() - t0
    if args.observers_only:
        result = {
            "benchmark": "InfoQ observer selection (correlation analysis) only",
            "command": f"{Path(sys.executable).name} bench/bench_infoq_cifar.py --model {args.model} --calib-size {args.calib_size} "
                       f"--n-proj {args.n_proj} --seed {args.seed} --weight-bits {args.weight_bits} --observers-only",
            "tool_version": __version__,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine_info(),
            "model": args.model,
            "calibration": {"source": calib.source, "n": len(calib.x), "sha256": calib.sha256},
            "weight_bits": list(target.weights.bits),
            "baseline_accuracy_on_calibration": infoq.meta.get("baseline", {}).get("accuracy"),
            "observers": infoq.meta.get("observers"),
            "correlation_fallback": infoq.meta.get("correlation_fallback"),
            "correlation_note": infoq.meta.get("correlation_note"),
            "correlation_table": infoq.meta.get("correlation", {}).get("table"),
            "accuracy_drop_per_layer": infoq.meta.get("correlation", {}).get("acc_drop"),
            "profiling": {"wall_seconds": infoq_wall, "timings": infoq.meta.get("timings", {})},
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / f"infoq_{slug}_observers.json", result)
        print(json.dumps({k: result[k] for k in ("observers", "profiling")}, indent=1, default=str))
        return 0
    mse = profile_mse(model, target, calib, seed=args.seed)
    no_inv = {name: {b: s * b for b, s in d.items()} for name, d in infoq.weights.items()}

    deployed = deployable(model)
    layers = deployed.layers
    spec = target.quant_spec()
    ranges = calibrate_act_ranges(deployed.graph, layers, calib.x, spec)
    float_acc = accuracy(deployed.graph, test.x, test.y)
    zero_a = {layer.name: {8: 0.0} for layer in layers}

    def evaluate(bits):
        return accuracy(apply_allocation(deployed.graph, layers, bits, spec, ranges), test.x, test.y)

    int8_acc = evaluate(uniform_bits(layers, target, 8))
    rows = []
    for avg in BUDGETS:
        budget = parse_budget(f"{avg}bit")
        row = {"budget_avg_weight_bits": avg}
        for method, scores in (("infoq", infoq.weights), ("infoq_no_inverse_b", no_inv), ("mse", mse.weights)):
            alloc = allocate(layers, scores, zero_a, target, [budget], alpha=0.0)
            bits = {d["name"]: (d["w_bits"], d["a_bits"]) for d in alloc.layers}
            row[method] = {
                "accuracy": evaluate(bits),
                "avg_weight_bits": avg_weight_bits(layers, bits),
                "size_bytes": alloc.cost.get("size_bytes"),
                "w_bits": [bits[layer.name][0] for layer in layers],
            }
        u = math.floor(avg)
        ubits = uniform_bits(layers, target, u)
        row["uniform"] = {
            "accuracy": evaluate(ubits),
            "bits": u,
            "avg_weight_bits": avg_weight_bits(layers, ubits),
            "note": f"every free layer at {u} bits (first and last pinned at 8); the largest uniform setting within the budget",
        }
        rows.append(row)
        print(
            f"{avg} bit: infoq {row['infoq']['accuracy']:.4f}  no-1/b {row['infoq_no_inverse_b']['accuracy']:.4f}  "
            f"mse {row['mse']['accuracy']:.4f}  uniform-{u} {row['uniform']['accuracy']:.4f}",
            flush=True,
        )

    timings = infoq.meta.get("timings", {})
    result = {
        "benchmark": "InfoQ vs weight-error proxy vs uniform, post-training accuracy (no fine-tuning), weights only, 8-bit activations",
        "command": f"{Path(sys.executable).name} bench/bench_infoq_cifar.py --model {args.model} --calib-size {args.calib_size} --n-proj {args.n_proj} --seed {args.seed}",
        "tool_version": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "model": args.model,
        "target": "fpga-int quantizer (per-channel po2 weights, first/last pinned w8/a8), activations fixed at 8 bits",
        "calibration": {"source": calib.source, "n": len(calib.x), "sha256": calib.sha256},
        "evaluation": {"source": test.source, "n": len(test.x)},
        "accuracy_float": float_acc,
        "accuracy_uniform_int8": int8_acc,
        "observers": infoq.meta.get("observers"),
        "correlation_fallback": infoq.meta.get("correlation_fallback"),
        "correlation_note": infoq.meta.get("correlation_note"),
        "profiling": {
            "wall_seconds": infoq_wall,
            "timings": timings,
            "bit_widths": list(target.weights.bits),
            "data_load_seconds": load_s,
            "encoder": infoq.meta.get("settings", {}).get("encoder"),
            "labels": infoq.meta.get("labels"),
        },
        "results": rows,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / f"infoq_{slug}.json", result)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label, style in (("infoq", "InfoQ", "o-"), ("infoq_no_inverse_b", "InfoQ without 1/b", "s--"),
                              ("mse", "weight-error proxy", "^-"), ("uniform", "uniform (floor)", "x:")):
        ax.plot(BUDGETS, [100 * r[key]["accuracy"] for r in rows], style, label=label)
    ax.axhline(100 * float_acc, color="grey", lw=0.8, label=f"float {100 * float_acc:.1f}%")
    ax.set_xlabel("average weight bits (budget)")
    ax.set_ylabel(f"top-1 on {len(test.x)} CIFAR-10 test images (%)")
    ax.set_title(f"{args.model}: post-training accuracy, weights only (a8)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out_dir / f"infoq_{slug}.png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    print(json.dumps({k: result[k] for k in ("accuracy_float", "observers", "profiling")}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
