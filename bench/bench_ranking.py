"""How well each criterion ranks layers, before any allocation: Spearman against measured drops.

The ground truth: every layer whose weight bits the allocation may choose, quantized alone
to the lowest width (and the next one), everything else as the profiler's baseline (weights
and activations at 8 bits, activation ranges calibrated on the calibration set), round to
nearest with the target's quantizer (fpga-int: per-channel power-of-two scales), which is the
quantizer every criterion here simulates; the top-1 drop (and the cross-entropy increase) on
the evaluation images. Each criterion's score of that layer at that width is then ranked
against it (Spearman's rho, with scipy's p-value).

Criteria: InfoQ across numbers of projections, calibration sizes (nested subsets of one
class-stratified draw) and projection seeds; HAWQ-v2, CLADO's single-layer loss changes
(its pair terms do not enter a single-layer ranking) and the weight-error proxy, each on
the largest calibration set. The profiles are weights only (activations at 8 bits), with
only the two widths measured, which is what a score at those widths depends on (InfoQ's
observers are chosen from the lowest width's runs, as in a full profile).

Reproduce: .venv/bin/python bench/bench_ranking.py   (CIFAR-10 ResNet-20, about 30 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from figures import save  # noqa: E402  (bench/figures.py; the script folder is on sys.path)
from machine import machine_info  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from infoq_deploy import __version__, stages  # noqa: E402
from infoq_deploy.core.atomic import write_json  # noqa: E402
from infoq_deploy.data.load import split  # noqa: E402
from infoq_deploy.profile import clado, hawq, infoq  # noqa: E402
from infoq_deploy.profile.mse import calibrate_act_ranges  # noqa: E402
from infoq_deploy.profile.suffix_runner import Perturb, SuffixRunner, split_batches  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"


def restricted(target, w_bits):
    """The target with only ``w_bits`` (and 8) for weights and 8-bit activations."""
    return dataclasses.replace(
        target,
        weights=dataclasses.replace(target.weights, bits=tuple(sorted({*w_bits, 8}))),
        activations=dataclasses.replace(target.activations, bits=(8,)),
    )


def measured_drops(deployed, layers, free, spec, calib_x, ev, bits_list, batch=500):
    """Top-1 drop (points) and loss increase of each free layer alone at each width."""
    ranges = calibrate_act_ranges(deployed.graph, layers, calib_x, spec)
    runner = SuffixRunner(deployed.graph, layers, spec, ranges, 8)
    f0 = runner.start(split_batches(ev.x, batch))

    def score(logits):
        return float((logits.argmax(1) == ev.y).double().mean() * 100), float(F.cross_entropy(logits, ev.y))

    base_acc, base_loss = score(runner.run(f0, 0, {"l": runner.result_node})["l"])
    out = {b: {} for b in bits_list}
    frontier, at = f0, 0
    for name in free:
        cut = runner.cut(name)
        if cut < at:  # layers come in graph order; start over should one not
            frontier, at = f0, 0
        frontier, at = runner.advance(frontier, at, cut), cut  # the prefix is computed once, not per layer
        for b in bits_list:
            acc, loss = score(runner.run(frontier, cut, {"l": runner.result_node}, Perturb(name, "w", b))["l"])
            out[b][name] = {"top1_drop": base_acc - acc, "loss_increase": loss - base_loss}
        print(f"measured {name}: top-1 drop " + ", ".join(f"{out[b][name]['top1_drop']:.2f} at {b} bits" for b in bits_list),
              flush=True)
    return {"baseline_top1": base_acc, "baseline_loss": base_loss, "layers": out}


def rho(scores: dict[str, float], truth: dict[str, dict], key: str) -> dict:
    names = sorted(truth)
    r = spearmanr([scores[n] for n in names], [truth[n][key] for n in names])
    return {"rho": round(float(r.statistic), 4), "p": float(r.pvalue)}


def across_widths(scores: dict[str, dict[str, float]], truth: dict[int, dict], bits_list: list[int]) -> dict:
    """What an allocator needs beyond a ranking at one width: scores that compare across widths.
    Spearman over every (layer, width) pair, and per width the median over layers of the score
    and of the measured top-1 drop, each over its value at the lowest width: if the score's
    ratios fall short of the drop's, the allocator sees the lowest width as cheaper than it is."""
    names = sorted(truth[bits_list[0]])
    pooled = spearmanr([scores[str(b)][n] for b in bits_list for n in names],
                       [truth[b][n]["top1_drop"] for b in bits_list for n in names])
    low = bits_list[0]

    def median_ratio(values: dict[int, dict[str, float]], b: int) -> float:
        ratios = sorted(values[b][n] / values[low][n] for n in names if values[low][n] > 0)
        return round(float(ratios[len(ratios) // 2]), 4) if ratios else float("nan")

    drops = {b: {n: truth[b][n]["top1_drop"] for n in names} for b in bits_list}
    sc = {b: scores[str(b)] for b in bits_list}
    # proportionality, which a ranking does not test: the slope of log score on log drop over the
    # (layer, width) pairs whose drop is at least 0.5 points (below that the drop is mostly noise);
    # 1 means the score is a fixed multiple of the drop, below 1 that large drops are under-scored
    pairs = [(math.log(drops[b][n]), math.log(sc[b][n])) for b in bits_list for n in names
             if drops[b][n] >= 0.5 and sc[b][n] > 0]
    slope = float(np.polyfit(*zip(*pairs), 1)[0]) if len(pairs) >= 3 else float("nan")
    ratios = {str(b): {"score": median_ratio(sc, b), "top1_drop": median_ratio(drops, b)} for b in bits_list[1:]}
    for r in ratios.values():  # above 1: the score rates this width too dear next to the lowest one
        r["score_over_drop"] = round(r["score"] / r["top1_drop"], 2) if r["top1_drop"] > 0 else float("nan")
    return {"spearman_all_widths": {"rho": round(float(pooled.statistic), 4), "p": float(pooled.pvalue)},
            "median_top1_drop": {str(b): round(float(np.median(list(drops[b].values()))), 2) for b in bits_list},
            "median_over_lowest": ratios,
            "log_log_slope": {"slope": round(slope, 3), "pairs": len(pairs)}}


def reanalyse(path: Path) -> None:
    """Recompute each run's ``across_widths`` from the scores and drops a result file holds."""
    doc = json.loads(path.read_text())
    bits_list = [int(b) for b in doc["measured"]["layers"]]
    truth = {int(b): v for b, v in doc["measured"]["layers"].items()}
    for row in doc["runs"]:
        row["across_widths"] = across_widths(row["scores"], truth, bits_list)
    write_json(path, doc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="zoo:cifar10-resnet20")
    ap.add_argument("--weights", default=None, help="weights file for --model (as infoq-deploy's --weights)")
    ap.add_argument("--input-shape", default=None, help="C,H,W for a file.py:factory model")
    ap.add_argument("--data", default=str(DATA / "cifar10" / "train.tar.gz"))
    ap.add_argument("--eval-data", default=str(DATA / "cifar10" / "test"))
    ap.add_argument("--eval-size", type=int, default=4000, help="evaluation images (class-stratified)")
    ap.add_argument("--calib-sizes", default="500,1000,2000")
    ap.add_argument("--n-proj", default="32,128,512")
    ap.add_argument("--proj-seeds", default="0,1,2", help="seeds beyond the first run at the middle calibration size")
    ap.add_argument("--bits", default="2", help="weight widths measured (the first is the lowest the target allows)")
    ap.add_argument("--rivals", default="hawq,clado,mse")
    ap.add_argument("--variants", default="plain",
                    help="InfoQ variants, each profiled at every grid point: plain, shrink (--shrink)")
    ap.add_argument("--seed", type=int, default=0, help="calibration draw")
    ap.add_argument("--out", default=None)
    ap.add_argument("--reanalyse", default=None, metavar="FILE",
                    help="recompute the across-width analysis of a result file from its stored scores and drops")
    args = ap.parse_args()
    if args.reanalyse:
        reanalyse(Path(args.reanalyse))
        return 0
    # zoo:NAME -> NAME; path/to/file.py:factory -> file
    slug = Path(args.model.split(".py:")[0]).stem if ".py:" in args.model else args.model.split(":")[-1].replace("/", "_")
    out = Path(args.out or HERE / "results" / f"ranking_{slug}.json")
    started = time.perf_counter()

    shape = tuple(int(v) for v in args.input_shape.split(",")) if args.input_shape else None
    model = stages.load_model(args.model, weights=args.weights, input_shape=shape, data_root=str(DATA))
    sizes = sorted(int(s) for s in args.calib_sizes.split(","))
    plan = stages.plan_datasets(model.preprocess, data=args.data, eval_data=args.eval_data,
                                calib_size=sizes[-1], eval_size=args.eval_size, seed=args.seed)
    calib = {sizes[-1]: plan.calibration}
    for n in sizes[:-1]:  # nested: each smaller set is a class-stratified part of the largest
        calib[n] = split(plan.calibration, n, seed=args.seed)[0]
    ev = plan.evaluation
    bits_list = [int(b) for b in args.bits.split(",")]
    target = restricted(stages.load_target("fpga-int"), bits_list)
    deployed = stages.deployable(model)
    layers = sorted(deployed.layers, key=lambda l: l.order)
    n = len(layers)
    free = [l.name for l in layers if len(target.layer_choices(l.order, n)) > 1]
    spec = target.quant_spec()

    t0 = time.perf_counter()
    truth = measured_drops(deployed, layers, free, spec, calib[sizes[-1]].x, ev, bits_list)
    truth["seconds"] = round(time.perf_counter() - t0, 1)

    runs = []

    def record(method, settings, table, seconds):
        row = {"method": method, **settings, "seconds": round(seconds, 1), "spearman": {}}
        for b in bits_list:
            scores = {name: table.weights[name][b] for name in free}
            row["spearman"][str(b)] = {key: rho(scores, truth["layers"][b], key) for key in ("top1_drop", "loss_increase")}
            row.setdefault("scores", {})[str(b)] = scores
        if len(bits_list) > 1:
            row["across_widths"] = across_widths(row["scores"], truth["layers"], bits_list)
        runs.append(row)
        low = row["spearman"][str(bits_list[0])]["top1_drop"]["rho"]
        print(f"{method} {settings}: rho {low} ({row['seconds']} s)", flush=True)

    n_projs = [int(p) for p in args.n_proj.split(",")]
    mid = sizes[len(sizes) // 2]
    grid = [(p, c, 0) for p in n_projs for c in sizes]
    grid += [(p, mid, s) for p in n_projs for s in (int(s) for s in args.proj_seeds.split(",")) if s != 0]
    variants = [v for v in args.variants.split(",") if v]
    with tempfile.TemporaryDirectory() as cache:  # every profile measured, none read from a cache
        for (p, c, s), variant in ((g, v) for g in grid for v in variants):
            t0 = time.perf_counter()
            table = infoq.profile_infoq(model, target, calib[c], seed=s, n_proj=p, cache_dir=cache, progress=False,
                                        shrink=variant == "shrink")
            record("infoq", {"n_proj": p, "calib_size": c, "proj_seed": s,
                             **({"variant": variant} if variant != "plain" else {})}, table, time.perf_counter() - t0)
            runs[-1]["timings"] = table.meta["timings"]
            runs[-1]["observers"] = [o["name"] for o in table.meta["observers"]]
    big = calib[sizes[-1]]
    for method in [m for m in args.rivals.split(",") if m]:
        t0 = time.perf_counter()
        if method == "hawq":
            table = hawq.profile(model, target, big, seed=args.seed)
        elif method == "clado":
            table = clado.profile(model, target, big, seed=args.seed, pairs=False)
        else:
            table = stages.profile(model, target, big, method, seed=args.seed, progress=False)
        record(method, {"calib_size": sizes[-1]}, table, time.perf_counter() - t0)

    result = {
        "benchmark": "layer ranking: each criterion's score at a width against the measured single-layer drop "
                     "(round to nearest, the target's quantizer, all else at the 8-bit baseline), Spearman",
        "command": f"{Path(sys.executable).name} bench/bench_ranking.py --model {args.model} "
                   + (f"--weights {args.weights} " if args.weights else "")
                   + (f"--input-shape {args.input_shape} " if args.input_shape else "")
                   + f"--calib-sizes {args.calib_sizes} "
                   f"--n-proj {args.n_proj} --proj-seeds {args.proj_seeds} --bits {args.bits} --rivals {args.rivals} "
                   + (f"--variants {args.variants} " if args.variants != "plain" else "") +
                   f"--seed {args.seed}" + (f" --eval-size {args.eval_size}" if args.eval_size else ""),
        "tool_version": __version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
        "model": args.model, "target": "fpga-int (weights only, activations 8 bits)",
        "calibration": {"source": plan.calibration.source, "sizes": sizes,
                        "sha256": {str(k): v.sha256 for k, v in calib.items()}},
        "evaluation": {"source": ev.source, "n": len(ev)},
        "free_layers": free,
        "measured": truth,
        "runs": runs,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out, result)
    plot(result, out.with_suffix(".png"), bits_list[0])
    print(f"wrote {out}")
    return 0


def plot(doc: dict, path: Path, b: int) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    infoq_runs = [r for r in doc["runs"] if r["method"] == "infoq" and r["proj_seed"] == 0]
    for v, p in sorted({(r.get("variant", ""), r["n_proj"]) for r in infoq_runs}):
        pts = sorted((r["calib_size"], r["spearman"][str(b)]["top1_drop"]["rho"]) for r in infoq_runs
                     if r["n_proj"] == p and r.get("variant", "") == v)
        ax.plot(*zip(*pts), marker="o", label=f"InfoQ{' --' + v if v else ''}, {p} projections")
    for r in doc["runs"]:
        if r["method"] == "infoq" and r["proj_seed"] != 0:
            ax.scatter([r["calib_size"]], [r["spearman"][str(b)]["top1_drop"]["rho"]], marker="x", color="grey")
    for r in doc["runs"]:
        if r["method"] != "infoq":
            ax.axhline(r["spearman"][str(b)]["top1_drop"]["rho"], ls="--", lw=1, label=r["method"],
                       color={"hawq": "tab:red", "clado": "tab:green", "mse": "tab:purple"}.get(r["method"], "k"))
    ax.set_xscale("log")
    ax.set_xlabel("calibration images (x: other projection seeds)")
    ax.set_ylabel(f"Spearman rho vs measured top-1 drop ({b}-bit weights)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1]
    measured = doc["measured"]["layers"][b] if b in doc["measured"]["layers"] else doc["measured"]["layers"][str(b)]
    names = doc["free_layers"]
    ax.bar(range(len(names)), [measured[n]["top1_drop"] for n in names], color="tab:gray")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylabel(f"measured top-1 drop, one layer at {b} bits (points)")
    fig.suptitle(f"{doc['model']}: how each criterion ranks layers")
    fig.tight_layout()
    save(fig, path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
