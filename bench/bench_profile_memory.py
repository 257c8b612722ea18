"""InfoQ's peak memory on EfficientNet-Lite0 (issue #13: 1,000 ImageNet images within 8 GB).

One InfoQ profile in a fresh process (so the peak is the profile's), weights only at the widths
given (activations at 8 bits, fpga-int's quantizer), ``--label-term logits`` (sample1000 holds
one image per class), on N seeded images of ``sample1000``; reports the process's peak resident
memory (``ru_maxrss``), the profile's wall time and its forward/estimator split. The peak is set
by the largest single run (the correlation runs observe every later layer), not by how many
widths are swept.

Reproduce: .venv/bin/python bench/bench_profile_memory.py --calib-size 256
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import machine_info  # bench/machine.py

from infoq_deploy import __version__, stages
from infoq_deploy.core.atomic import write_json

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="zoo:efficientnet-lite0")
    ap.add_argument("--data", default=str(DATA / "imagenet" / "sample1000"))
    ap.add_argument("--calib-size", type=int, default=256)
    ap.add_argument("--widths", default="2,8")
    ap.add_argument("--n-proj", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    slug = args.model.split(":")[-1].replace("/", "_")
    out = Path(args.out or HERE / "results" / f"profile_memory_{slug}_{args.calib_size}.json")
    model = stages.load_model(args.model, data_root=str(DATA))
    plan = stages.plan_datasets(model.preprocess, data=args.data, eval_data=str(DATA / "imagenet" / "val1300"),
                                calib_size=args.calib_size, eval_size=1, seed=args.seed)
    base = stages.load_target("fpga-int")
    target = dataclasses.replace(base, weights=dataclasses.replace(base.weights, bits=tuple(
        int(w) for w in args.widths.split(","))), activations=dataclasses.replace(base.activations, bits=(8,)))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        table = stages.profile(model, target, plan.calibration, "infoq", seed=args.seed, n_proj=args.n_proj,
                               label_term="logits", cache_dir=cache, progress=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_json(out, {
        "benchmark": "InfoQ profile peak resident memory, weights only, --label-term logits",
        "command": f"{Path(sys.executable).name} bench/bench_profile_memory.py --model {args.model} "
                   f"--calib-size {args.calib_size} --widths {args.widths} --n-proj {args.n_proj} "
                   f"--threads {args.threads} --seed {args.seed}",
        "tool_version": __version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
        "calibration": {"source": plan.calibration.source, "n": len(plan.calibration),
                        "sha256": plan.calibration.sha256},
        "peak_rss_mb_before_profile": round(rss_before, 1), "peak_rss_mb": round(peak, 1),
        "profile_seconds": round(seconds, 1), "timings": table.meta["timings"],
    })
    print(f"peak {peak:.0f} MB (before the profile {rss_before:.0f} MB), {seconds:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
