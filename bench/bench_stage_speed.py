"""Are quantize and verify the bottleneck? (issue #13) EfficientNet-Lite0 on edge-cpu-ort, in one run.

Setup as the issue states it: 500 calibration images (seeded, class-stratified) of
`../shared/data/imagenet/sample1000`, the 1,300 `val1300` images for verification, every layer
integer (edge-cpu-ort's w7/a8), exported to QCDQ.

Measured, in the same process on the same data:
1. `stages.quantize` (the code the pipeline runs; accuracy evaluation left out) for `--ptq
   minmax --no-bias-correction` (calibration alone) and for the default (GPTQ + bias correction):
   the seconds of calibration and of each algorithm;
2. ONNX Runtime's `quantize_static` of the float model on the same 500 images (QDQ, per-channel,
   MinMax: the cheapest of its calibrations), from the float ONNX file to the quantized one;
3. `stages.verify_quantized` of each exported file on the 1,300 images (no FPGA consumer: the
   target's consumer is ONNX Runtime, which verify runs itself), against what it cannot do
   without: running the exported file once (onnxruntime) and the quantized model once (Brevitas)
   over the same images, in the batches verify uses.
The issue's aims: calibration plus PTQ within 3x of ORT's time; verify within 2x of the two
runs. Each stage's time per image is in the file.

Reproduce: .venv/bin/python bench/bench_stage_speed.py   (writes bench/results/stage_speed_lite0.json)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from bench_ptq_imagenet import MODEL, _Reader, every_layer_integer, lite0  # the same model, data and reader
from machine import machine_info  # bench/machine.py (the script's folder is on sys.path)
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from infoq_deploy import __version__, stages
from infoq_deploy.backends.batched import run_batched
from infoq_deploy.core.atomic import write_json
from infoq_deploy.quantize.file import ModelSource
from infoq_deploy.quantize.ptq import PtqConfig
from infoq_deploy.verify.check import _ELEMENT_BUDGET  # verify's batch rule, so the baseline runs batch alike

HERE = Path(__file__).resolve().parent
PTQS = {"minmax": PtqConfig("minmax", False), "default (gptq + bias correction)": PtqConfig(chosen=False)}


def run_file(path: Path, x: np.ndarray, batch: int) -> float:
    """Seconds to run the file over ``x`` in onnxruntime, ``batch`` inputs per call (re-batched as
    verify runs it; the file is exported at batch 1)."""
    model = onnx.load(str(path))
    t0 = time.perf_counter()
    run_batched(model, x, batch, "ort")
    return time.perf_counter() - t0


def run_model(qmodel, x: torch.Tensor, batch: int) -> float:
    qmodel.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            qmodel(x[i:i + batch])
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--calib-size", type=int, default=500)
    ap.add_argument("--eval-size", type=int, default=None, help="val1300 images (default all 1,300)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "stage_speed_lite0.json"))
    args = ap.parse_args()
    root = Path(args.data_root)
    started = time.perf_counter()
    model, plan = lite0(root, args.calib_size, args.eval_size, args.seed)
    no_eval = dataclasses.replace(plan, evaluation=None)
    ev, calib = plan.evaluation, plan.calibration
    target = stages.load_target("edge-cpu-ort")
    doc = every_layer_integer(model, target, calib, args.seed)
    batch = max(1, min(len(ev), 256, _ELEMENT_BUDGET // max(1, ev.x[0].numel())))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        float_path = tmp / "float.onnx"
        torch.onnx.export(stages.deployable(model).graph.eval(), calib.x[:1], str(float_path), dynamo=False,
                          opset_version=13)
        ort_path = tmp / "ort.onnx"
        t0 = time.perf_counter()
        quantize_static(str(float_path), str(ort_path), _Reader(calib.x.numpy(), onnx.load(str(float_path)).graph.input[0].name),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        ort_seconds = time.perf_counter() - t0
        print(f"ORT quantize_static MinMax on {len(calib)} images: {ort_seconds:.1f} s", flush=True)
        for label, cfg in PTQS.items():
            qm = stages.quantize(model, target, doc, no_eval, ModelSource.of(MODEL), ptq=cfg)
            path = tmp / "q.onnx"
            export_s = stages.export_quantized(qm, path)
            t0 = time.perf_counter()
            verification = stages.verify_quantized(path, qm, ev, consumers=())
            verify_s = time.perf_counter() - t0
            file_s = run_file(path, ev.x.numpy(), batch)
            model_s = run_model(qm.qmodel, ev.x, batch)
            algo_s = qm.timings["quantize"]  # calibration and the algorithm, no accuracy evaluation
            result = verification["result"]
            rows[label] = {
                "ptq": qm.ptq, "quantize_seconds": qm.timings, "export_seconds": export_s,
                "calibration_plus_ptq_over_ort": round(algo_s / ort_seconds, 2),
                "verify_seconds": round(verify_s, 2), "run_file_seconds": round(file_s, 2),
                "run_quantized_model_seconds": round(model_s, 2),
                "verify_over_two_runs": round(verify_s / (file_s + model_s), 2),
                "per_image_ms": {"calibration_plus_ptq": round(1000 * algo_s / len(calib), 1),
                                 "verify": round(1000 * verify_s / len(ev), 1),
                                 "run_file": round(1000 * file_s / len(ev), 1),
                                 "run_quantized_model": round(1000 * model_s / len(ev), 1)},
                "verified": result["ok"], "agreement": result["agreement"], "verified_on": result["n_inputs"],
                "logits": {k: result.get(k) for k in ("mean_abs_diff", "max_abs_diff", "tolerance", "quant_error",
                                                       "rounding_noise")},
            }
            print(f"{label}: quantize {algo_s:.1f} s ({rows[label]['calibration_plus_ptq_over_ort']}x ORT), verify "
                  f"{verify_s:.1f} s against {file_s:.1f} + {model_s:.1f} s ({rows[label]['verify_over_two_runs']}x)",
                  flush=True)
    write_json(args.out, {
        "benchmark": "quantize and verify against ONNX Runtime's quantize_static and against running the file and "
                     "the quantized model once (issue #13), EfficientNet-Lite0 on edge-cpu-ort, every layer integer",
        "command": f"{Path(sys.executable).name} bench/bench_stage_speed.py --calib-size {args.calib_size} "
                   f"--seed {args.seed}" + (f" --eval-size {args.eval_size}" if args.eval_size else ""),
        "tool_version": __version__, "onnxruntime": ort.__version__, "machine": machine_info(),
        "threads": torch.get_num_threads(), "model": MODEL,
        "calibration": {"source": calib.source, "n": len(calib), "sha256": calib.sha256},
        "evaluation": {"source": ev.source, "n": len(ev)}, "verify_batch": batch,
        "ort_quantize_static_minmax_seconds": round(ort_seconds, 2),
        "ort_per_image_ms": round(1000 * ort_seconds / len(calib), 1),
        "results": rows, "wall_seconds": round(time.perf_counter() - started, 1),
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
