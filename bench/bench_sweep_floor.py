"""The InfoQ sweep against its forward-pass floor, and one process against torchrun (issue #13).

1. **Floor ratio.** Profiles the model with InfoQ (fresh cache), then, in the same process on the
   same calibration batches, times the *floor*: the plain float forward pass of every perturbed
   run's suffix (from the perturbed layer's cut to the logits; the same fx interpreter, no
   quantizer, no projection, no estimator; prefixes not counted). Reports profile / floor, and the
   estimators' share (projections + MI) as the profiler's own clock has it.
2. **Peak memory**: the profiler's process peak resident memory (``meta.timings.peak_rss_mb``).
3. **One process against torchrun** (``--torchrun N``): ``infoq-deploy profile`` on the same model,
   data and target, once as one process and once under ``torchrun --nproc-per-node N`` (gloo),
   each from an empty cache; wall time of each and whether the two tables are identical.

The target is fpga-int with the weight and activation bits of ``--weight-bits``/``--act-bits``
(the issue's measurement: weights at 2 and 4 bits, activations at 8).

Reproduce: .venv/bin/python bench/bench_sweep_floor.py --model zoo:cifar10-resnet20 --calib-size 500
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_info  # bench/machine.py

from infoq_deploy import __version__
from infoq_deploy.core.atomic import write_json
from infoq_deploy.core.quantizer import FLOAT_BITS
from infoq_deploy.core.targets import load_target
from infoq_deploy.data.load import load_data
from infoq_deploy.importing.deployable import deployable
from infoq_deploy.importing.sources import load_model
from infoq_deploy.profile.infoq import BASE_BITS, BATCH_SIZE, profile_infoq
from infoq_deploy.profile.suffix_runner import SuffixRunner, split_batches

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def restricted(target, w_bits, a_bits):
    return dataclasses.replace(target, weights=dataclasses.replace(target.weights, bits=tuple(w_bits)),
                               activations=dataclasses.replace(target.activations, bits=tuple(a_bits)))


def target_file(w_bits, a_bits, path: Path) -> Path:
    """fpga-int with other bit lists, as a .toml the command line takes."""
    text = (ROOT / "targets" / "fpga-int.toml").read_text()
    lines, section = [], None
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip()
        if line.startswith("name ="):
            line = 'name = "fpga-int-bench"'
        if line.startswith("bits =") and section in ("[weights]", "[activations]"):
            line = f"bits = {list(w_bits if section == '[weights]' else a_bits)}"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return path


def runs_per_layer(w_bits, a_bits) -> int:
    return len([b for b in w_bits if b < BASE_BITS]) + len([b for b in a_bits if b < BASE_BITS])


def floor_seconds(model, calib, runs: int) -> tuple[float, int]:
    """Plain float suffix passes, ``runs`` per layer, each from the layer's cut to the logits."""
    deployed = deployable(model)
    runner = SuffixRunner(deployed.graph, deployed.layers, None, None, FLOAT_BITS)
    batches = split_batches(calib.x.float(), BATCH_SIZE)
    frontier, at = runner.start(batches), 0
    total, n = 0.0, 0
    for layer in deployed.layers:
        cut = runner.cut(layer.name)
        if cut < at:
            frontier, at = runner.start(batches), 0
        frontier, at = runner.advance(frontier, at, cut), cut  # the prefix: not part of the floor
        for _ in range(runs):
            t0 = time.perf_counter()
            runner.run(frontier, cut, {"logits": runner.result_node})
            total += time.perf_counter() - t0
            n += 1
    return total, n


