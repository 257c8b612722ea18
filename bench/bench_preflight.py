"""What the pipeline's preflight (verify/preflight.py) costs and says, before any profiling.

For each model: the preflight on fpga-int (trial build at the widest bits, 8 calibration
images, QONNX export, hls4ml's structural check), its wall time and verdict. On the ResNet-18
trial file, hls4ml's structural check on the exported file against the same check after
hls4ml's documented preparation (`hls4ml_csim.prepare`: qonnx cleanup, channels-last,
GemmToMatMul), which the first version ran. torchvision models have seeded random weights
(only the graph matters here); calibration images from ../shared/data/imagenet/sample1000.

Reproduce: .venv/bin/python bench/bench_preflight.py   (writes bench/results/preflight.json; ~4 minutes)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import onnx
from machine import machine_info  # bench/machine.py (the script's folder is on sys.path)

from infoq_deploy import __version__, stages
from infoq_deploy.backends import hls4ml_csim
from infoq_deploy.core.atomic import write_json
from infoq_deploy.core.errors import UserError
from infoq_deploy.export.writer import export_model
from infoq_deploy.importing.deployable import deployable
from infoq_deploy.quantize.brevitas_model import build_quant_model, calibrate

HERE = Path(__file__).resolve().parent
IMAGENET = HERE.parent.parent / "shared" / "data" / "imagenet" / "sample1000"
MODELS = [("zoo:fashion-cnn", stages.DEFAULT_DATA), ("torchvision:resnet18", str(IMAGENET)),
          ("torchvision:mobilenet_v2", str(IMAGENET))]


def main() -> int:
    target = stages.load_target("fpga-int")
    results = {}
    for spec, data in MODELS:
        model = stages.load_model(spec)
        plan = stages.plan_datasets(model.preprocess, data=data, calib_size=8, require_eval=False)
        t0 = time.perf_counter()
        try:
            verdict = {"ok": True, **stages.preflight(model, target, plan.calibration)}
        except UserError as exc:
            verdict = {"ok": False, "refusal": str(exc)}
        verdict["wall_seconds"] = time.perf_counter() - t0
        results[spec] = verdict
        print(spec, verdict, flush=True)
    # the structural check on the exported file against the same after hls4ml's preparation
    model = stages.load_model("torchvision:resnet18")
    plan = stages.plan_datasets(model.preprocess, data=str(IMAGENET), calib_size=8, require_eval=False)
    d = deployable(model)
    layers = sorted(d.layers, key=lambda l: l.order)
    q = build_quant_model(d.graph, layers, dict(zip((l.name for l in layers), target.widest_bits(len(layers)))),
                          target.quant_spec())
    calibrate(q, plan.calibration.x)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trial.onnx"
        t0 = time.perf_counter()
        export_model(q, plan.calibration.x[:1], "qonnx", path)
        export_s = time.perf_counter() - t0
        graph = onnx.load(str(path))
    t0 = time.perf_counter()
    on_file = hls4ml_csim.unsupported(graph)
    check_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    hls4ml_csim.prepare(graph)
    prepare_s = time.perf_counter() - t0
    results["resnet18_check"] = {"export_seconds": export_s, "check_on_file_seconds": check_s,
                                 "prepare_seconds": prepare_s, "found_on_file": [list(r) for r in on_file]}
    print(results["resnet18_check"], flush=True)
    write_json(HERE / "results" / "preflight.json", {
        "benchmark": "the pipeline's preflight on fpga-int: time and verdict per model; hls4ml's structural "
                     "check on the exported file against hls4ml's preparation of it",
        "command": "python bench/bench_preflight.py", "tool_version": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
