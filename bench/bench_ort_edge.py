"""The edge-cpu-ort export in ONNX Runtime: accuracy, integer-kernel fusion, latency (predicted by the
target's table and measured), with ORT's own `quantize_static` models beside ours.

For each model (EfficientNet-Lite0 on ImageNet: 500 calibration images from `sample1000`, the
1,300 `val1300` images for evaluation; CIFAR-10 ResNet-20: 500 calibration images from the
training archive, 1,000 test images):
- the float model, exported to ONNX by torch;
- ours at several allocations of the target (every layer integer w7/a8; every layer float;
  the first half of the layers integer; every other layer integer; the allocator's choice under
  a latency budget halfway between all-integer and all-float, scored by the weight-error proxy
  and costed with the table measured in this run), quantized with Brevitas
  on the calibration images and exported to QCDQ; and every layer at w8/a8, the allocation
  the target no longer allows, to show why (ORT's u8s8 kernels saturate on this CPU);
- ORT's `quantize_static` (QDQ, per-channel int8 weights, uint8 activations, MinMax
  calibration on the same images), with and without `reduce_range`.
Each file runs in onnxruntime (CPU, default optimizations): top-1 accuracy on the evaluation
images, top-1 agreement and mean |logit diff| against the Brevitas model it was exported from
(ours), which nodes ORT leaves in float (backends/ort_fusion.py), and latency: batch 1, one
intra-op thread, median calling-thread CPU time over rounds in which every file runs a block of
consecutive runs after a short warm-up (weights stay in cache, as in deployment; a slow spell of
the shared machine hits all files alike). Two predictions,
each the allocator's latency metric (`allocate/costs.py`): from the target's generic per-kind
table (layers only), and from the table measured on this model in the same run
(`infoq-deploy targets measure`: each layer's kernel time in ORT, all-integer and all-float
builds, plus the rest of the graph, and the integer layers ORT runs in float where a float layer
reads them, timed in every-other-layer builds). Both count those boundary layers; each row lists
the ones the layer table predicts (`predicted_unfused`) beside the ones ORT ran in float.

Reproduce: .venv/bin/python bench/bench_ort_edge.py [--models lite0,resnet20]
           (writes bench/results/ort_edge.json; about 25 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from machine import machine_info  # bench/machine.py (the script's folder is on sys.path)
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from infoq_deploy import __version__, stages
from infoq_deploy.allocate.costs import model_cost, unfused
from infoq_deploy.measure_target import measure, write_target
from infoq_deploy.backends.ort_fusion import fusion
from infoq_deploy.core.atomic import write_json
from infoq_deploy.core.targets import load_target
from infoq_deploy.data.load import load_data
from infoq_deploy.export.writer import export_model
from infoq_deploy.importing.deployable import deployable
from infoq_deploy.importing.sources import load_model
from infoq_deploy.quantize.brevitas_model import build_quant_model, calibrate
from infoq_deploy.verify.check import ort_fusion

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
MODELS = {
    "lite0": ("zoo:efficientnet-lite0", DATA / "imagenet" / "sample1000", DATA / "imagenet" / "val1300", None),
    "resnet20": ("zoo:cifar10-resnet20", DATA / "cifar10" / "train.tar.gz", DATA / "cifar10" / "test", 1000),
}
CALIB = 500
FLOAT = (32, 32)


def session(path, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return s, s.get_inputs()[0].name


def logits(path, x: np.ndarray) -> np.ndarray:
    s, name = session(path, threads=2)
    return np.concatenate([s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def brevitas_logits(qmodel, x: torch.Tensor, batch: int = 50) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([qmodel(x[i:i + batch]).numpy() for i in range(0, len(x), batch)])


def latencies(paths: dict[str, Path], example: np.ndarray, rounds: int, block: int = 10, warmup: int = 3) -> dict[str, dict]:
    """Per file: ``rounds`` blocks of ``warmup`` + ``block`` consecutive runs, the files taking turns
    block by block. Consecutive runs keep the file's weights in cache, as a deployed model that
    runs again and again has them; taking turns spreads a slow spell of the shared machine over all."""
    sessions = {k: session(p, threads=1) for k, p in paths.items()}
    cpu = {k: [] for k in paths}
    wall = {k: [] for k in paths}
    for _ in range(rounds):
        for k, (s, name) in sessions.items():
            for _ in range(warmup):
                s.run(None, {name: example})
            for _ in range(block):
                t0, c0 = time.perf_counter(), time.thread_time()
                s.run(None, {name: example})
                cpu[k].append(time.thread_time() - c0)
                wall[k].append(time.perf_counter() - t0)
    return {k: {"median_cpu_ms": 1e3 * float(np.median(cpu[k])), "median_wall_ms": 1e3 * float(np.median(wall[k])),
                "runs": len(cpu[k])} for k in paths}


class _Reader(CalibrationDataReader):
    def __init__(self, x: np.ndarray, name: str):
        self.items = iter([{name: x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.items, None)


def allocations(layers) -> dict[str, dict[str, tuple[int, int]]]:
    integer = load_target("edge-cpu-ort").choices()[0]
    half = len(layers) // 2
    return {
        "all integer": {l.name: integer for l in layers},
        "first half integer": {l.name: integer if l.order < half else FLOAT for l in layers},
        "every other integer": {l.name: integer if l.order % 2 == 0 else FLOAT for l in layers},
        "all float": {l.name: FLOAT for l in layers},
    }


def w8_target(tmp: Path):
    """edge-cpu-ort with the 8-bit weights it had before (not allowed any more: see the target file)."""
    src = (HERE.parent / "targets" / "edge-cpu-ort.toml").read_text()
    text = src.replace("pairs = [[7, 8], [32, 32]]", "pairs = [[8, 8], [32, 32]]").replace(
        "bits = [7, 32]", "bits = [8, 32]", 1)
    text = text[: text.index("[latency]")].replace('metrics = ["size", "latency"]', 'metrics = ["size"]')
    path = tmp / "edge-cpu-ort-w8.toml"
    path.write_text(text)
    return load_target(str(path))


def run_model(key: str, rounds: int, tmp: Path) -> dict:
    spec, calib_src, eval_src, eval_n = MODELS[key]
    started = time.perf_counter()
    imported = load_model(spec, data_root=DATA)
    model = deployable(imported)
    calib = load_data(str(calib_src), model.preprocess, limit=CALIB, seed=0)
    evaluation = load_data(str(eval_src), model.preprocess, limit=eval_n, seed=0)
    x_eval, y_eval = evaluation.x.numpy(), evaluation.y.numpy()
    target = load_target("edge-cpu-ort")
    example = calib.x[:1]

    files, rows = {}, {}
    float_path = tmp / f"{key}_float.onnx"
    torch.onnx.export(model.graph.eval(), example, str(float_path), dynamo=False, opset_version=13)
    files["float (torch.onnx)"] = float_path

    def ours(label, bits, tgt):
        qmodel = build_quant_model(model.graph, model.layers, bits, tgt.quant_spec(), pool_inputs=True)
        calibrate(qmodel, calib.x)
        path = tmp / f"{key}_{label.replace(' ', '_')}.onnx"
        export_model(qmodel, example, "qcdq", path)
        files[f"ours: {label}"] = path
        ref = brevitas_logits(qmodel, evaluation.x)
        onnx_model = onnx.load(str(path))
        ort_float, ort_ops = ort_fusion(onnx_model, "qcdq", qmodel, bits)
        rows[f"ours: {label}"] = {
            "integer_layers": sum(all(b < 32 for b in v) for v in bits.values()), "layers": len(bits),
            "ort_integer_ops": ort_ops,
            "ort_float": ort_float,
            # the integer layers the layer table says ORT runs in float (no quantizer reads their output)
            "predicted_unfused": sorted(unfused(model.layers, [bits[l.name] for l in model.layers])),
            "predicted_ms": model_cost("latency", model.layers, bits, target) if tgt is target else None,
            "_ref": ref,
        }

    # the per-model table (`infoq-deploy targets measure`), measured before the files are timed
    t0 = time.perf_counter()
    toml, _ = write_target(target, measure(target, imported, calib.x[:64]), tmp / f"{key}-edge.toml")
    measured_target = load_target(str(toml))
    measure_seconds = round(time.perf_counter() - t0, 1)

    for label, bits in allocations(model.layers).items():
        ours(label, bits, target)
        rows[f"ours: {label}"]["predicted_ms_model_table"] = model_cost("latency", model.layers, bits, measured_target)
    # what a user's latency budget gets: the allocator's choice (weight-error proxy scores) under
    # a budget halfway between all-integer and all-float, costed with this model's own table
    ends = [model_cost("latency", model.layers, {l.name: p for l in model.layers}, measured_target)
            for p in (load_target("edge-cpu-ort").choices()[0], FLOAT)]
    budget_ms = round(sum(ends) / 2, 3)
    table = stages.profile(imported, measured_target, calib, "mse")
    doc = stages.allocation_document(table, measured_target, [f"{budget_ms}ms"])
    chosen = {d["name"]: (d["w_bits"], d["a_bits"]) for d in doc["layers"]}
    label = f"allocator under {budget_ms} ms (this model's table)"
    ours(label, chosen, target)
    rows[f"ours: {label}"].update(budget_ms=budget_ms, allocation=doc["layers"],
                                  predicted_ms_model_table=model_cost("latency", model.layers, chosen, measured_target))
    ours("all w8/a8 (not allowed: saturates)", {l.name: (8, 8) for l in model.layers}, w8_target(tmp))

    float_input = onnx.load(str(float_path)).graph.input[0].name
    for reduce_range in (False, True):
        path = tmp / f"{key}_ort_static_rr{int(reduce_range)}.onnx"
        t0 = time.perf_counter()
        quantize_static(str(float_path), str(path), _Reader(calib.x.numpy(), float_input), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
        label = f"ORT quantize_static{' reduce_range' if reduce_range else ''}"
        files[label] = path
        rows[label] = {"quantize_seconds": round(time.perf_counter() - t0, 1),
                       "ort_integer_ops": fusion(onnx.load(str(path)), []).integer_ops}

    for label, path in files.items():
        out = logits(path, x_eval)
        row = rows.setdefault(label, {})
        row["top1"] = float((out.argmax(1) == y_eval).mean())
        ref = row.pop("_ref", None)
        if ref is not None:
            row["brevitas_top1"] = float((ref.argmax(1) == y_eval).mean())
            row["top1_agreement_with_brevitas"] = float((out.argmax(1) == ref.argmax(1)).mean())
            row["mean_abs_logit_diff_vs_brevitas"] = float(np.abs(out - ref).mean())
    for label, lat in latencies(files, example.numpy(), rounds).items():
        rows[label].update(lat)
    base = rows["float (torch.onnx)"]["median_cpu_ms"]
    for row in rows.values():
        row["speedup_vs_float"] = base / row["median_cpu_ms"]
        if row.get("predicted_ms"):
            row["measured_over_predicted"] = row["median_cpu_ms"] / row["predicted_ms"]
        if row.get("predicted_ms_model_table"):
            row["measured_over_predicted_model_table"] = row["median_cpu_ms"] / row["predicted_ms_model_table"]
    return {"spec": spec, "calibration": f"{calib.source}, {len(calib.x)} images", "evaluation": f"{evaluation.source}, {len(x_eval)} images",
            "measure_seconds": measure_seconds, "seconds": round(time.perf_counter() - started, 1), "files": rows}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--out", default=str(HERE / "results" / "ort_edge.json"))
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models.split(","):
            results[key] = run_model(key, args.rounds, Path(tmp))
            print(key, {k: {m: v.get(m) for m in ("top1", "median_cpu_ms", "top1_agreement_with_brevitas", "ort_float")}
                        for k, v in results[key]["files"].items()}, flush=True)
    write_json(args.out, {
        "what": "edge-cpu-ort QCDQ exports in onnxruntime: accuracy, fusion, latency predicted vs measured; ORT's quantize_static beside",
        "command": "bench/bench_ort_edge.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "tool_version": __version__, "onnxruntime": ort.__version__, "machine": machine_info(), "results": results,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
