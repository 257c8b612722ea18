"""Per-layer latency of an exported model as ONNX Runtime runs it: its own profiler, in the real graph.

Each layer's time is that of the kernel ORT runs for it (QLinearConv after fusion, or the float
Conv) inside the whole exported graph, so layout changes, fusions and the integer/float context
are the ones the deployed file gets. ORT names a node it rewrites after the node it replaced
(``/conv1/Conv`` becomes ``/conv1/Conv_token_3`` in the channels-last pass) or after the tensor
it writes (a float conv in NCHWc layout, fused with its ReLU, is ``/Relu_output_0_nchwc``),
which maps kernel times back to the file's nodes (`aliases`). One intra-op thread, batch 1; the whole-graph time is measured
apart, without the profiler, as the calling thread's CPU time.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

_SUFFIX = re.compile(r"(_token_\d+|_nchwc)+$")
_FUSED_ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid"}


def _options(profile_dir: str | None = None) -> onnxruntime.SessionOptions:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.log_severity_level = 3
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(profile_dir) / "ort")
    return options


def graph_ms(model: onnx.ModelProto, example: np.ndarray, runs: int, warmup: int) -> float:
    """Median calling-thread CPU time of one run of the whole graph, in ms."""
    sess = onnxruntime.InferenceSession(model.SerializeToString(), _options(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(warmup):
        sess.run(None, {name: example})
    times = []
    for _ in range(runs):
        start = time.thread_time()
        sess.run(None, {name: example})
        times.append(time.thread_time() - start)
    return 1e3 * statistics.median(times)


def aliases(model: onnx.ModelProto, nodes: set[str]) -> dict[str, str]:
    """The names ORT may give each of ``nodes`` after its rewrites -> the node: its own name, its
    output tensor's, and that of an activation it fuses with."""
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    out = {}
    for n in model.graph.node:
        if n.name not in nodes:
            continue
        out[n.name] = out[n.output[0]] = n.name
        after = readers.get(n.output[0], [])
        if len(after) == 1 and after[0].op_type in _FUSED_ACTIVATIONS:
            out[after[0].output[0]] = n.name
    return out


def node_ms(model: onnx.ModelProto, nodes: set[str], example: np.ndarray, runs: int, warmup: int
            ) -> tuple[dict[str, float], float]:
    """Median kernel time in ms of each of ``nodes`` (names of the file's nodes) over ``runs`` profiled
    runs, and the sum of the median times of every kernel ORT ran (theirs and the rest of the graph's).

    The profiler adds a roughly fixed cost to every kernel it times, which is a large share of a
    small kernel's time (EfficientNet-Lite0's depthwise convolutions): its kernel times add up to
    about 1.4 times the unprofiled run. Callers scale them to the unprofiled time (`graph_ms`)."""
    names = aliases(model, nodes)
    with tempfile.TemporaryDirectory() as tmp:
        sess = onnxruntime.InferenceSession(model.SerializeToString(), _options(tmp), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for _ in range(warmup + runs):
            sess.run(None, {name: example})
        events = json.loads(Path(sess.end_profiling()).read_text())
    durations: dict[str, list[float]] = {}
    every: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        ort_name = e["name"][: -len("_kernel_time")]
        every.setdefault(ort_name, []).append(e["dur"] / 1e3)  # us -> ms
        node = names.get(_SUFFIX.sub("", ort_name))
        if node is not None:
            durations.setdefault(node, []).append(e["dur"] / 1e3)
    total = sum(statistics.median(d[-runs:]) for d in every.values())
    return {n: statistics.median(d[-runs:]) for n, d in durations.items()}, total
