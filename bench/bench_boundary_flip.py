"""Where an exported file and its Brevitas model part, input by input (issue #14): the
torchvision matrix's random-weight EfficientNet-B0 on fpga-int with `--backend qonnx`, which
failed verification on a top-1 flip while every layer carried its bits.

Runs that matrix cell (`bench_torchvision_matrix.py`: same weights, same command) keeping its
run folder, then on its 16 verification inputs records:
- per input, the file (run whole in ONNX Runtime as verify runs it, `backends/qonnx_ort.py`)
  against the Brevitas model: mean and max |logit difference|, top-1 agreement, and the
  reference's top-2 margin; the same for the Brevitas model run in float64 (what verify's
  ``rounding_noise`` and ``rounding_max`` measure);
- for each input the file moves: the first tensor of the file, in graph order, that differs
  from the Brevitas model's (tensors are paired by value on an input where both agree bit for
  bit), how many of its elements and spatial positions differ, and at the Quant node feeding
  the compute node that made it, the pre-rounding values (input / scale) nearest a rounding
  boundary (a half-integer: round half to even sends x.5 one way, x.5 minus an ulp the other);
- the run's own verification (verify.json).

Reproduce: .venv/bin/python bench/bench_boundary_flip.py
(writes bench/results/boundary_flip_efficientnet_b0.json; --run-dir analyses an existing run
folder of that cell instead of running it, and says so in the file)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import helper

from bench_torchvision_matrix import cell, weights  # bench/ is on sys.path when run as a script
from machine import machine_info

from infoq_deploy import __version__
from infoq_deploy.backends.qonnx_ort import quant_as_standard_ops
from infoq_deploy.core.atomic import write_json
from infoq_deploy.data.plan import plan_datasets
from infoq_deploy.quantize.file import load_quantized
from infoq_deploy.stages import verification_subset
from infoq_deploy.verify.check import _run_brevitas

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "boundary_flip_efficientnet_b0.json"
ARCH, COLUMN = "efficientnet_b0", "fpga-int+qonnx"
_COMPUTE = ("Conv", "Gemm", "MatMul")


def file_tensors(model: onnx.ModelProto, x: torch.Tensor) -> tuple[onnx.ModelProto, list[str], dict[str, np.ndarray]]:
    """Every tensor of the file as verify's runner computes it (Quant as standard ops, ORT
    optimizations off), one input at a time (the fpga-int graph has batch 1)."""
    rw = quant_as_standard_ops(copy.deepcopy(model))
    order = [o for n in rw.graph.node for o in n.output]
    have = {o.name for o in rw.graph.output}
    rw.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in order if t not in have)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = onnxruntime.InferenceSession(rw.SerializeToString(), options, providers=["CPUExecutionProvider"])
    runs = [sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1].numpy()}) for i in range(len(x))]
    return rw, order, {o.name: np.concatenate([r[k] for r in runs]) for k, o in enumerate(sess.get_outputs())}


def model_tensors(qmodel, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Every tensor of the Brevitas model's torch.fx graph (a QuantTensor's value)."""
    found = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            r = super().run_node(n)
            v = getattr(r, "value", r)
            if isinstance(v, torch.Tensor):
                found[n.name] = v.detach().numpy().copy()
            return r

    qmodel.eval()
    with torch.no_grad():
        Recorder(qmodel).run(x)
    return found


def pair_by_value(order, vals, fx, good: int, n: int) -> dict[str, str]:
    """file tensor -> model tensor holding the same values on input ``good`` (not all zero)."""
    by_size: dict[int, list[str]] = {}
    for k, v in fx.items():
        by_size.setdefault(v[0].size, []).append(k)
    pairs = {}
    for t in order:
        v = vals[t]
        if v.ndim == 0 or v.shape[0] != n or not np.abs(v[good]).sum():
            continue
        hit = next((k for k in by_size.get(v[good].size, [])
                    if np.array_equal(fx[k][good].reshape(-1), v[good].reshape(-1))), None)
        if hit is not None:
            pairs[t] = hit
    return pairs


def boundary_values(rw: onnx.ModelProto, vals, tensor: str, i: int) -> dict | None:
    """At the Quant node feeding the compute node behind ``tensor``: the pre-rounding values of
    input ``i`` nearest a half-integer."""
    producer = {o: n for n in rw.graph.node for o in n.output}
    node = producer.get(tensor)
    while node is not None and node.op_type not in _COMPUTE:
        node = producer.get(node.input[0])
    if node is None:
        return None
    quant = producer.get(node.input[0])
    if quant is None or not quant.name.endswith("__scale"):
        return {"compute_node": node.name, "quant": None}
    base = quant.name[: -len("__scale")]
    pre = vals[f"{base}__zp"][i].astype(np.float64)  # input / scale + zero point: what is rounded
    distance = np.abs(pre - np.floor(pre) - 0.5).reshape(-1)
    nearest = np.argsort(distance)[:5]
    div = next(n for n in rw.graph.node if n.name == f"{base}__div")
    src = producer.get(div.input[0])  # what the quantizer quantizes
    return {"compute_node": node.name, "quant": base,
            "quant_input": None if src is None else {
                "op": src.op_type, "from": [producer[t].op_type for t in src.input if t in producer]},
            "nearest_to_a_half_integer": [float(v) for v in pre.reshape(-1)[nearest]],
            "rounded_to": [float(v) for v in vals[f"{base}__round"][i].reshape(-1)[nearest]],
            "elements": int(pre.size)}


