"""QONNX export and qonnx's executor with qonnx's own graph helpers (tensor-shape check,
SortGraph, GiveUniqueParameterTensors) against our linear-time ones (`export/qonnx_linear.py`),
on the same quantized model in one process: time of each and whether the two exports are the
same file, byte for byte.

Model: torchvision's random initialisation with BatchNorm re-estimated, as in the coverage
matrix (`bench_torchvision_matrix.py`), built and calibrated the way the preflight builds its
trial (fpga-int's widest bits, 8 calibration images from ../shared/data/imagenet/sample1000);
weights do not change the graph, so they do not change what is timed. Per architecture, the
order is qonnx's helpers first, then ours (an untimed warm-up export of the first
architecture runs before all). The
executor column is qonnx's ``execute_onnx`` after its cleanup, on one image, as verify's
reference check runs it (`backends/qonnx_exec.py`).

Reproduce: .venv/bin/python bench/bench_export_speed.py   (writes bench/results/export_speed.json)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import onnx
import torch

from bench_torchvision_matrix import weights  # bench/ is on sys.path when run as a script
from machine import machine_info

from infoq_deploy import __version__
from infoq_deploy.backends import qonnx_exec
from infoq_deploy.core.atomic import write_json
from infoq_deploy.core.targets import load_target
from infoq_deploy.data.load import load_data
from infoq_deploy.export import to_qonnx
from infoq_deploy.export.writer import export_model
from infoq_deploy.importing.deployable import deployable
from infoq_deploy.importing.sources import IMAGENET, load_model
from infoq_deploy.quantize.brevitas_model import build_quant_model, calibrate

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "export_speed.json"


def quantized(arch: str, data: Path, tmp: Path):
    wfile = weights(arch, data / "imagenet" / "sample1000", tmp)
    model = deployable(load_model(f"torchvision:{arch}", weights=str(wfile)))
    target = load_target("fpga-int")
    layers = sorted(model.layers, key=lambda l: l.order)
    bits = dict(zip((l.name for l in layers), target.widest_bits(len(layers))))
    qmodel = build_quant_model(model.graph, layers, bits, target.quant_spec(),
                               pool_inputs=target.activations.pool_inputs)
    x = load_data(data / "imagenet" / "sample1000", IMAGENET, limit=8, seed=0).x
    calibrate(qmodel, x)
    return qmodel, x


def timed(qmodel, x, path: Path, ours: bool) -> dict:
    saved = (to_qonnx.linear_time, qonnx_exec.linear_time)
    if not ours:  # qonnx's own helpers: the modules' context manager replaced by one that changes nothing
        to_qonnx.linear_time = qonnx_exec.linear_time = contextlib.nullcontext
    try:
        random.seed(0)  # qonnx names some new tensors with random.choice before renaming them all
        start = time.perf_counter()
        export_model(qmodel, x[:1], "qonnx", path)
        export_s = time.perf_counter() - start
        start = time.perf_counter()
        run = qonnx_exec.session(onnx.load(str(path)))
        out = run(x[:1].numpy())
        exec_s = time.perf_counter() - start
    finally:
        to_qonnx.linear_time, qonnx_exec.linear_time = saved
    model = onnx.load(str(path))
    return {"export_seconds": round(export_s, 2), "executor_seconds": round(exec_s, 2),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "nodes": len(model.graph.node),
            "value_infos": len(model.graph.value_info), "logits": out.reshape(-1)[:5].tolist()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--archs", default="resnet18,densenet121")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    data = Path(args.data_root)
    rows = {}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        for arch in args.archs.split(","):
            qmodel, x = quantized(arch, data, tmp)
            if not rows:  # first-call costs (imports, tracing caches) out of both timings
                export_model(qmodel, x[:1], "qonnx", tmp / "warm.onnx")
            theirs = timed(qmodel, x, tmp / "theirs.onnx", ours=False)
            ours = timed(qmodel, x, tmp / "ours.onnx", ours=True)
            rows[arch] = {"qonnx_helpers": theirs, "linear_time_helpers": ours,
                          "same_file": theirs["sha256"] == ours["sha256"],
                          "export_speedup": round(theirs["export_seconds"] / ours["export_seconds"], 2),
                          "executor_speedup": round(theirs["executor_seconds"] / ours["executor_seconds"], 2)}
            print(arch, {k: v for k, v in rows[arch].items() if k not in ("qonnx_helpers", "linear_time_helpers")},
                  theirs["export_seconds"], ours["export_seconds"], flush=True)
    write_json(Path(args.out), {
        "benchmark": "QONNX export and qonnx's executor: qonnx's graph helpers against their linear-time "
                     "versions in export/qonnx_linear.py, same model, same process",
        "command": "python bench/bench_export_speed.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "model": "torchvision random init (seed 0), BatchNorm re-estimated on 32 sample1000 images; fpga-int's "
                 "widest bits, calibrated on 8 sample1000 images (the preflight's trial build)",
        "archs": rows, "tool_version": __version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
