"""Why CLADO's quadratic program leaves budget unspent on ResNet-20: its matrix, and two repairs.

CLADO's objective is a^T G a over one-hot width choices a, G holding each layer's measured loss
change on the diagonal and half of each pair's cross term off it. This script profiles CLADO as
`bench_criteria.py` does (CIFAR-10 ResNet-20, 256 calibration images, fpga-int's quantizer,
weights only at 2, 4 or 8 bits), writes G's eigenvalues, and allocates at each budget from:
the table as measured; G projected onto the positive semi-definite cone (negative eigenvalues set
to 0, singles read back from the diagonal, each layer's best width shifted to 0), which the CLADO
authors' code does before solving; G with negative cross terms set to 0; no cross terms at all.
It records the average weight bits each allocation uses (no accuracy: that needs the rerun of
`bench_criteria.py` once a repair is in `profile/clado.py`).

Reproduce: .venv/bin/python bench/bench_clado_matrix.py   (about 6 minutes on 2 cores)
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
from machine import machine_info  # noqa: E402  (bench/machine.py; the script folder is on sys.path)

from infoq_deploy import __version__, stages
from infoq_deploy.core.atomic import write_json

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
WIDTHS = (2, 4, 8)
BUDGETS = (2.5, 3.0, 3.5, 4.0, 5.0)


def matrix(table, names):
    idx = [(n, w) for n in names for w in WIDTHS]
    pos = {k: i for i, k in enumerate(idx)}
    g = np.zeros((len(idx), len(idx)))
    for (n, w), i in pos.items():
        g[i, i] = table.weights[n][w]
    for (a, b), terms in table.pairs.items():
        for (wa, wb), v in terms.items():
            g[pos[(a, wa)], pos[(b, wb)]] = g[pos[(b, wb)], pos[(a, wa)]] = v / 2
    return g, pos


def projected(table, names):
    g, pos = matrix(table, names)
    ev, vec = np.linalg.eigh(g)
    p = (vec * np.clip(ev, 0, None)) @ vec.T
    weights = {n: dict(d) for n, d in table.weights.items()}
    for n in names:
        raw = {w: float(p[pos[(n, w)], pos[(n, w)]]) for w in WIDTHS}
        weights[n] = {w: v - min(raw.values()) for w, v in raw.items()}
    pairs = {(a, b): {k: float(2 * p[pos[(a, k[0])], pos[(b, k[1])]]) for k in terms}
             for (a, b), terms in table.pairs.items()}
    return dataclasses.replace(table, weights=weights, pairs=pairs), ev


def main() -> int:
    started = time.perf_counter()
    model = stages.load_model("zoo:cifar10-resnet20", data_root=str(DATA))
    plan = stages.plan_datasets(model.preprocess, data=str(DATA / "cifar10" / "train.tar.gz"),
                                eval_data=str(DATA / "cifar10" / "test"), calib_size=256, seed=0)
    t = stages.load_target("fpga-int")
    target = dataclasses.replace(t, weights=dataclasses.replace(t.weights, bits=WIDTHS),
                                 activations=dataclasses.replace(t.activations, bits=(8,)))
    t0 = time.perf_counter()
    table = stages.profile(model, target, plan.calibration, "clado", progress=False)
    profile_seconds = round(time.perf_counter() - t0, 1)
    layers = sorted(table.layers, key=lambda l: l.order)
    names = [l.name for l in layers if any(l.name in p for p in table.pairs)]
    params = {l.name: l.weight_params for l in layers}
    psd, ev = projected(table, names)
    variants = {
        "as measured": table,
        "projected onto the PSD cone": psd,
        "negative cross terms set to 0": dataclasses.replace(
            table, pairs={k: {kk: max(v, 0.0) for kk, v in terms.items()} for k, terms in table.pairs.items()}),
        "no cross terms": dataclasses.replace(table, pairs={}),
    }
    rows = []
    for name, tb in variants.items():
        for budget in BUDGETS:
            doc = stages.allocation_document(tb, target, [f"{budget}bit"])
            used = sum(params[e["name"]] * e["w_bits"] for e in doc["layers"]) / sum(params.values())
            rows.append({"variant": name, "budget_bits": budget, "avg_weight_bits": round(used, 4),
                         "w_bits": {e["name"]: e["w_bits"] for e in doc["layers"]}})
            print(f"{name} at {budget} bits: {used:.3f} bits used", flush=True)
    write_json(HERE / "results" / "clado_matrix_cifar10-resnet20.json", {
        "benchmark": "CLADO's matrix on ResNet-20: eigenvalues, and the bits allocations use as measured and repaired",
        "command": f"{Path(sys.executable).name} bench/bench_clado_matrix.py",
        "tool_version": __version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
        "model": "zoo:cifar10-resnet20", "widths": list(WIDTHS),
        "calibration": {"source": plan.calibration.source, "n": len(plan.calibration)},
        "profile_seconds": profile_seconds, "forward_passes": table.meta["forward_passes"],
        "matrix": {"size": len(ev), "negative_eigenvalues": int((ev < 0).sum()),
                   "min_eigenvalue": float(ev.min()), "max_eigenvalue": float(ev.max())},
        "allocations": rows, "wall_seconds": round(time.perf_counter() - started, 1),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
