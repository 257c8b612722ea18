"""Do layer sensitivities add up? The assumption of every additive criterion, measured; and InfoQ --pairwise.

InfoQ, HAWQ and the weight-error proxy give the ILP one score per (layer, width) and the ILP
adds them. On CIFAR-10 ResNet-20 (fpga-int's quantizer, weights only, activations at 8 bits),
this script measures:

1. Accuracy: for a sample of pairs of free layers (every pair of neighbours in the network's
   order, and far-apart pairs drawn with the seed), the top-1 drop and the cross-entropy increase
   when both layers' weights are quantized together (round to nearest, all else at the 8-bit
   baseline), against the sum of each alone, on the evaluation images.
2. ΔSMI: InfoQ's normalised ΔSMI of every pair together against the sum of each alone, at the
   later layer's observers, read from the `--pairwise` profile (`meta.pairwise.additivity`).
3. Whether the pair terms help: InfoQ with and without them (the same profile, so the same
   single-layer scores), and with the sub-additive terms kept as well ("pair terms unclipped",
   which --pairwise does not ship), allocated at the tightest average weight bits, quantized by
   the default post-training quantizer (GPTQ + bias correction), evaluated on the evaluation images.

Reproduce: .venv/bin/python bench/bench_additivity.py   (about 30 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from figures import save  # noqa: E402  (bench/figures.py; the script folder is on sys.path)
from machine import machine_info  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from infoq_deploy import __version__, stages  # noqa: E402
from infoq_deploy.core.atomic import write_json  # noqa: E402
from infoq_deploy.core.evaluate import accuracy  # noqa: E402
from infoq_deploy.data.load import load_data  # noqa: E402
from infoq_deploy.profile.mse import calibrate_act_ranges  # noqa: E402
from infoq_deploy.profile.suffix_runner import Perturb, SuffixRunner, split_batches  # noqa: E402
from infoq_deploy.quantize.file import ModelSource  # noqa: E402
from infoq_deploy.quantize.ptq import PtqConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"


def weights_only(target):
    return dataclasses.replace(target, activations=dataclasses.replace(target.activations, bits=(8,)))


def sample_pairs(free: list[str], n_far: int, seed: int) -> list[tuple[str, str, str]]:
    """Every neighbouring pair, and ``n_far`` pairs at least half the network apart."""
    near = [(a, b, "neighbours") for a, b in zip(free, free[1:])]
    far = [(free[i], free[j]) for i in range(len(free)) for j in range(i + 1, len(free)) if j - i >= len(free) // 2]
    random.Random(seed).shuffle(far)
    return near + [(a, b, "far") for a, b in sorted(far[:n_far], key=lambda p: (free.index(p[0]), free.index(p[1])))]


def accuracy_additivity(deployed, layers, spec, calib_x, ev, pairs, widths, batch=500):
    ranges = calibrate_act_ranges(deployed.graph, layers, calib_x, spec)
    runner = SuffixRunner(deployed.graph, layers, spec, ranges, 8)
    f0 = runner.start(split_batches(ev.x, batch))
    frontiers = {}

    def score(perturb, first):
        cut = runner.cut(first)
        if cut not in frontiers:
            frontiers.clear()  # pairs come in order of their first layer: one frontier held at a time
            frontiers[cut] = runner.advance(f0, 0, cut)
        logits = runner.run(frontiers[cut], cut, {"l": runner.result_node}, perturb)["l"]
        return float((logits.argmax(1) == ev.y).double().mean() * 100), float(F.cross_entropy(logits, ev.y))

    base = score(None, layers[0].name)
    single, rows = {}, []
    order = {l.name: runner.cut(l.name) for l in layers}
    for a, b, kind in sorted(pairs, key=lambda p: order[p[0]]):
        for w in widths:
            for name in (a, b):
                if (name, w) not in single:
                    single[(name, w)] = score(Perturb(name, "w", w), name)
            joint = score((Perturb(a, "w", w), Perturb(b, "w", w)), a)
            drop = lambda s: (base[0] - s[0], s[1] - base[1])  # noqa: E731
            ja, jb, jj = drop(single[(a, w)]), drop(single[(b, w)]), drop(joint)
            rows.append({"layers": [a, b], "kind": kind, "w_bits": w,
                         "top1_drop": {"a": ja[0], "b": jb[0], "sum": ja[0] + jb[0], "joint": jj[0]},
                         "loss_increase": {"a": ja[1], "b": jb[1], "sum": ja[1] + jb[1], "joint": jj[1]}})
            print(f"{a} + {b} at {w} bits: top-1 drop {jj[0]:.2f} together, {ja[0] + jb[0]:.2f} summed", flush=True)
    return {"baseline_top1": base[0], "baseline_loss": base[1], "pairs": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="zoo:cifar10-resnet20")
    ap.add_argument("--data", default=str(DATA / "cifar10" / "train.tar.gz"))
    ap.add_argument("--eval-data", default=str(DATA / "cifar10" / "test"))
    ap.add_argument("--calib-size", type=int, default=500)
    ap.add_argument("--eval-size", type=int, default=2000, help="evaluation images for the pair study")
    ap.add_argument("--n-proj", type=int, default=32)
    ap.add_argument("--far-pairs", type=int, default=8)
    ap.add_argument("--budgets", default="2.5,3", help="average weight bits for plain against pairwise InfoQ")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    slug = args.model.split(":")[-1].replace("/", "_")
    out = Path(args.out or HERE / "results" / f"additivity_{slug}.json")
    started = time.perf_counter()

    model = stages.load_model(args.model, data_root=str(DATA))
    plan = stages.plan_datasets(model.preprocess, data=args.data, eval_data=args.eval_data,
                                calib_size=args.calib_size, seed=args.seed)
    ev_all = plan.evaluation
    ev = load_data(args.eval_data, model.preprocess, limit=args.eval_size, seed=args.seed)
    target = weights_only(stages.load_target("fpga-int"))
    deployed = stages.deployable(model)
    layers = sorted(deployed.layers, key=lambda l: l.order)
    n = len(layers)
    free = [l.name for l in layers if len(target.layer_choices(l.order, n)) > 1]
    widths = sorted(target.weights.bits)[:2]
    order = {l.name: l.order for l in layers}

    # 2. the pairwise profile: its ΔSMI additivity, and its pair terms for the allocation
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        table = stages.profile(model, target, plan.calibration, "infoq", seed=args.seed, n_proj=args.n_proj,
                               pairwise=True, cache_dir=cache, progress=False)
    profile_seconds = round(time.perf_counter() - t0, 1)
    print(f"pairwise profile: {len(table.pairs)} pairs in {profile_seconds} s", flush=True)

    # 1. accuracy additivity on the sampled pairs
    pairs = sample_pairs(free, args.far_pairs, args.seed)
    t0 = time.perf_counter()
    acc = accuracy_additivity(deployed, layers, target.quant_spec(), plan.calibration.x, ev, pairs, widths)
    acc["seconds"] = round(time.perf_counter() - t0, 1)
    dsmi = {(tuple(r["layers"]), r["w_bits"][0]): r for r in table.meta["pairwise"]["additivity"]
            if r["w_bits"][0] == r["w_bits"][1]}
    for row in acc["pairs"]:
        d = dsmi[(tuple(row["layers"]), row["w_bits"])]
        row["dsmi"] = {"sum": d["sum_alone"], "joint": d["joint"]}

    # 3. plain against pairwise InfoQ at the tightest sizes
    plain = dataclasses.replace(table, pairs={})
    raw = {}  # every measured pair term, the sub-additive (negative) ones too: what --pairwise does not ship
    for r in table.meta["pairwise"]["additivity"]:
        wa, wb = r["w_bits"]
        raw.setdefault(tuple(r["layers"]), {})[(wa, wb)] = (r["joint"] - r["sum_alone"]) / ((wa + wb) / 2)
    unclipped = dataclasses.replace(table, pairs=raw)
    no_eval = dataclasses.replace(plan, evaluation=None)
    allocations = []
    for budget in (float(b) for b in args.budgets.split(",")):
        for name, t in (("infoq", plain), ("infoq --pairwise", table), ("pair terms unclipped", unclipped)):
            doc = stages.allocation_document(t, target, [f"{budget}bit"])
            qm = stages.quantize(model, target, doc, no_eval, ModelSource.of(args.model), ptq=PtqConfig(chosen=False))
            top1 = accuracy(qm.qmodel, ev_all.x, ev_all.y)
            used = sum(l.weight_params * e["w_bits"] for l, e in zip(layers, sorted(
                doc["layers"], key=lambda e: order[e["name"]]))) / sum(l.weight_params for l in layers)
            allocations.append({"method": name, "budget_bits": budget, "top1": top1, "avg_weight_bits": round(used, 4),
                                "w_bits": {e["name"]: e["w_bits"] for e in doc["layers"]},
                                "solve_seconds": doc["solver"].get("seconds"), "solver": doc["solver"]["status"]})
            print(f"{name} at {budget} bits: top-1 {top1:.4f} at {used:.3f} bits", flush=True)

    summary = {}
    for kind in ("neighbours", "far"):
        for w in widths:
            rows = [r for r in acc["pairs"] if r["kind"] == kind and r["w_bits"] == w]
            if rows:
                summary[f"{kind}, {w} bits"] = {
                    "pairs": len(rows),
                    "top1_joint_over_sum": [round(r["top1_drop"]["joint"] / r["top1_drop"]["sum"], 3)
                                            if r["top1_drop"]["sum"] > 0 else None for r in rows],
                    "dsmi_joint_over_sum": [round(r["dsmi"]["joint"] / r["dsmi"]["sum"], 3) for r in rows],
                }
    all_rows = table.meta["pairwise"]["additivity"]
    ratio = [r["joint"] / r["sum_alone"] for r in all_rows if r["sum_alone"] > 0]
    cross = [r["loss_increase"]["joint"] - r["loss_increase"]["sum"] for r in acc["pairs"]]
    cross_dsmi = [r["dsmi"]["joint"] - r["dsmi"]["sum"] for r in acc["pairs"]]
    result = {
        "benchmark": "additivity of layer sensitivities (top-1, loss and InfoQ's ΔSMI of pairs quantized together "
                     "against the sum of each alone), and InfoQ with pair terms against without",
        "command": f"{Path(sys.executable).name} bench/bench_additivity.py --model {args.model} --calib-size {args.calib_size} "
                   f"--eval-size {args.eval_size} --n-proj {args.n_proj} --far-pairs {args.far_pairs} "
                   f"--budgets {args.budgets} --seed {args.seed}",
        "tool_version": __version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
        "model": args.model, "target": "fpga-int, weights only (activations 8 bits), round to nearest",
        "calibration": {"source": plan.calibration.source, "n": len(plan.calibration)},
        "evaluation": {"pair_study": {"source": ev.source, "n": len(ev)},
                       "allocations": {"source": ev_all.source, "n": len(ev_all)}},
        "pair_widths": widths,
        "accuracy_additivity": acc,
        "summary": summary,
        "dsmi_all_pairs": {"pairs": len(table.pairs), "joint_over_sum_min": min(ratio), "joint_over_sum_max": max(ratio),
                           "joint_over_sum_median": sorted(ratio)[len(ratio) // 2]},
        "cross_term_agreement": {
            "what": "Spearman between the loss cross term (joint - sum) and the ΔSMI cross term over the sampled pairs",
            "rho": round(float(spearmanr(cross, cross_dsmi).statistic), 4),
        },
        "pairwise_profile": {"seconds": profile_seconds, "pairs": len(table.pairs),
                             "timings": table.meta["timings"], "n_proj": args.n_proj},
        "allocations": allocations,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out, result)
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


def plot(doc: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, key, label in ((axes[0], "top1_drop", "top-1 drop (points)"), (axes[1], "dsmi", "normalised ΔSMI")):
        for kind, marker in (("neighbours", "o"), ("far", "^")):
            for w, color in zip(doc["pair_widths"], ("tab:red", "tab:blue")):
                rows = [r for r in doc["accuracy_additivity"]["pairs"] if r["kind"] == kind and r["w_bits"] == w]
                ax.scatter([r[key]["sum"] for r in rows], [r[key]["joint"] for r in rows], marker=marker, color=color,
                           label=f"{kind}, {w} bits", alpha=0.8)
        lim = max([r[key][p] for r in doc["accuracy_additivity"]["pairs"] for p in ("sum", "joint")] + [1e-9])
        ax.plot([0, lim], [0, lim], "k--", lw=0.8, label="additive")
        ax.set_xlabel(f"sum of each layer alone: {label}")
        ax.set_ylabel(f"both together: {label}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{doc['model']}: do layer sensitivities add up?")
    fig.tight_layout()
    save(fig, path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
