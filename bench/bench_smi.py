"""Time sliced MI as the InfoQ sweep calls it, fast estimators vs the straightforward trees.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/bench_smi.py   # writes bench/results/smi.json

OPENBLAS_NUM_THREADS=1: on a 2-core machine shared with other jobs, OpenBLAS's
threads made a (1000 x 64) @ (64 x 32) projection take ~20 ms instead of 0.07 ms;
the estimators themselves use no BLAS. The variable's value is recorded.

N = 1000 samples, 32 projections, k = 3, feature dims 64 and 4096 (float32, like
activations). "fast" is infoq_deploy.profile.smi as shipped; "kdtree" is the same
projections fed to the tree-only reference estimators (ksg_columns_kdtree,
ross_columns_kdtree: sklearn's approach). Fast and reference runs alternate, so a
change in machine load hits both; the ratio of medians is taken within this run.
Also timed: the estimators alone on projected (N, P) matrices (what the sweep calls
thousands of times, N = 1000 and 2000) and, for KSG, its two parts.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infoq_deploy import mi_estimators as mie  # noqa: E402
from infoq_deploy.core.atomic import write_json  # noqa: E402
from infoq_deploy.profile.smi import direction_pair, directions, project, smi_continuous, smi_labels  # noqa: E402

N, N_PROJ, K, REPEATS, N_CLASSES = 1000, 32, 3, 9, 10


def timed(fn, repeats=REPEATS):
    fn()  # warm-up: caches (directions), allocator
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def alternate(fast, ref, repeats=REPEATS):
    fast(), ref()
    tf, tr = [], []
    for _ in range(repeats):
        for fn, acc in ((fast, tf), (ref, tr)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return tf, tr


def summary(times):
    return {"median_ms": round(1e3 * statistics.median(times), 3), "min_ms": round(1e3 * min(times), 3)}


def compare(fast, ref):
    tf, tr = alternate(fast, ref)
    vf, vr = fast(), ref()
    return {
        "fast": summary(tf),
        "kdtree": summary(tr),
        "speedup_median": round(statistics.median(tr) / statistics.median(tf), 2),
        "speedup_min": round(min(tr) / min(tf), 2),
        "max_abs_diff_nats": float(np.max(np.abs(np.asarray(vf) - np.asarray(vr)))),
    }


def data(dim, n=N, seed=0):
    rng = np.random.default_rng(1000 + seed)
    u = np.maximum(rng.standard_normal((n, dim)), 0).astype(np.float32)  # ReLU-like activations
    v = (0.7 * u[:, rng.permutation(dim)] + 0.5 * rng.standard_normal((n, dim))).astype(np.float32)
    y = np.argmax(u[:, :N_CLASSES] + 0.5 * rng.standard_normal((n, N_CLASSES)), axis=1)
    return u, v, y


def bench_smi(dim):
    u, v, y = data(dim)
    tu, tv = direction_pair(dim, dim, N_PROJ, seed=0)
    tl = directions(dim, N_PROJ, seed=0)
    return {
        "dim": dim,
        "smi_continuous": compare(
            lambda: smi_continuous(u, v, N_PROJ, K, seed=0),
            lambda: float(np.mean(mie.ksg_columns_kdtree(project(u, tu), project(v, tv), K, seed=0))),
        ),
        "smi_labels": compare(
            lambda: smi_labels(u, y, N_PROJ, K, seed=0),
            lambda: float(np.mean(mie.ross_columns_kdtree(project(u, tl), y, K, seed=0))),
        ),
        "projection_only_ms": summary(timed(lambda: (project(u, tu), project(v, tv)))),
    }


def bench_projected(n):
    rng = np.random.default_rng(2000 + n)
    pu = rng.standard_normal((n, N_PROJ))
    pv = 0.6 * pu + 0.8 * rng.standard_normal((n, N_PROJ))
    y = rng.integers(0, N_CLASSES, n)
    x, z = mie._standardise_and_jitter([pu, pv], 0)
    eps = mie._ksg_kth_distance(x, z, K)
    return {
        "n": n,
        "ksg_columns": compare(lambda: mie.ksg_columns(pu, pv, K), lambda: mie.ksg_columns_kdtree(pu, pv, K)),
        "ross_columns": compare(lambda: mie.ross_columns(pu, y, K), lambda: mie.ross_columns_kdtree(pu, y, K)),
        "ksg_parts_fast": {
            "joint_knn_cKDTree_ms": summary(timed(lambda: mie._ksg_kth_distance(x, z, K))),
            "marginal_counts_searchsorted_ms": summary(
                timed(lambda: (mie._count_within(x, eps, True), mie._count_within(z, eps, True)))
            ),
        },
    }


def machine():
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def main():
    load_before = os.getloadavg()
    t0 = time.time()
    result = {
        "command": "OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/bench_smi.py",
        "env": {v: os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")},
        "settings": {"n": N, "n_proj": N_PROJ, "k": K, "repeats": REPEATS, "n_classes": N_CLASSES, "dtype": "float32"},
        "machine": machine(),
        "smi": [bench_smi(d) for d in (64, 4096)],
        "estimators_on_projections": [bench_projected(n) for n in (1000, 2000)],
    }
    result["machine"]["loadavg_1min_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    result["wall_s"] = round(time.time() - t0, 1)
    out = ROOT / "bench" / "results" / "smi.json"
    write_json(out, result)
    for s in result["smi"]:
        for key in ("smi_continuous", "smi_labels"):
            c = s[key]
            print(f"dim {s['dim']:5d} {key:15s} fast {c['fast']['median_ms']:8.1f} ms  kdtree {c['kdtree']['median_ms']:8.1f} ms  x{c['speedup_median']}")
    for e in result["estimators_on_projections"]:
        for key in ("ksg_columns", "ross_columns"):
            c = e[key]
            print(f"n {e['n']:5d} {key:15s} fast {c['fast']['median_ms']:8.1f} ms  kdtree {c['kdtree']['median_ms']:8.1f} ms  x{c['speedup_median']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
