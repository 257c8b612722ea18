"""Sensitivity criteria side by side: InfoQ, HAWQ-v2, CLADO, the weight-error proxy and uniform.

For one model and a list of average weight-bit budgets (weights only: activations at 8
bits; fpga-int's quantizer, first and last layers pinned at w8/a8), every method profiles
the same calibration set, the allocator spends the same budget, and every allocation is
quantized by the same post-training quantizer (the default, GPTQ + bias correction, on the
same calibration set, through `stages.quantize`, the pipeline's code) and evaluated on the
same evaluation set. Uniform precision puts every free layer at each whole bit-width.
Writes JSON (accuracy and size per method and budget, search cost per method: wall time,
passes, calibration samples) and a plot of top-1 against average weight bits.

With ``--bitops B1,B2,...`` weights and activations are allocated together: activations take
the same widths as the weights, and each budget is the BitOps (MACs x weight bits x activation
bits, first and last layer at w8/a8) of every free layer at wB/aB; uniform wB/aB beside them
where B is one of the widths. The plot is then top-1 against GBitOps.

Reproduce: .venv/bin/python bench/bench_criteria.py   (the bundled default model; a few minutes)
           .venv/bin/python bench/bench_criteria.py --model zoo:cifar10-resnet20 \\
               --data ../shared/data/cifar10/train.tar.gz --eval-data ../shared/data/cifar10/test
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from figures import save  # noqa: E402  (bench/figures.py; the script folder is on sys.path)
from machine import machine_info  # noqa: E402

from infoq_deploy import __version__, stages  # noqa: E402
from infoq_deploy.allocate.ilp import recost  # noqa: E402
from infoq_deploy.core.atomic import write_json  # noqa: E402
from infoq_deploy.core.evaluate import accuracy  # noqa: E402
from infoq_deploy.quantize.file import ModelSource  # noqa: E402
from infoq_deploy.quantize.ptq import PtqConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
METHODS = ("infoq", "infoq-floor", "infoq-shrink", "infoq-pairwise", "hawq", "clado", "mse")
VARIANTS = {"infoq-pairwise": {"pairwise": True}, "infoq-floor": {"noise_floor": True}, "infoq-shrink": {"shrink": True}}


def weights_only(target, widths=None):
    """Activations at 8 bits; weights at ``widths`` (default the target's own)."""
    weights = target.weights if widths is None else dataclasses.replace(target.weights, bits=tuple(widths))
    return dataclasses.replace(target, weights=weights,
                               activations=dataclasses.replace(target.activations, bits=(8,)))


def uniform_doc(doc: dict, layers, target, w: int, a: int = 8) -> dict:
    doc = copy.deepcopy(doc)
    n = len(layers)
    order = {layer.name: layer.order for layer in layers}
    for entry in doc["layers"]:
        choices = target.layer_choices(order[entry["name"]], n)
        entry["w_bits"], entry["a_bits"] = choices[0] if len(choices) == 1 else (w, a)
    return recost(doc, layers, target)


def avg_w(doc: dict, layers, names=None) -> float:
    """Average weight bits over ``names`` (default every layer), weighted by parameters."""
    params = {layer.name: layer.weight_params for layer in layers if names is None or layer.name in names}
    return sum(params[e["name"]] * e["w_bits"] for e in doc["layers"] if e["name"] in params) / sum(params.values())


def free_layers(layers, target) -> set[str]:
    n = len(layers)
    return {layer.name for layer in layers if len(target.layer_choices(layer.order, n)) > 1}


def model_average(b: float, layers, target) -> float:
    """The model-wide average weight bits at which the free layers average ``b`` bits.

    On EfficientNet-Lite0 the pinned classifier holds 28% of the weights (1,280,000 of
    4,608,992): at 8 bits it alone puts the model-wide average at 2.2 bits, so budgets from 3
    bits per weight are budgets over the free layers."""
    n = len(layers)
    total = sum(layer.weight_params for layer in layers)
    pinned = sum(layer.weight_params * target.layer_choices(layer.order, n)[0][0]
                 for layer in layers if len(target.layer_choices(layer.order, n)) == 1)
    free = sum(layer.weight_params for layer in layers if len(target.layer_choices(layer.order, n)) > 1)
    return (pinned + b * free) / total


def passes(method: str, meta: dict) -> str:
    if method == "clado":
        return f"{meta['forward_passes']} forward passes over the calibration set"
    if method == "hawq":
        h = meta["hutchinson"]
        return (f"{h['iterations']} Hessian-vector products (a forward, a backward and a double backward of one "
                f"batch of {meta['settings']['batch_size']}), total trace within {h['total_relative_stderr']:.1%}")
    if method in ("infoq", "infoq-shrink"):
        return "one perturbed suffix pass per (layer, weight bits), see the profile's meta"
    if method == "infoq-floor":
        return "InfoQ's passes plus one null pass per layer (weights at 16 bits), see the profile's meta"
    if method == "infoq-pairwise":
        return (f"InfoQ's passes plus {meta['pairwise']['pairs']} pairs at widths {meta['pairwise']['widths']} "
                "(one suffix pass per pair and width combination, and each layer alone at the later one's observers)")
    return "no forward pass for weights (the proxy reads the weights)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=stages.DEFAULT_MODEL)
    ap.add_argument("--data", default=stages.DEFAULT_DATA)
    ap.add_argument("--eval-data", default=stages.DEFAULT_EVAL_DATA)
    ap.add_argument("--calib-size", type=int, default=512)
    ap.add_argument("--eval-size", type=int, default=None)
    ap.add_argument("--budgets", default="2.5,3,3.5,4,5", help="average weight bits")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--widths", default=None,
                    help="weight widths every method chooses from (default fpga-int's 2..8; CLADO's paper uses 2,4,8)")
    ap.add_argument("--bitops", default=None,
                    help="weights and activations under BitOps budgets equal to uniform wB/aB for each B listed "
                         "(replaces --budgets)")
    ap.add_argument("--budget-over", choices=("all", "free"), default="all",
                    help="average weight bits over every layer (default), or over the layers the target "
                         "does not pin (the pinned ones stay at their pin)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-proj", type=int, default=None, help="InfoQ's projections (default: the profiler's own)")
    ap.add_argument("--label-term", choices=("labels", "logits"), default="labels",
                    help="InfoQ's label term: against the labels, or clusters of the float logits (ImageNet's "
                         "sample1000 has one image per class)")
    ap.add_argument("--no-uniform", action="store_true",
                    help="leave uniform precision out (another run on the same data has it)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/criteria_<model>.json)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    slug = args.model.split(":")[-1].replace("/", "_")
    out = Path(args.out or HERE / "results" / f"criteria_{slug}.json")
    started = time.perf_counter()
    model = stages.load_model(args.model, data_root=str(HERE.parent.parent / "shared" / "data"))
    plan = stages.plan_datasets(model.preprocess, data=args.data, eval_data=args.eval_data,
                                calib_size=args.calib_size, eval_size=args.eval_size, seed=args.seed)
    no_eval = dataclasses.replace(plan, evaluation=None)
    ev = plan.evaluation
    layers = stages.deployable(model).layers
    widths = None if args.widths is None else sorted({int(w) for w in args.widths.split(",")})
    target = weights_only(stages.load_target("fpga-int"), widths)
    if args.bitops:  # activations at the weights' widths, allocated with them
        target = dataclasses.replace(target, activations=dataclasses.replace(target.activations,
                                                                              bits=tuple(target.weights.bits)))
    float_acc = accuracy(stages.deployable(model).graph, ev.x, ev.y)
    budgets = [float(b) for b in (args.bitops or args.budgets).split(",")]

    free = free_layers(layers, target)

    def budget_text(b: float) -> str:
        if not args.bitops:
            if args.budget_over == "free":  # rounded up so that uniform wB meets budget B exactly
                return f"{math.ceil(model_average(b, layers, target) * 1e9) / 1e9:.9f}bit"
            return f"{b}bit"
        n = len(layers)
        ops = sum(layer.macs * w * a for layer in layers
                  for w, a in [(8, 8) if len(target.layer_choices(layer.order, n)) == 1 else (b, b)])
        return f"{ops / 1e9:.9f}GBOPs"

    ptq = PtqConfig(chosen=False)
    rows, costs = [], {}

    def evaluate(method, budget, doc):
        t0 = time.perf_counter()
        qm = stages.quantize(model, target, doc, no_eval, ModelSource.of(args.model), ptq=ptq)
        acc = accuracy(qm.qmodel, ev.x, ev.y)
        rows.append({"method": method, "budget": budget, "avg_weight_bits": round(avg_w(qm.allocation, layers), 4),
                     "avg_free_weight_bits": round(avg_w(qm.allocation, layers, free), 4),
                     "size_bytes": qm.allocation["cost"]["size_bytes"], "top1": acc,
                     "bitops": qm.allocation["cost"].get("bitops"),
                     "w_bits": [e["w_bits"] for e in qm.allocation["layers"]],
                     "a_bits": [e["a_bits"] for e in qm.allocation["layers"]], "ptq": qm.ptq,
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(f"{method} {budget}: {acc:.4f} at {rows[-1]['avg_weight_bits']} bits", flush=True)
        write_json(out, result(complete=False))  # a long run cut short still leaves what it measured

    def result(complete: bool) -> dict:
        return {
            "benchmark": "sensitivity criteria side by side, "
                         + ("weights and activations under BitOps budgets (uniform wB/aB)" if args.bitops
                            else "weights only (activations 8 bits)")
                         + ", fpga-int quantizer, the default post-training quantizer (GPTQ + bias correction), "
                           "no fine-tuning",
            "complete": complete,
            "command": f"{Path(sys.executable).name} bench/bench_criteria.py --model {args.model} --data {args.data} "
                       f"--eval-data {args.eval_data} --calib-size {args.calib_size}"
                       + (f" --eval-size {args.eval_size}" if args.eval_size else "")
                       + (f" --bitops {args.bitops}" if args.bitops else f" --budgets {args.budgets}")
                       + (f" --budget-over {args.budget_over}" if args.budget_over != "all" else "")
                       + f" --methods {args.methods}"
                       + (f" --widths {args.widths}" if args.widths else "") + f" --seed {args.seed}"
                       + (f" --n-proj {args.n_proj}" if args.n_proj else "")
                       + (f" --label-term {args.label_term}" if args.label_term != "labels" else "")
                       + (" --no-uniform" if args.no_uniform else "")
                       + (f" --threads {args.threads}" if args.threads else ""),
            "weight_widths": sorted(target.weights.bits),
            "budget_over": "free layers (pinned ones at their pin)" if args.budget_over == "free" else "every layer",
            "torch_threads": torch.get_num_threads(),
            "tool_version": __version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
            "model": args.model,
            "calibration": {"source": plan.calibration.source, "n": len(plan.calibration),
                            "sha256": plan.calibration.sha256},
            "evaluation": {"source": ev.source, "n": len(ev)},
            "accuracy_float": float_acc, "search_cost": costs, "results": rows,
            "wall_seconds": round(time.perf_counter() - started, 1),
        }

    infoq_settings = {"n_proj": args.n_proj} if args.n_proj else {}
    if args.label_term != "labels":
        infoq_settings["label_term"] = args.label_term
    doc = None
    cache = tempfile.TemporaryDirectory()  # every profile measured, none read from a cache
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        if method in VARIANTS:
            table = stages.profile(model, target, plan.calibration, "infoq", seed=args.seed, cache_dir=cache.name,
                                   progress=False, **VARIANTS[method], **infoq_settings)
        else:
            table = stages.profile(model, target, plan.calibration, method, seed=args.seed, cache_dir=cache.name,
                                   progress=False, **(infoq_settings if method == "infoq" else {}))
        seconds = round(time.perf_counter() - t0, 1)
        costs[method] = {"seconds": seconds, "passes": passes(method, table.meta), "calibration_samples": len(plan.calibration),
                         "pairs": len(table.pairs),
                         # the process's peak resident memory when the profile ended (InfoQ's clock records it)
                         "peak_rss_mb": table.meta.get("timings", {}).get("peak_rss_mb")}
        if table.meta.get("method") == "infoq":  # what the scores rest on: the observers and their baseline SMI
            costs[method]["infoq"] = {
                "timings": table.meta["timings"], "labels": table.meta["labels"],
                "logit_clusters": table.meta["settings"].get("logit_clusters"),
                "observers": table.meta["observers"], "correlation_fallback": table.meta["correlation_fallback"],
                "baseline_smi": table.meta["baseline"]["smi"]}
        print(f"profiled {method}: {costs[method]}", flush=True)
        for b in budgets:
            t1 = time.perf_counter()
            doc = stages.allocation_document(table, target, [budget_text(b)])
            costs[method].setdefault("allocate_seconds", []).append(round(time.perf_counter() - t1, 2))
            evaluate(method, b, doc)
        # the reference early: a long run cut short keeps it
        if not args.no_uniform and not any(r["method"] == "uniform" for r in rows):
            for w in sorted(w for w in target.weights.bits if int(min(budgets)) <= w <= max(budgets)):
                evaluate("uniform", float(w), uniform_doc(doc, layers, target, w, w if args.bitops else 8))
    cache.cleanup()

    done = result(complete=True)
    write_json(out, done)
    plot(done, out.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


def plot(doc: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    bitops = "--bitops" in doc["command"]
    over_free = doc.get("budget_over", "").startswith("free")
    x = "avg_free_weight_bits" if over_free else "avg_weight_bits"
    for method in dict.fromkeys(r["method"] for r in doc["results"]):
        pts = sorted((r["bitops"] / 1e9 if bitops else r[x], 100 * r["top1"])
                     for r in doc["results"] if r["method"] == method)
        ax.plot(*zip(*pts), marker="o", linestyle="--" if method == "uniform" else "-", label=method)
    ax.axhline(100 * doc["accuracy_float"], color="k", lw=0.8, label="float")
    ax.set_xlabel("GBitOps per image (weights and activations)" if bitops else
                  f"average weight bits{' of the free layers' if over_free else ''} (activations 8)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{doc['model']}: post-training, GPTQ + bias correction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
