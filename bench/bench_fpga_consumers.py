"""The fpga-int export as hls4ml reads it: its C simulation against qonnx, on real evaluation inputs.

For each model the whole pipeline runs on fpga-int at 4 bits per weight on average (the
bundled Fashion-MNIST CNN with InfoQ; the pretrained CIFAR-10 ResNet-20 and ResNet-56 with the
quick `mse` criterion, since the allocation method does not change what is checked here),
then the exported file, unedited, goes through hls4ml 1.3's documented QONNX flow and its g++
C simulation (infoq_deploy/backends/hls4ml_csim.py), and the logits are compared with qonnx's
execution of the same file on the first N of the class-balanced verification images.

Reproduce: .venv/bin/python bench/bench_fpga_consumers.py [--models fashion,resnet20,resnet56]
           (writes bench/results/fpga_consumers.json; about 40 minutes on 2 cores, most of it
           the ResNet C simulations)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import onnx
from machine import machine_info  # bench/machine.py (the script's folder is on sys.path)

from infoq_deploy import __version__, stages
from infoq_deploy.backends import hls4ml_csim
from infoq_deploy.core.atomic import write_json
from infoq_deploy.pipeline import RunConfig, run
from infoq_deploy.verify.consumer import check_consumer

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
CIFAR = {"data": str(DATA / "cifar10" / "train.tar.gz"), "calib_size": 500, "eval_data": str(DATA / "cifar10" / "test"),
         "data_root": str(DATA), "method": "mse"}
MODELS = {
    "fashion": ("zoo:fashion-cnn", {"method": "infoq", "data": stages.DEFAULT_DATA, "eval_data": stages.DEFAULT_EVAL_DATA}, 1000),
    "resnet20": ("zoo:cifar10-resnet20", CIFAR, 1000),
    "resnet56": ("zoo:cifar10-resnet56", CIFAR, 300),  # ~2 s per image in the C simulation
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default=str(HERE / "results" / "fpga_consumers.json"))
    args = ap.parse_args()
    results = {}
    for key in args.models.split(","):
        spec, opts, n = MODELS[key]
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            cfg = RunConfig(model=spec, target="fpga-int", budgets=["4bit"], run_dir=run_dir, verify_size=1000,
                            consumer_size=20, progress=False, **opts)
            t0 = time.perf_counter()
            summary = run(cfg)
            pipeline_s = time.perf_counter() - t0
            verify = json.loads((run_dir / "verify.json").read_text())
            model = stages.load_model(spec, data_root=opts.get("data_root"))
            evaluation = stages.load_data(cfg.eval_data or stages.DEFAULT_EVAL_DATA, model.preprocess)
            held_out = stages.verification_subset(evaluation, 1000, 0)
            graph = onnx.load(str(run_dir / "model.onnx"))
            t0 = time.perf_counter()
            consumer = check_consumer(run_dir / "model.onnx", "hls4ml", held_out.x[:n].numpy())
            wall = time.perf_counter() - t0
        each = hls4ml_csim.seconds_per_input(graph)
        results[key] = {
            "model": spec, "method": cfg.method, "budget": "4bit", "eval_data": cfg.eval_data or stages.DEFAULT_EVAL_DATA,
            "pipeline_seconds": pipeline_s, "accuracies": summary["accuracies"],
            "our_verification": {k: verify["result"][k] for k in ("ok", "agreement", "n_inputs", "mismatches")},
            "ops_in_file": dict(Counter(node.op_type for node in graph.graph.node)),
            "hls4ml": consumer.to_json(),
            "hls4ml_wall_seconds": wall,
            "estimated_seconds_per_input": each,
            "measured_seconds_per_mac": None if not consumer.seconds_per_input else
            consumer.seconds_per_input * hls4ml_csim.SECONDS_PER_MAC / each,
        }
        print(key, consumer.line(), f"build {consumer.build_seconds}", flush=True)
    write_json(Path(args.out), {
        "benchmark": "hls4ml 1.3 C simulation of the fpga-int QONNX export against qonnx's execution of the same file",
        "command": f"python bench/bench_fpga_consumers.py --models {args.models}",
        "tool_version": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "flow": "qonnx cleanup, ConvertToChannelsLastAndClean, GemmToMatMul, cleanup, "
                "config_from_onnx_model(granularity='name'), convert_from_onnx_model(Vitis, io_stream), compile, predict",
        "results": results,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
