"""The fpga-int export as the FPGA flows read it: hls4ml's C simulation and FINN's hardware
layers, each against qonnx, on real evaluation inputs.

For each model the whole pipeline runs on fpga-int at 4 bits per weight on average (the
bundled Fashion-MNIST CNN with InfoQ; the pretrained CIFAR-10 ResNet-20 and ResNet-56 with the
quick `mse` criterion, since the allocation method does not change what is checked here),
then the exported file, unedited, goes through hls4ml 1.3's documented QONNX flow and its g++
C simulation (infoq_deploy/backends/hls4ml_csim.py), and the logits are compared with qonnx's
execution of the same file on the first N of the class-balanced verification images. With
``--backends finn`` the same file goes through FINN's front end, streamlining and conversion
to hardware layers (infoq_deploy/backends/finn_exec.py), and FINN executes the result.

Reproduce: .venv/bin/python bench/bench_fpga_consumers.py [--models fashion,resnet20,resnet56]  (rows merge into --out)
           (writes bench/results/fpga_consumers.json; about 40 minutes on 2 cores, most of it
           the ResNet C simulations)
           .venv/bin/python bench/bench_fpga_consumers.py --backends finn --models fashion,resnet20 --inputs 300 \
               --out bench/results/fpga_consumers_finn.json
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
    ap.add_argument("--backends", default="hls4ml", help="comma-separated: hls4ml, finn")
    ap.add_argument("--inputs", type=int, help="inputs per model (default: 1000, ResNet-56 300)")
    ap.add_argument("--out", default=str(HERE / "results" / "fpga_consumers.json"))
    args = ap.parse_args()
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    # models not run this time keep their earlier rows, with the command that produced them
    results = previous.get("results", {})
    commands = previous.get("commands", {})
    for key in args.models.split(","):
        spec, opts, n = MODELS[key]
        n = args.inputs or n
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
            checks = {}
            for backend in args.backends.split(","):
                t0 = time.perf_counter()
                consumer = check_consumer(run_dir / "model.onnx", backend, held_out.x[:n].numpy())
                checks[backend] = {"result": consumer.to_json(), "wall_seconds": time.perf_counter() - t0}
                if backend == "finn" and consumer.graph_ops:
                    checks[backend]["hardware_layers"] = consumer.graph_ops
                print(key, consumer.line(), f"build {consumer.build_seconds}", flush=True)
        results[key] = {
            "model": spec, "method": cfg.method, "budget": "4bit", "eval_data": cfg.eval_data or stages.DEFAULT_EVAL_DATA,
            "pipeline_seconds": pipeline_s, "accuracies": summary["accuracies"],
            "our_verification": {k: verify["result"][k] for k in ("ok", "agreement", "n_inputs", "mismatches")},
            "ops_in_file": dict(Counter(node.op_type for node in graph.graph.node)),
        }
        commands[key] = " ".join(["python bench/bench_fpga_consumers.py", *sys.argv[1:]])
        for backend, check in checks.items():
            results[key][backend] = check["result"]
            results[key][f"{backend}_wall_seconds"] = check["wall_seconds"]
            if "hardware_layers" in check:
                results[key]["finn_hardware_layers"] = check["hardware_layers"]
            if backend == "hls4ml":
                each = hls4ml_csim.seconds_per_input(graph)
                seconds = check["result"].get("seconds_per_input")
                results[key]["estimated_seconds_per_input"] = each
                results[key]["measured_seconds_per_mac"] = None if not seconds else seconds * hls4ml_csim.SECONDS_PER_MAC / each
        _write(out, results, commands)
    return 0


def _write(out: Path, results: dict, commands: dict) -> None:
    write_json(out, {
        "benchmark": "the fpga-int QONNX export through the FPGA flows (hls4ml 1.3 C simulation, FINN hardware "
                     "layers), each against qonnx's execution of the same file",
        "commands": commands,  # per model: the command that produced its row
        "tool_version": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "flows": {
            "hls4ml": "qonnx cleanup, ConvertToChannelsLastAndClean, GemmToMatMul, cleanup, "
                      "config_from_onnx_model(granularity='name'), convert_from_onnx_model(Vitis, io_stream), compile, predict",
            "finn": "finn-plus 1.6.1: step_qonnx_to_finn (max_multithreshold_bit_width 16), step_resnet_tidy, "
                    "step_resnet_streamline with RoundAndClipThresholds sending ties to even "
                    "(infoq_deploy/backends/finn_rounding.py), step_convert_to_hw (default config), finn.core.onnx_exec",
        },
        "results": results,
    })


if __name__ == "__main__":
    sys.exit(main())
