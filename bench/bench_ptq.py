"""Post-training quantization algorithms (--ptq, --bias-correction) on CIFAR-10 ResNets.

For one zoo model (default zoo:cifar10-resnet20) and two quantizers (fpga-int: per-channel
power-of-two weights, po2 activations; and fpga-int with float scales), this script
1. profiles InfoQ on N calibration images (seeded, class-balanced, from the CIFAR-10
   training archive) under each threshold rule (minmax, mse), as the pipeline does: the
   profile simulates the rule that will be deployed;
2. allocates, with activations at 8 bits, at 3.0 / 3.5 / 4.0 average weight bits, and on
   fpga-int also under a BitOps budget equal to uniform w4a4 (activations free);
   uniform precision beside it (every free layer at 3 or 4 bits, or w4a4; first and last
   layers pinned at w8/a8 by the target);
3. quantizes each allocation with every --ptq choice (minmax, mse, gptq, each with and
   without bias correction) through `stages.quantize`, the code the pipeline runs, on the
   same calibration images, and measures top-1 on the CIFAR-10 test images;
4. measures whether GPTQ changes the per-layer sensitivity ranking the profiler sees (it
   simulates round-to-nearest): each free layer alone at 3-bit weights, the rest at 8,
   quantized with and without GPTQ; Spearman correlation of the logit-MSE rankings;
5. writes bench/results/ptq_<model>.json and .png.

Reproduce: .venv/bin/python bench/bench_ptq.py --model zoo:cifar10-resnet20
(--variants, --ptqs, --budgets and --no-bitops run a part of the grid, --tag names its file;
the command in the result file says which)
"""

from __future__ import annotations

import argparse
import json
import copy
import dataclasses
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from machine import machine_info  # noqa: E402  (bench/machine.py; the script folder is on sys.path)
from scipy.stats import spearmanr  # noqa: E402

from infoq_deploy import __version__, stages  # noqa: E402
from infoq_deploy.allocate.ilp import recost  # noqa: E402
from infoq_deploy.core.atomic import atomic_path, write_json  # noqa: E402
from infoq_deploy.core.evaluate import accuracy  # noqa: E402
from infoq_deploy.quantize.file import ModelSource  # noqa: E402
from infoq_deploy.quantize.ptq import PtqConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
BIT_BUDGETS = (3.0, 3.5, 4.0)
PTQS = [PtqConfig(a, bc) for a in ("minmax", "mse", "gptq") for bc in (False, True)]
PTQ_KEYS = {cfg.algorithm + ("+bc" if cfg.bias_correction else ""): cfg for cfg in PTQS}
VARIANT_KEYS = {"po2": "fpga-int (po2 scales)", "float": "fpga-int with float scales"}


def variants(base):
    """fpga-int as shipped (po2) and the same target with float scales."""
    float_scales = dataclasses.replace(
        base, name=base.name,
        weights=dataclasses.replace(base.weights, scale="float"),
        activations=dataclasses.replace(base.activations, scale="float"))
    return {"fpga-int (po2 scales)": base, "fpga-int with float scales": float_scales}


def weights_only(target):
    return dataclasses.replace(target, activations=dataclasses.replace(target.activations, bits=(8,)))


def uniform_doc(doc: dict, layers, target, w: int, a: int) -> dict:
    """``doc`` with every free layer at (w, a), its costs recomputed."""
    doc = copy.deepcopy(doc)
    n = len(layers)
    order = {layer.name: layer.order for layer in layers}
    for entry in doc["layers"]:
        choices = target.layer_choices(order[entry["name"]], n)
        entry["w_bits"], entry["a_bits"] = choices[0] if len(choices) == 1 else (w, a)
    return recost(doc, layers, target)


def avg_w(doc: dict, layers) -> float:
    params = {layer.name: layer.weight_params for layer in layers}
    return sum(params[e["name"]] * e["w_bits"] for e in doc["layers"]) / sum(params.values())