def analyse(run_dir: Path, data: Path) -> dict:
    qm = load_quantized(run_dir / "quantized.pt")
    plan = plan_datasets(qm.model.preprocess, data=str(data / "imagenet" / "sample1000"),
                         eval_data=str(data / "imagenet" / "val1300"), calib_size=16, eval_size=16)
    x = verification_subset(plan.evaluation, 16, 0).x.float()
    ref = _run_brevitas(qm.qmodel, x, len(x))
    wide = _run_brevitas(copy.deepcopy(qm.qmodel).double(), x.double(), len(x))
    rw, order, vals = file_tensors(onnx.load(str(run_dir / "model.onnx")), x)
    out = vals[rw.graph.output[0].name].reshape(ref.shape)
    top2 = np.sort(ref, axis=1)[:, -2:]
    per_input = []
    for i in range(len(x)):
        d, w = np.abs(out[i] - ref[i].astype(np.float64)), np.abs(wide[i] - ref[i].astype(np.float64))
        per_input.append({"input": i, "top2_margin": float(top2[i, 1] - top2[i, 0]),
                          "file_mean_abs_diff": float(d.mean()), "file_max_abs_diff": float(d.max()),
                          "file_top1_agrees": bool(out[i].argmax() == ref[i].argmax()),
                          "float64_mean_abs_diff": float(w.mean()), "float64_max_abs_diff": float(w.max()),
                          "float64_top1_agrees": bool(wide[i].argmax() == ref[i].argmax())})
    moved = [r["input"] for r in per_input if r["file_max_abs_diff"] > 0]
    same = [r["input"] for r in per_input if r["file_max_abs_diff"] == 0]
    origins = []
    if moved and same:
        fx = model_tensors(qm.qmodel, x)
        pairs = pair_by_value(order, vals, fx, same[0], len(x))
        for i in moved:
            first = next((t for t in order if t in pairs and not np.array_equal(
                vals[t][i].reshape(-1), fx[pairs[t]][i].reshape(-1))), None)
            if first is None:
                origins.append({"input": i, "first_differing_tensor": None})
                continue
            a, b = vals[first][i], fx[pairs[first]][i].reshape(vals[first][i].shape)
            where = np.argwhere(a != b)
            origins.append({"input": i, "first_differing_tensor": first, "model_node": pairs[first],
                            "shape": list(a.shape), "elements_differing": int(len(where)),
                            "spatial_positions_differing": int(len({tuple(p[1:]) for p in where})) if a.ndim == 3 else None,
                            "max_abs_diff": float(np.abs(a - b).max()),
                            "at_the_quantizer_before_it": boundary_values(rw, vals, first, i)})
        paired = len(pairs)
    else:
        paired = 0
    verify = json.loads((run_dir / "verify.json").read_text())["result"]
    return {"per_input": per_input, "inputs_moved_by_the_file": moved,
            "inputs_moved_by_float64": [r["input"] for r in per_input if r["float64_max_abs_diff"] > 0],
            "file_tensors": len(order), "file_tensors_paired_with_the_model": paired, "origins": origins,
            "verify": {k: verify.get(k) for k in ("ok", "agreement", "agreement_all", "top1_judged_on", "ties",
                                                   "mean_abs_diff", "max_abs_diff", "tolerance", "quant_error",
                                                   "rounding_noise", "rounding_max", "mismatches")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--run-dir", help="analyse this run folder of the cell instead of running it")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    data = Path(args.data_root)
    doc = {"benchmark": "an exported file against its Brevitas model, input by input: random-weight "
                        "EfficientNet-B0, fpga-int --backend qonnx (issue #14)",
           "command": "python bench/bench_boundary_flip.py" + "".join(f" {a}" for a in sys.argv[1:])}
    if args.run_dir:
        doc.update(analyse(Path(args.run_dir), data))
    else:
        with tempfile.TemporaryDirectory() as name:
            tmp = Path(name)
            env = dict(os.environ, INFOQ_DEPLOY_CACHE=str(tmp / "cache"))
            wfile = weights(ARCH, data / "imagenet" / "sample1000", tmp)
            doc["cell"] = cell(ARCH, COLUMN, wfile, data, tmp, env, f"{ARCH}-bn32.pt")
            doc.update(analyse(tmp / f"{ARCH}-{COLUMN}", data))
    doc.update(tool_version=__version__, date=time.strftime("%Y-%m-%dT%H:%M:%S%z"), machine=machine_info())
    write_json(Path(args.out), doc)
    print(json.dumps({k: doc[k] for k in ("inputs_moved_by_the_file", "inputs_moved_by_float64", "origins", "verify")},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
