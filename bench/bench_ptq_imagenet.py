"""Post-training quantization (--ptq, --bias-correction) on ImageNet EfficientNet-Lite0, run in ONNX Runtime.

Calibration: N images (default 256; seeded, class-stratified) of `../shared/data/imagenet/sample1000`,
the same for ours and ORT's (ORT's Entropy and Percentile calibration keep every image's
activations in memory, which is what bounds N on a 24 GB machine);
evaluation: the 1,300 `val1300` images. Every quantized model is exported to QCDQ (the format
both targets ship) and its top-1 is measured by running that file in onnxruntime (CPU), the
consumer, not Brevitas.

1. edge-cpu-ort int8: every layer integer (w7/a8, the target's integer pair), quantized through
   `stages.quantize` (the code the pipeline runs) with each --ptq choice (minmax, mse, gptq,
   each with and without bias correction); beside it ONNX Runtime's own `quantize_static` of the
   float model (QDQ, per-channel int8 weights, uint8 activations) on the same calibration
   images, with each of its calibration methods (MinMax, Entropy, Percentile), with and without
   `reduce_range`; and the float model.
2. mcu-int (weights 2/4/8 bits per channel, activations 8, float scales): the weight-error
   proxy's allocation (`--method mse`; an InfoQ profile of Lite0 is #13's work) at 4.0 and 5.0
   average weight bits and uniform 4-bit, each --ptq choice.

GPTQ is run as the pipeline's default runs it (`PtqConfig(chosen=False)`): the classifier has
1,280 inputs per output and one Hessian row per image, more than the 1,000 images sample1000
holds, so it is rounded to nearest and every other layer is rounded by GPTQ; each row records
which layers were left out. The time of each algorithm (calibration, GPTQ, bias correction,
ORT's calibration and quantization) is measured in the same run.

Reproduce: .venv/bin/python bench/bench_ptq_imagenet.py   (writes bench/results/ptq_imagenet_lite0.json;
           GPTQ took 139-145 s per model on 2 cores in the committed edge run, whose part took 19 minutes;
           --parts, --ptqs, --mcu-budgets and --no-mcu-uniform run a part of it)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from machine import machine_info  # noqa: E402  (bench/machine.py; the script folder is on sys.path)
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from infoq_deploy import __version__, stages
from infoq_deploy.allocate.ilp import recost
from infoq_deploy.core.atomic import write_json
from infoq_deploy.quantize.file import ModelSource
from infoq_deploy.quantize.ptq import PtqConfig

HERE = Path(__file__).resolve().parent
MODEL = "zoo:efficientnet-lite0"
ALL_PTQS = {"minmax": PtqConfig("minmax", False), "minmax+bc": PtqConfig("minmax", True),
            "gptq": PtqConfig("gptq", False, chosen=False), "gptq+bc": PtqConfig("gptq", True, chosen=False),
            "mse": PtqConfig("mse", False), "mse+bc": PtqConfig("mse", True)}


class _Reader(CalibrationDataReader):
    def __init__(self, x: np.ndarray, name: str):
        self.items = iter([{name: x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.items, None)


def ort_top1(path: Path, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Top-1 of the file in onnxruntime (batch 1, as exported) and the seconds the run took."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = torch.get_num_threads()
    s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    t0 = time.perf_counter()
    out = np.concatenate([s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
    return float((out.argmax(1) == y).mean()), round(time.perf_counter() - t0, 1)


def set_bits(doc: dict, layers, target, bits) -> dict:
    """``doc`` with every layer at ``bits(layer)``, its costs recomputed."""
    doc = copy.deepcopy(doc)
    by_name = {layer.name: layer for layer in layers}
    for entry in doc["layers"]:
        entry["w_bits"], entry["a_bits"] = bits(by_name[entry["name"]])
    return recost(doc, layers, target)


def lite0(root: Path, calib_size: int, eval_size: int | None, seed: int):
    """EfficientNet-Lite0 and its data plan: calibration drawn from sample1000 (seeded,
    class-stratified), evaluation on val1300."""
    model = stages.load_model(MODEL, data_root=str(root))
    plan = stages.plan_datasets(model.preprocess, data=str(root / "imagenet" / "sample1000"),
                                eval_data=str(root / "imagenet" / "val1300"), calib_size=calib_size,
                                eval_size=eval_size, seed=seed)
    return model, plan


def every_layer_integer(model, target, calibration, seed: int) -> dict:
    """The allocation with every layer at ``target``'s integer pair (its first choice)."""
    table = stages.profile(model, target, calibration, "mse", seed=seed)
    integer = target.choices()[0]
    return set_bits(stages.allocation_document(table, target, ["1000MB"]), stages.deployable(model).layers, target,
                    lambda layer: integer)