def logits(qmodel, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    qmodel.eval()
    with torch.no_grad():
        return torch.cat([qmodel(x[i:i + batch]) for i in range(0, len(x), batch)])


def ranking(model, target, table_doc, plan, deployed, n_eval: int) -> dict:
    """Per-layer sensitivity at 3-bit weights, round-to-nearest (what the profiler simulates) vs GPTQ."""
    layers = deployed.layers
    x = plan.evaluation.x[:n_eval]
    ref = logits(deployed.graph, x)
    n = len(layers)
    rows = []
    for layer in sorted(layers, key=lambda l: l.order):
        if len(target.layer_choices(layer.order, n)) == 1:
            continue
        doc = uniform_doc(table_doc, layers, target, 8, 8)
        for entry in doc["layers"]:
            if entry["name"] == layer.name:
                entry["w_bits"] = 3
        doc = recost(doc, layers, target)
        row = {"layer": layer.name}
        for cfg in (PtqConfig("minmax", False), PtqConfig("gptq", False)):
            qm = stages.quantize(model, target, doc, dataclasses.replace(plan, evaluation=None), ModelSource.of(model.spec),
                                 ptq=cfg)
            row[cfg.algorithm] = float(((logits(qm.qmodel, x) - ref) ** 2).mean())
        rows.append(row)
    rho = spearmanr([r["minmax"] for r in rows], [r["gptq"] for r in rows])
    top = lambda key: [r["layer"] for r in sorted(rows, key=lambda r: -r[key])[:5]]  # noqa: E731
    return {"what": "each free layer alone at 3-bit weights (the rest w8/a8), minmax thresholds; logit MSE against "
                    f"the float model on {len(x)} test images, round-to-nearest vs GPTQ",
            "layers": rows, "spearman_rho": float(rho.statistic), "spearman_p": float(rho.pvalue),
            "most_sensitive_rtn": top("minmax"), "most_sensitive_gptq": top("gptq")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="zoo:cifar10-resnet20")
    ap.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--calib-size", type=int, default=512, help="calibration images (profile and PTQ)")
    ap.add_argument("--eval-size", type=int, default=None, help="test images (default: all 10,000)")
    ap.add_argument("--rank-eval", type=int, default=1000, help="test images for the ranking measurement")
    ap.add_argument("--method", default="infoq", help="profile method of the mixed allocations (default infoq)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--variants", default="po2,float", help="po2, float or both (default both)")
    ap.add_argument("--ptqs", default=",".join(PTQ_KEYS),
                    help="the --ptq choices to run, of " + ",".join(PTQ_KEYS) + " (default all)")
    ap.add_argument("--budgets", default=",".join(map(str, BIT_BUDGETS)), help="average weight bits")
    ap.add_argument("--no-bitops", action="store_true", help="leave out the BitOps-of-w4a4 rows")
    ap.add_argument("--tag", default="", help="write ptq_<model>_<tag>.json (a part of the grid beside another)")
    ap.add_argument("--replot", metavar="JSON", help="redraw the plot of a result file and stop")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(Path(args.replot).read_text()), Path(args.replot).with_suffix(".png"))
        return 0

    for flag, value, known in (("--ptqs", args.ptqs, PTQ_KEYS), ("--variants", args.variants, VARIANT_KEYS)):
        unknown = set(value.split(",")) - set(known)
        if unknown:
            ap.error(f"unknown {flag} {', '.join(sorted(unknown))}; choose from {', '.join(known)}")
    ptqs = [PTQ_KEYS[k] for k in args.ptqs.split(",")]
    chosen_variants = {VARIANT_KEYS[k] for k in args.variants.split(",")}
    budgets = tuple(float(b) for b in args.budgets.split(","))
    root = Path(args.data_root)
    slug = args.model.split(":")[-1] + (f"_{args.tag}" if args.tag else "")
    started = time.perf_counter()
    model = stages.load_model(args.model, data_root=str(root))
    plan = stages.plan_datasets(model.preprocess, data=str(root / "cifar10" / "train.tar.gz"),
                                eval_data=str(root / "cifar10" / "test"), calib_size=args.calib_size,
                                eval_size=args.eval_size, seed=args.seed)
    ev = plan.evaluation
    no_eval = dataclasses.replace(plan, evaluation=None)
    deployed = stages.deployable(model)
    layers = deployed.layers
    float_acc = accuracy(deployed.graph, ev.x, ev.y)
    print(f"float top-1 {float_acc:.4f} on {len(ev)}", flush=True)

    results, profiles, rank = [], {}, None
    for label, base in variants(stages.load_target("fpga-int")).items():
        if label not in chosen_variants:
            continue
        po2 = base.weights.scale == "po2"
        for rule in ("minmax", "mse"):
            if not any(cfg.scale_rule == rule for cfg in ptqs):
                continue
            target = base.with_scale_rule(rule)
            # the BitOps budget lets activations vary, so fpga-int's profile covers them too
            prof_target = target if po2 else weights_only(target)
            t0 = time.perf_counter()
            table = stages.profile(model, prof_target, plan.calibration, args.method, seed=args.seed, progress=False)
            profiles[f"{label} / {rule}"] = {"seconds": round(time.perf_counter() - t0, 1),
                                             "cache_hit": bool(table.meta.get("cache_hit"))}
            print(f"profiled {label} {rule}: {profiles[f'{label} / {rule}']}", flush=True)
            w_only = weights_only(target)
            allocations = []
            for b in budgets:
                allocations.append((args.method, f"{b}bit", stages.allocation_document(table, w_only, [f"{b}bit"])))
                if b == int(b):
                    allocations.append(("uniform", f"{b}bit", uniform_doc(allocations[-1][2], layers, w_only, int(b), 8)))
            if po2 and not args.no_bitops:
                w4a4 = uniform_doc(stages.allocation_document(table, target, ["4bit"]), layers, target, 4, 4)
                limit = w4a4["cost"]["bitops"]
                text = f"{limit / 1e9:.9f}GBOPs"
                allocations.append((args.method, "BitOps of w4a4", stages.allocation_document(table, target, [text])))
                allocations.append(("uniform", "BitOps of w4a4", w4a4))
            for method, budget, doc in allocations:
                alloc_target = target if budget.startswith("BitOps") else w_only
                for cfg in ptqs:
                    if cfg.scale_rule != rule:
                        continue
                    t0 = time.perf_counter()
                    qm = stages.quantize(model, alloc_target, doc, no_eval, ModelSource.of(args.model), ptq=cfg)
                    acc = accuracy(qm.qmodel, ev.x, ev.y)
                    row = {"target": label, "budget": budget, "allocation": method, "ptq": cfg.algorithm,
                           "bias_correction": cfg.bias_correction, "top1": acc,
                           "avg_weight_bits": round(avg_w(qm.allocation, layers), 4),
                           "bitops": qm.allocation["cost"].get("bitops"),
                           "w_bits": [e["w_bits"] for e in qm.allocation["layers"]],
                           "a_bits": [e["a_bits"] for e in qm.allocation["layers"]],
                           "quantize_seconds": qm.timings, "wall_seconds": round(time.perf_counter() - t0, 2)}
                    results.append(row)
                    print(f"{label} {budget} {method} {cfg.describe()}: {acc:.4f} ({row['wall_seconds']} s)", flush=True)
            if po2 and rule == "minmax" and args.rank_eval:
                rank = ranking(model, w_only, allocations[0][2], plan, deployed, args.rank_eval)
                print(f"ranking: spearman {rank['spearman_rho']:.3f}", flush=True)

    doc = {
        "benchmark": "post-training quantization algorithms: top-1 without fine-tuning, InfoQ and uniform allocations",
        "command": f"{Path(sys.executable).name} bench/bench_ptq.py --model {args.model} --calib-size {args.calib_size}"
                   + (f" --eval-size {args.eval_size}" if args.eval_size else "")
                   + (f" --method {args.method}" if args.method != "infoq" else "") + f" --seed {args.seed}"
                   + (f" --variants {args.variants}" if args.variants != "po2,float" else "")
                   + (f" --ptqs {args.ptqs}" if args.ptqs != ",".join(PTQ_KEYS) else "")
                   + (f" --budgets {args.budgets}" if budgets != BIT_BUDGETS else "")
                   + (" --no-bitops" if args.no_bitops else "") + (f" --tag {args.tag}" if args.tag else "")
                   + (f" --rank-eval {args.rank_eval}" if args.rank_eval != 1000 else ""),
        "tool_version": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "model": args.model,
        "calibration": {"source": plan.calibration.source, "n": len(plan.calibration), "sha256": plan.calibration.sha256},
        "evaluation": {"source": ev.source, "n": len(ev)},
        "accuracy_float": float_acc,
        "profiles": profiles,
        "results": results,
        "gptq_ranking": rank,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"ptq_{slug}.json", doc)
    plot(doc, out / f"ptq_{slug}.png")
    print(f"wrote {out / f'ptq_{slug}.json'}")
    return 0


