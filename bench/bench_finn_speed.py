"""FINN's conversion and execution with qonnx's graph helpers against our linear-time ones
(`export/qonnx_linear.py`), on the same exported file in one process: the time of each and
whether the two give the same hardware graph, byte for byte, and the same outputs.

FINN's transformations are qonnx ``ModelWrapper.transform`` calls, and every one of them ends
in qonnx's cleanup (SortGraph, GiveUniqueParameterTensors) while every wrap and every
execution checks the tensor shapes; each of these scans the graph per node or tensor.
`backends/finn_exec.py` runs FINN's front end (`prepare`), its execution and its resource
estimates inside ``linear_time()``.

File: the pretrained CIFAR-10 zoo model, fpga-int with 4-bit weights and 8-bit activations
on every free layer (first and last at 8/8), calibrated on 64 test images, exported to QONNX
as the pipeline exports it. Order per model: qonnx's helpers first, then ours.

Reproduce: .venv/bin/python bench/bench_finn_speed.py   (writes bench/results/finn_speed.json)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from machine import machine_info

from infoq_deploy import __version__
from infoq_deploy.backends import finn_exec
from infoq_deploy.core.atomic import write_json
from infoq_deploy.core.targets import load_target
from infoq_deploy.data.load import load_data
from infoq_deploy.export.writer import export_model
from infoq_deploy.importing.deployable import deployable
from infoq_deploy.importing.sources import load_model
from infoq_deploy.quantize.brevitas_model import build_quant_model, calibrate

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"


def exported(name: str, path: Path) -> np.ndarray:
    model = deployable(load_model(name, data_root=str(DATA)))
    target = load_target("fpga-int")
    layers = sorted(model.layers, key=lambda l: l.order)
    n = len(layers)
    bits = {l.name: (4, 8) if len(target.layer_choices(l.order, n)) > 1 else (8, 8) for l in layers}
    qmodel = build_quant_model(model.graph, layers, bits, target.quant_spec(),
                               pool_inputs=target.activations.pool_inputs)
    x = load_data(DATA / "cifar10" / "test", model.preprocess, limit=64, seed=0).x
    calibrate(qmodel, x)
    export_model(qmodel, x[:1], "qonnx", path)
    return x[:2].numpy()


def timed(model: onnx.ModelProto, x: np.ndarray, ours: bool) -> dict:
    saved = finn_exec.linear_time
    if not ours:  # qonnx's own helpers: the module's context manager replaced by one that changes nothing
        finn_exec.linear_time = contextlib.nullcontext
    try:
        random.seed(0)  # qonnx names some new tensors with random.choice
        start = time.perf_counter()
        run = finn_exec.session(model)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        out = run(x)
        exec_s = time.perf_counter() - start
        random.seed(0)
        graph = finn_exec.prepare(model).model.SerializeToString()
    finally:
        finn_exec.linear_time = saved
    return {"build_seconds": round(build_s, 2), "execute_seconds_per_input": round(exec_s / len(x), 2),
            "graph_sha256": hashlib.sha256(graph).hexdigest(), "outputs": out.tolist()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="zoo:cifar10-resnet20")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results" / "finn_speed.json"))
    args = ap.parse_args()
    if (why := finn_exec.unavailable()) is not None:
        print(why)
        return 1
    torch.set_num_threads(args.threads)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path = Path(tmp) / "model.onnx"
            x = exported(name, path)
            model = onnx.load(str(path))
            theirs, ours = timed(model, x, ours=False), timed(model, x, ours=True)
            rows[name] = {"nodes_in_file": len(model.graph.node), "qonnx_helpers": theirs, "linear_time_helpers": ours,
                          "same_graph": theirs["graph_sha256"] == ours["graph_sha256"],
                          "same_outputs": theirs["outputs"] == ours["outputs"],
                          "build_speedup": round(theirs["build_seconds"] / ours["build_seconds"], 2),
                          "execute_speedup": round(theirs["execute_seconds_per_input"]
                                                   / ours["execute_seconds_per_input"], 2)}
            print(name, {k: v for k, v in rows[name].items() if k not in ("qonnx_helpers", "linear_time_helpers")},
                  flush=True)
    write_json(Path(args.out), {
        "benchmark": "FINN's conversion (prepare: QONNX front end, streamlining, hardware layers) and execution, "
                     "qonnx's graph helpers against their linear-time versions, same file, same process",
        "command": "python bench/bench_finn_speed.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "file": "fpga-int, free layers w4/a8, first and last w8/a8, calibrated on 64 CIFAR-10 test images",
        "torch_threads": args.threads, "models": rows, "tool_version": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
