"""Time the ILP allocator on a ResNet-50-sized problem: 54 layers x 49 (w, a) choices.

The layer table is ResNet-50's at 224x224 (53 convolutions with folded-BN biases + the
classifier), computed from the architecture; sensitivities are seeded random numbers
decreasing in bits. Target fpga-int (bits 2..8 for weights and activations, first and
last layers pinned at 8/8). Cases: a BitOps budget, a tighter one, and a joint size +
BitOps budget. Each is solved `--repeats` times; the split is model build (Python:
scores, costs, PuLP model) vs solve (PuLP writing the MPS file + the CBC process).

    .venv/bin/python bench/bench_allocator.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pulp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from infoq_deploy.allocate.budgets import parse_budget  # noqa: E402
from infoq_deploy.allocate.costs import model_cost  # noqa: E402
from infoq_deploy.allocate.ilp import allocate  # noqa: E402
from infoq_deploy.core.atomic import write_json  # noqa: E402
from infoq_deploy.core.targets import load_target  # noqa: E402
from infoq_deploy.importing.layers import Layer  # noqa: E402


def resnet50_layers() -> list[Layer]:
    layers: list[Layer] = []

    def conv(name, cin, cout, k, stride, hw_in):
        hw = hw_in // stride
        layers.append(Layer(name, "conv", cout * cin * k * k, cout, hw * hw * cout * cin * k * k,
                            (cin, hw_in, hw_in), (cout, hw, hw), len(layers)))
        return hw

    hw = conv("conv1", 3, 64, 7, 2, 224) // 2  # + 3x3/2 max-pool
    cin = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            stride = 2 if b == 0 and stage > 1 else 1
            p = f"layer{stage}.{b}"
            conv(f"{p}.conv1", cin, width, 1, 1, hw)
            hw_out = conv(f"{p}.conv2", width, width, 3, stride, hw)
            conv(f"{p}.conv3", width, 4 * width, 1, 1, hw_out)
            if b == 0:
                conv(f"{p}.downsample.0", cin, 4 * width, 1, stride, hw)
            cin, hw = 4 * width, hw_out
    layers.append(Layer("fc", "linear", 1000 * 2048, 1000, 1000 * 2048, (2048,), (1000,), len(layers)))
    return layers


def sensitivities(layers, seed):
    """Per layer, scores falling by a random factor of 0.3..0.7 per extra bit."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        table = {}
        for l in layers:
            s, row = float(rng.lognormal(0, 1)), {}
            for b in range(2, 9):
                row[b] = s
                s *= float(rng.uniform(0.3, 0.7))
            table[l.name] = row
        out.append(table)
    return out


def cbc_version() -> str:
    path = pulp.PULP_CBC_CMD().path
    try:
        out = subprocess.run([path, "-quit"], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL).stdout
        return next((l.strip() for l in out.splitlines() if l.strip().startswith("Version")), "unknown")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "allocator.json"))
    args = ap.parse_args()

    target = load_target("fpga-int")
    layers = resnet50_layers()
    assert len(layers) == 54
    s_w, s_a = sensitivities(layers, seed=0)
    uniform = lambda b: [(b, b)] * len(layers)  # noqa: E731
    gbops = lambda b: f"{model_cost('bitops', layers, uniform(b)) / 1e9:.3f}GBOPs"  # noqa: E731
    mb = lambda b: f"{model_cost('size', layers, uniform(b)) / 2**20:.3f}MB"  # noqa: E731
    cases = {
        "bitops (uniform w4a4 BitOps)": [gbops(4)],
        "bitops tight (uniform w3a3 BitOps)": [gbops(3)],
        "size + bitops (uniform w3 size, w4a4 BitOps)": [mb(3), gbops(4)],
    }

    results = []
    for case, texts in cases.items():
        budgets = [parse_budget(t) for t in texts]
        totals, solves, cbc_cpu, last = [], [], [], None
        for _ in range(args.repeats):
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            last = allocate(layers, s_w, s_a, target, budgets, alpha=1.0)
            totals.append(time.perf_counter() - t0)
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cbc_cpu.append(c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime)
            solves.append(last.solve_seconds)
        builds = [t - s for t, s in zip(totals, solves)]
        r = {
            "case": case,
            "budgets": texts,
            "status": last.status,
            "objective": last.objective,
            "budgets_used": last.budgets,
            "total_seconds": {"median": statistics.median(totals), "min": min(totals), "max": max(totals)},
            "build_seconds": {"median": statistics.median(builds), "min": min(builds)},
            "solve_seconds": {"median": statistics.median(solves), "min": min(solves)},
            "cbc_cpu_seconds": {"median": statistics.median(cbc_cpu), "min": min(cbc_cpu)},
            "distinct_allocations": 1,  # asserted below: every repeat gives the same bits
        }
        results.append(r)
        print(f"{case:48s} total median {r['total_seconds']['median'] * 1e3:7.1f} ms  min {min(totals) * 1e3:7.1f} ms"
              f"  (build {r['build_seconds']['median'] * 1e3:6.1f} ms, solve {r['solve_seconds']['median'] * 1e3:6.1f} ms,"
              f" CBC CPU {r['cbc_cpu_seconds']['median'] * 1e3:6.1f} ms)"
              f"  {last.status}", flush=True)
        again = allocate(layers, s_w, s_a, target, budgets, alpha=1.0)
        assert again.layers == last.layers, "the allocator is not deterministic"

    doc = {
        "benchmark": "ILP bit allocation, 54 layers (ResNet-50 table) x 49 (w, a) choices, target fpga-int",
        "command": ".venv/bin/python bench/bench_allocator.py" + (f" --repeats {args.repeats}" if args.repeats != 10 else ""),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "repeats": args.repeats,
        "layers": len(layers),
        "choices_per_layer": len(target.choices()),
        "binaries": sum(len(target.layer_choices(i, len(layers))) for i in range(len(layers))),
        "versions": {"pulp": pulp.__version__, "cbc": cbc_version(), "python": platform.python_version()},
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "load_average_1_5_15min_at_end": [round(v, 2) for v in os.getloadavg()]},
        "note": "solve = PuLP writing the MPS file + CBC as a subprocess (its start-up included) + reading the "
                "solution; build = the rest of allocate(). cbc_cpu_seconds = CPU time of the CBC process (user+sys), "
                "which other processes sharing the cores do not inflate, unlike the wall times",
        "results": results,
    }
    write_json(args.out, doc)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