COLORS = {"minmax": "tab:blue", "mse": "tab:green", "gptq": "tab:red"}


def plot(doc: dict, path: Path) -> None:
    """One colour per algorithm, filled markers with bias correction, dashed lines for uniform."""
    targets = sorted({r["target"] for r in doc["results"]})
    fig, axes = plt.subplots(1, len(targets), figsize=(6 * len(targets), 4.2), squeeze=False)
    for ax, label in zip(axes[0], targets):
        for cfg in PTQS:
            rows = [r for r in doc["results"] if r["target"] == label and r["ptq"] == cfg.algorithm
                    and r["bias_correction"] == cfg.bias_correction and r["budget"].endswith("bit")]
            for method, line, marker in (("infoq", "-", "o"), ("mse", "-", "^"), ("uniform", "--", "s")):
                pts = sorted((r["avg_weight_bits"], 100 * r["top1"]) for r in rows if r["allocation"] == method)
                if pts:
                    color = COLORS[cfg.algorithm]
                    ax.plot(*zip(*pts), linestyle=line, marker=marker, color=color, markersize=5,
                            markerfacecolor=color if cfg.bias_correction else "white",
                            label=f"{cfg.describe()} ({method})")
        ax.axhline(100 * doc["accuracy_float"], color="k", lw=0.8, label="float")
        ax.set_title(f"{doc['model']}: {label}")
        ax.set_xlabel("average weight bits (activations 8)")
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="lower right", ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