def cli_profile(launcher: list[str], args, target: Path, out: Path, cache: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["INFOQ_DEPLOY_CACHE"] = str(cache)
    cmd = [*launcher, "profile", args.model, "--target", str(target), "--data", str(args.data),
           "--calib-size", str(args.calib_size), "--seed", str(args.seed), "-o", str(out)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return wall


def scores_only(path: Path) -> dict:
    doc = json.loads(path.read_text())
    return {"weights": doc["weights"], "activations": doc["activations"], "observers": doc["meta"]["observers"],
            "baseline": doc["meta"]["baseline"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="zoo:cifar10-resnet20")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10" / "train.tar.gz"))
    ap.add_argument("--calib-size", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weight-bits", default="2,4,8")
    ap.add_argument("--act-bits", default="8")
    ap.add_argument("--torchrun", type=int, default=2, help="processes for the torchrun comparison (0: skip it)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    w_bits = sorted(int(b) for b in args.weight_bits.split(","))
    a_bits = sorted(int(b) for b in args.act_bits.split(","))
    slug = args.model.split(":")[-1]
    out = Path(args.out) if args.out else HERE / "results" / f"sweep_floor_{slug}.json"

    model = load_model(args.model, data_root=ROOT.parent / "shared" / "data")
    calib = load_data(args.data, model.preprocess, limit=args.calib_size, seed=args.seed)
    target = restricted(load_target("fpga-int"), w_bits, a_bits)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        table = profile_infoq(model, target, calib, seed=args.seed, cache_dir=Path(tmp) / "cache", progress=False)
        profile_wall = time.perf_counter() - t0
    timings = table.meta["timings"]
    runs = runs_per_layer(w_bits, a_bits)
    floor, n_runs = floor_seconds(model, calib, runs)
    result = {
        "benchmark": "InfoQ sweep against its forward-pass floor (plain float suffix passes of every perturbed run)",
        "command": f"{Path(sys.executable).name} bench/bench_sweep_floor.py --model {args.model} --data {args.data} "
                   f"--calib-size {args.calib_size} --weight-bits {args.weight_bits} --act-bits {args.act_bits} "
                   f"--torchrun {args.torchrun}",
        "tool_version": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "threads": int(__import__("torch").get_num_threads()),
        "model": args.model,
        "calibration": {"source": calib.source, "n": len(calib.x), "sha256": calib.sha256},
        "weight_bits": w_bits,
        "act_bits": a_bits,
        "layers": len(table.layers),
        "perturbed_runs": n_runs,
        "profile_seconds": round(profile_wall, 3),
        "profiler_clock": timings,
        "floor_seconds": round(floor, 3),
        "profile_over_floor": round(profile_wall / floor, 3),
        "estimator_share_of_profile": round(timings["estimator_s"] / profile_wall, 4),
        "peak_rss_mb": timings.get("peak_rss_mb"),
        "note": "floor: the same fx interpreter (profile/suffix_runner.py) with no quantizer, from each perturbed "
                "layer's cut to the logits, once per perturbed run; the profile includes everything it does "
                "(float pass, calibration, embedding, baseline, prefixes, the quantized suffixes, projections, MI)",
    }
    print(f"profile {profile_wall:.1f} s, floor {floor:.1f} s ({n_runs} suffix passes): "
          f"{profile_wall / floor:.2f}x; estimators {timings['estimator_s']:.1f} s; peak {timings.get('peak_rss_mb')} MB",
          flush=True)

    if args.torchrun > 1:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            tfile = target_file(w_bits, a_bits, tmp / "fpga-int-bench.toml")
            one_wall = cli_profile([sys.executable, "-m", "infoq_deploy"], args, tfile, tmp / "one.json", tmp / "c1")
            dist_wall = cli_profile([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                        "--nproc-per-node", str(args.torchrun), "-m", "infoq_deploy"],
                                       args, tfile, tmp / "two.json", tmp / "c2")
            identical = scores_only(tmp / "one.json") == scores_only(tmp / "two.json")
            per_rank = json.loads((tmp / "two.json").read_text())["meta"]["distributed"]["layers_per_rank"]
        result["torchrun"] = {
            "processes": args.torchrun,
            "one_process_seconds": round(one_wall, 3),
            "torchrun_seconds": round(dist_wall, 3),
            "speedup": round(one_wall / dist_wall, 3),
            "tables_identical": identical,
            "layers_per_rank": per_rank,
            "note": f"`infoq-deploy profile` as one process (torch's default threads: {os.cpu_count()} cores) and "
                    f"under `torchrun --standalone --nproc-per-node {args.torchrun}` (gloo; torchrun sets one "
                    "thread per process), wall time from launch to exit, empty caches",
        }
        print(f"one process {one_wall:.1f} s, torchrun x{args.torchrun} {dist_wall:.1f} s, identical {identical}",
              flush=True)
    write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
