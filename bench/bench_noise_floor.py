"""InfoQ's noise floor: how its |ΔSMI| answers changes too small to cost accuracy.

For each layer the InfoQ profile (weights only, activations at 8 bits, fpga-int's widths 2..8,
``--noise-floor``) records Eq. 4's ratio before the 1/b factor, sum over the layer's observers of
|ΔSMI| over their baseline SMI, at every width below 8, and at 16 bits (the null run: the layer
differs from the 8-bit baseline by about the baseline's own rounding). If ΔSMI measured the
perturbation, the ratio would fall about fourfold per added bit (the rounding error's power
does) and the 16-bit one would be about nil. Reported per width: the median over layers of the
ratio, and the median over layers of ratio / null ratio; both for each number of projections
(the estimators' noise averages over projections, a floor made of it falls like 1/sqrt(P)).
With ``--shrink`` the profiles take one standard error (over projections) off each |ΔSMI|
(InfoQ's ``--shrink``): what it leaves of the null run, and of each width, is the measure of it.

Reproduce: .venv/bin/python bench/bench_noise_floor.py   (CIFAR-10 ResNet-20, 512 images; minutes)
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import machine_info  # bench/machine.py

from infoq_deploy import __version__, stages
from infoq_deploy.core.atomic import write_json
from infoq_deploy.profile.infoq import NULL_BITS

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="zoo:cifar10-resnet20")
    ap.add_argument("--data", default="../shared/data/cifar10/train.tar.gz")
    ap.add_argument("--calib-size", type=int, default=512)
    ap.add_argument("--n-proj", default="32,128", help="numbers of projections, one profile each")
    ap.add_argument("--shrink", action="store_true", help="profile with InfoQ's --shrink")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    slug = args.model.split(":")[-1].replace("/", "_")
    out = Path(args.out or HERE / "results" / f"noise_floor{'_shrink' if args.shrink else ''}_{slug}.json")
    model = stages.load_model(args.model, data_root=str(HERE.parent.parent / "shared" / "data"))
    plan = stages.plan_datasets(model.preprocess, data=args.data, eval_data=None, calib_size=args.calib_size,
                                eval_size=None, seed=args.seed)
    base = stages.load_target("fpga-int")
    target = dataclasses.replace(base, activations=dataclasses.replace(base.activations, bits=(8,)))
    widths = sorted(b for b in target.weights.bits if b < 8)
    runs = []
    for n_proj in (int(p) for p in args.n_proj.split(",")):
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as cache:
            table = stages.profile(model, target, plan.calibration, "infoq", seed=args.seed, n_proj=n_proj,
                                   noise_floor=True, cache_dir=cache, progress=False,
                                   **({"shrink": True} if args.shrink else {}))
        null = {name: v["w"] for name, v in table.meta["noise_floor"].items()}
        # Eq. 4 before 1/b: the score times the width
        ratio = {name: {b: table.weights[name][b] * b for b in widths} for name in table.weights}
        names = [n for n in ratio if null[n] > 0]
        runs.append({
            "n_proj": n_proj, "seconds": round(time.perf_counter() - t0, 1),
            "ratio": {n: {str(b): v for b, v in d.items()} for n, d in ratio.items()},
            "null_ratio": null,
            "median_ratio": {**{str(b): statistics.median(ratio[n][b] for n in ratio) for b in widths},
                             str(NULL_BITS): statistics.median(null.values())},
            # how many times the null run's |ΔSMI| each width's is, per layer, median over layers
            "median_over_null": {str(b): statistics.median(ratio[n][b] / null[n] for n in names) for b in widths},
            "layers_with_zero_null": [n for n in ratio if null[n] == 0],
            # how many layers each width leaves at exactly 0 (all of it taken for noise by --shrink)
            "layers_at_zero": {**{str(b): sum(1 for n in ratio if ratio[n][b] == 0) for b in widths},
                               str(NULL_BITS): sum(1 for n in ratio if null[n] == 0)},
        })
        print(f"n_proj {n_proj}: median ratio {runs[-1]['median_ratio']}", flush=True)
        print(f"  over null: {runs[-1]['median_over_null']}", flush=True)
    write_json(out, {
        "benchmark": "InfoQ's |ΔSMI| ratio (Eq. 4 before 1/b) at each weight width and at the 16-bit null run, "
                     "weights only, activations 8 bits, fpga-int quantizer",
        "command": f"{Path(sys.executable).name} bench/bench_noise_floor.py --model {args.model} --data {args.data} "
                   f"--calib-size {args.calib_size} --n-proj {args.n_proj}"
                   + (" --shrink" if args.shrink else "") + f" --seed {args.seed} --threads {args.threads}",
        "tool_version": __version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
        "torch_threads": torch.get_num_threads(), "model": args.model,
        "calibration": {"source": plan.calibration.source, "n": len(plan.calibration),
                        "sha256": plan.calibration.sha256},
        "null_bits": NULL_BITS, "widths": widths, "shrink": args.shrink, "runs": runs,
        "wall_seconds": round(time.perf_counter() - started, 1),
    })
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