def avg_w(doc: dict, layers) -> float:
    params = {layer.name: layer.weight_params for layer in layers}
    return sum(params[e["name"]] * e["w_bits"] for e in doc["layers"]) / sum(params.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--calib-size", type=int, default=256)
    ap.add_argument("--eval-size", type=int, default=None, help="val1300 images (default: all 1,300)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts", default="edge,mcu", help="edge, mcu or both")
    ap.add_argument("--ptqs", default=",".join(ALL_PTQS),
                    help="the --ptq choices to run, of " + ",".join(ALL_PTQS) + " (default all)")
    ap.add_argument("--mcu-budgets", default="4.0,5.0", help="average weight bits of the mcu-int allocations")
    ap.add_argument("--no-mcu-uniform", action="store_true", help="leave out the uniform 4-bit mcu-int model")
    ap.add_argument("--out", default=str(HERE / "results" / "ptq_imagenet_lite0.json"))
    args = ap.parse_args()
    unknown = set(args.ptqs.split(",")) - set(ALL_PTQS)
    if unknown:
        ap.error(f"unknown --ptqs {', '.join(sorted(unknown))}")
    rule_ptqs = {rule: [ALL_PTQS[k] for k in args.ptqs.split(",") if ALL_PTQS[k].scale_rule == rule]
                 for rule in ("minmax", "mse")}
    rule_ptqs = {rule: cfgs for rule, cfgs in rule_ptqs.items() if cfgs}
    root = Path(args.data_root)
    started = time.perf_counter()
    model, plan = lite0(root, args.calib_size, args.eval_size, args.seed)
    no_eval = dataclasses.replace(plan, evaluation=None)
    ev = plan.evaluation
    x_eval, y_eval = ev.x.numpy(), ev.y.numpy()
    layers = stages.deployable(model).layers
    rows, ort_rows, profiles = [], [], {}
    doc_out = {
        "benchmark": "post-training quantization on ImageNet EfficientNet-Lite0: every --ptq choice against ONNX "
                     "Runtime's quantize_static (edge-cpu-ort), and mcu-int at 4 and 5 average weight bits; "
                     "top-1 of each QCDQ file in onnxruntime",
        "command": f"{Path(sys.executable).name} bench/bench_ptq_imagenet.py --calib-size {args.calib_size}"
                   + (f" --eval-size {args.eval_size}" if args.eval_size else "") + f" --seed {args.seed}"
                   + (f" --parts {args.parts}" if args.parts != "edge,mcu" else "")
                   + (f" --ptqs {args.ptqs}" if args.ptqs != ",".join(ALL_PTQS) else "")
                   + (f" --mcu-budgets {args.mcu_budgets}" if args.mcu_budgets != "4.0,5.0" else "")
                   + (" --no-mcu-uniform" if args.no_mcu_uniform else ""),
        "tool_version": __version__, "onnxruntime": ort.__version__, "machine": machine_info(), "model": MODEL,
        "calibration": {"source": plan.calibration.source, "n": len(plan.calibration),
                        "sha256": plan.calibration.sha256},
        "evaluation": {"source": ev.source, "n": len(ev)},
        "profiles": profiles, "results": rows, "ort_quantize_static": ort_rows,
    }

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        example = plan.calibration.x[:1]
        float_path = tmp / "float.onnx"
        torch.onnx.export(stages.deployable(model).graph.eval(), example, str(float_path), dynamo=False,
                          opset_version=13)
        doc_out["accuracy_float"], doc_out["float_ort_seconds"] = ort_top1(float_path, x_eval, y_eval)
        print(f"float top-1 {doc_out['accuracy_float']:.4f} (onnxruntime)", flush=True)

        def run(part, target, allocation, budget, doc):
            for cfg in rule_ptqs[target.scale_rule]:
                t0 = time.perf_counter()
                qm = stages.quantize(model, target, doc, no_eval, ModelSource.of(MODEL), ptq=cfg)
                path = tmp / "q.onnx"
                export_s = stages.export_quantized(qm, path)
                top1, eval_s = ort_top1(path, x_eval, y_eval)
                row = {"part": part, "target": target.name, "budget": budget, "allocation": allocation,
                       "ptq": qm.ptq["algorithm"], "bias_correction": qm.ptq["bias_correction"],
                       "scale_rule": qm.ptq["scale_rule"],
                       "rounded_to_nearest": qm.ptq.get("rounded_to_nearest", []), "top1_onnxruntime": top1,
                       "avg_weight_bits": round(avg_w(qm.allocation, layers), 4),
                       "size_bytes": qm.allocation["cost"].get("size"),
                       "w_bits": [e["w_bits"] for e in qm.allocation["layers"]],
                       "quantize_seconds": qm.timings, "export_seconds": export_s, "ort_eval_seconds": eval_s,
                       "wall_seconds": round(time.perf_counter() - t0, 1), "notes": qm.notes}
                rows.append(row)
                write_json(args.out, doc_out)  # a long run keeps what it has measured
                print(f"{part} {budget} {allocation} {PtqConfig.from_json(qm.ptq).describe()}: {top1:.4f} "
                      f"({row['wall_seconds']} s; {qm.timings})", flush=True)

        if "edge" in args.parts:
            base = stages.load_target("edge-cpu-ort")
            integer = base.choices()[0]
            for rule in rule_ptqs:
                target = base.with_scale_rule(rule)
                doc = every_layer_integer(model, target, plan.calibration, args.seed)
                run("edge", target, "every layer integer", f"w{integer[0]}/a{integer[1]}", doc)
            float_input = onnx.load(str(float_path)).graph.input[0].name
            for method in (CalibrationMethod.MinMax, CalibrationMethod.Entropy, CalibrationMethod.Percentile):
                for reduce_range in (False, True):
                    path = tmp / "ort.onnx"
                    t0 = time.perf_counter()
                    quantize_static(str(float_path), str(path), _Reader(plan.calibration.x.numpy(), float_input),
                                    quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                    calibrate_method=method)
                    seconds = round(time.perf_counter() - t0, 1)
                    top1, eval_s = ort_top1(path, x_eval, y_eval)
                    ort_rows.append({"calibrate_method": method.name, "reduce_range": reduce_range,
                                     "top1_onnxruntime": top1, "quantize_seconds": seconds,
                                     "ort_eval_seconds": eval_s})
                    write_json(args.out, doc_out)
                    print(f"ORT quantize_static {method.name} reduce_range={reduce_range}: {top1:.4f} "
                          f"({seconds} s)", flush=True)

        if "mcu" in args.parts:
            base = stages.load_target("mcu-int")
            for rule in rule_ptqs:
                target = base.with_scale_rule(rule)
                t0 = time.perf_counter()
                table = stages.profile(model, target, plan.calibration, "mse", seed=args.seed)
                profiles[f"mcu-int / {rule}"] = {"method": "mse", "seconds": round(time.perf_counter() - t0, 1)}
                allocations = [("mse proxy", f"{b}bit", stages.allocation_document(table, target, [f"{b}bit"]))
                               for b in args.mcu_budgets.split(",")]
                if not args.no_mcu_uniform:
                    allocations.append(("uniform", "4.0bit", set_bits(allocations[0][2], layers, target,
                                                                      lambda layer: (4, 8))))
                for allocation, budget, doc in allocations:
                    run("mcu", target, allocation, budget, doc)

    doc_out["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_json(args.out, doc_out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
