"""Measure the edge-cpu-ort latency table: ns per MAC and per-layer overhead, per layer kind and precision.

Builds ONNX graphs of float Conv / depthwise Conv / Gemm layers and their QDQ int8
versions (uint8 activations, per-channel 7-bit weights in int8, int32 bias: what a QCDQ
export for the target writes and ONNX Runtime fuses into QLinearConv / QGemm; the target
file says why 7 bits), each as a chain of 1 and of
DEPTH identical-shaped layers. The per-layer time is (t_DEPTH - t_1) / (DEPTH - 1): it
excludes the session-call overhead and the layout transposes ORT puts at the edges of
a chain, as inside a real model. Each graph runs on one intra-op thread, batch 1;
the time of a run is the calling thread's CPU time (ORT computes on the calling
thread with one intra-op thread, so this equals wall time on an idle machine but is
not inflated when other processes share the cores); median over repeats. Finally
latency_ns = macs * ns_per_mac + overhead_ns is fitted per (kind, bits) by
non-negative least squares on relative error, so small and large layers weigh alike.
Precision boundaries (a float layer next to an int8 one) are not modelled.

    .venv/bin/python bench/measure_ort_latency.py [--out targets/edge-cpu-ort.latency.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from scipy.optimize import nnls

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from infoq_deploy.core.atomic import write_json  # noqa: E402
from infoq_deploy.core.targets import LATENCY_FORMAT  # noqa: E402

DEPTH = 4
INT_W_BITS, INT_A_BITS = 7, 8  # the target's integer layer (targets/edge-cpu-ort.toml)
ACT_SCALE = 0.05  # one activation scale everywhere, so each Q and the next DQ agree as in an export
# conv: (C, H=W, k), C_in = C_out so layers chain; ResNet / MobileNet-like shapes, ~1e4..1e8 MACs
CONV = [(16, 8, 1), (16, 32, 3), (32, 32, 3), (64, 16, 3), (64, 32, 3), (64, 56, 1), (128, 8, 3),
        (128, 16, 3), (256, 8, 3), (256, 14, 1), (512, 7, 3), (32, 56, 3)]
# dwconv: (C, H=W), 3x3
DWCONV = [(16, 16), (32, 112), (96, 56), (144, 56), (192, 28), (384, 14), (576, 14), (960, 7), (32, 32), (64, 8)]
# linear: (features,) square so layers chain
GEMM = [(64,), (128,), (256,), (512,), (1024,), (1536,), (2048,)]


def layer(kind, dims, int8, src, dst, tag, rng):
    """Nodes and initializers of one layer reading tensor ``src`` and writing ``dst``."""
    if kind == "linear":
        (f,) = dims
        w, attrs, op = rng.standard_normal((f, f)).astype(np.float32) * 0.05, dict(transB=1), "Gemm"
    else:
        c, _, k = dims if kind == "conv" else (dims[0], dims[1], 3)
        groups = c if kind == "dwconv" else 1
        w = rng.standard_normal((c, c // groups, k, k)).astype(np.float32) * 0.1
        attrs, op = dict(kernel_shape=[k, k], pads=[k // 2] * 4, group=groups), "Conv"
    b = rng.standard_normal(w.shape[0]).astype(np.float32) * 0.1
    if not int8:
        inits = [numpy_helper.from_array(w, f"{tag}w"), numpy_helper.from_array(b, f"{tag}b")]
        return [helper.make_node(op, [src, f"{tag}w", f"{tag}b"], [dst], **attrs)], inits
    levels = 2 ** (INT_W_BITS - 1) - 1
    w_scale = (np.abs(w).reshape(w.shape[0], -1).max(axis=1) / levels).astype(np.float32)
    wq = np.clip(np.round(w / w_scale.reshape(-1, *[1] * (w.ndim - 1))), -levels, levels).astype(np.int8)
    b_scale = (np.float32(ACT_SCALE) * w_scale).astype(np.float32)
    arrays = {
        "wq": wq, "ws": w_scale, "wz": np.zeros(w_scale.shape, np.int8),
        "bq": np.round(b / b_scale).astype(np.int32), "bs": b_scale, "bz": np.zeros(b_scale.shape, np.int32),
        "as": np.array(ACT_SCALE, np.float32), "az": np.array(0, np.uint8),
    }
    inits = [numpy_helper.from_array(v, f"{tag}{k}") for k, v in arrays.items()]
    t = lambda k: f"{tag}{k}"  # noqa: E731
    nodes = [
        helper.make_node("DequantizeLinear", [src, t("as"), t("az")], [t("xf")]),
        helper.make_node("DequantizeLinear", [t("wq"), t("ws"), t("wz")], [t("wf")], axis=0),
        helper.make_node("DequantizeLinear", [t("bq"), t("bs"), t("bz")], [t("bf")], axis=0),
        helper.make_node(op, [t("xf"), t("wf"), t("bf")], [t("yf")], **attrs),
        helper.make_node("QuantizeLinear", [t("yf"), t("as"), t("az")], [dst]),
    ]
    return nodes, inits


def chain(kind, dims, int8, depth, rng):
    nodes, inits = [], []
    for i in range(depth):
        n, w = layer(kind, dims, int8, f"t{i}", f"t{i + 1}", f"l{i}_", rng)
        nodes += n
        inits += w
    shape = act_shape(kind, dims)
    elem = TensorProto.UINT8 if int8 else TensorProto.FLOAT
    graph = helper.make_graph(nodes, f"{kind}_chain", [helper.make_tensor_value_info("t0", elem, shape)],
                              [helper.make_tensor_value_info(f"t{depth}", elem, shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def act_shape(kind, dims):
    if kind == "linear":
        return (1, dims[0])
    return (1, dims[0], dims[1], dims[1])


def macs_of(kind, dims):
    if kind == "linear":
        return dims[0] * dims[0]
    if kind == "dwconv":
        return dims[0] * dims[1] ** 2 * 9
    c, h, k = dims
    return c * h * h * c * k * k


def time_model(model, shape, int8, min_seconds, rng):
    """Median thread-CPU and wall ns of one run, and the op types ORT runs after fusion."""
    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # the "optimized model is hardware specific" warning is expected
        so.optimized_model_filepath = os.path.join(d, "opt.onnx")
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        ops = sorted({n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node})
    x = rng.integers(0, 256, shape, dtype=np.uint8) if int8 else rng.standard_normal(shape).astype(np.float32)
    feed = {"t0": x}
    for _ in range(10):
        sess.run(None, feed)
    cpu, wall, start = [], [], time.perf_counter()
    while len(cpu) < 30 or (time.perf_counter() - start < min_seconds and len(cpu) < 3000):
        w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        sess.run(None, feed)
        cpu.append(time.thread_time_ns() - c0)
        wall.append(time.perf_counter_ns() - w0)
    return statistics.median(cpu), statistics.median(wall), len(cpu), ops


def fit(points):
    """NNLS of t = macs * a + b, each row divided by t: least squares on relative error."""
    macs = np.array([p["macs"] for p in points], float)
    t = np.array([p["per_layer_ns"] for p in points], float)
    A = np.stack([macs, np.ones_like(macs)], axis=1) / t[:, None]
    col = A.max(axis=0)  # column scaling keeps NNLS well conditioned (macs ~1e8 vs 1)
    coef, _ = nnls(A / col, np.ones_like(t))
    a, b = coef / col
    pred = macs * a + b
    return {"ns_per_mac": float(a), "overhead_ns": float(b),
            "max_rel_error": float(np.max(np.abs(pred - t) / t)),
            "median_rel_error": float(np.median(np.abs(pred - t) / t))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "targets" / "edge-cpu-ort.latency.json"))
    ap.add_argument("--min-seconds", type=float, default=0.3, help="timing time per graph")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    t_start = time.perf_counter()

    measurements = []
    for kind, shapes in (("conv", CONV), ("dwconv", DWCONV), ("linear", GEMM)):
        for dims in shapes:
            for (w_bits, a_bits), int8 in (((INT_W_BITS, INT_A_BITS), True), ((32, 32), False)):
                shape = act_shape(kind, dims)
                one = time_model(chain(kind, dims, int8, 1, rng), shape, int8, args.min_seconds, rng)
                deep = time_model(chain(kind, dims, int8, DEPTH, rng), shape, int8, args.min_seconds, rng)
                per_layer = (deep[0] - one[0]) / (DEPTH - 1)
                m = {"kind": kind, "w_bits": w_bits, "a_bits": a_bits, "dims": list(dims), "macs": macs_of(kind, dims),
                     "per_layer_ns": per_layer, "chain1_cpu_ns": one[0], f"chain{DEPTH}_cpu_ns": deep[0],
                     "chain1_wall_ns": one[1], f"chain{DEPTH}_wall_ns": deep[1], "repeats": [one[2], deep[2]],
                     "ort_ops": deep[3]}
                measurements.append(m)
                print(f"{kind:7s} w{w_bits:<2d} {str(dims):14s} macs={m['macs']:>11d} per layer {per_layer / 1e3:9.1f} us"
                      f"  (chain1 {one[0] / 1e3:.1f} us, wall/cpu {deep[1] / deep[0]:.2f})  {deep[3]}", flush=True)

    entries, fits = [], []
    for kind in ("conv", "dwconv", "linear"):
        for w_bits, a_bits in ((INT_W_BITS, INT_A_BITS), (32, 32)):
            pts = [m for m in measurements if m["kind"] == kind and m["w_bits"] == w_bits]
            f = fit(pts)
            entries.append({"kind": kind, "w_bits": w_bits, "a_bits": a_bits,
                            "ns_per_mac": f["ns_per_mac"], "overhead_ns": f["overhead_ns"]})
            fits.append({"kind": kind, "w_bits": w_bits, "a_bits": a_bits, "points": len(pts),
                         "max_rel_error": f["max_rel_error"], "median_rel_error": f["median_rel_error"]})
            print(f"fit {kind:7s} w{w_bits}/a{a_bits}: {f}")

    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    doc = {
        "format": LATENCY_FORMAT,
        "model": "latency_ns = macs * ns_per_mac + overhead_ns (batch 1, one intra-op thread)",
        "provenance": {
            "command": ".venv/bin/python bench/measure_ort_latency.py" + (f" --min-seconds {args.min_seconds}" if args.min_seconds != 0.3 else ""),
            "seconds": round(time.perf_counter() - t_start, 1),
            "load_average_1_5_15min_at_end": [round(v, 2) for v in os.getloadavg()],
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "onnxruntime": ort.__version__,
            "onnx": onnx.__version__,
            "machine": {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "method": f"per-layer time = (t(chain of {DEPTH}) - t(chain of 1)) / {DEPTH - 1}, t = median thread-CPU ns of "
                      ">=30 runs after 10 warm-up runs; int8 layers are DQ->op->Q with uint8 activations and per-channel "
                      f"{INT_W_BITS}-bit weights stored as int8, fused by ORT (see ort_ops); NNLS fit on relative error",
            "fit_quality": fits,
        },
        "entries": entries,
        "measurements": measurements,
    }
    write_json(args.out, doc)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
