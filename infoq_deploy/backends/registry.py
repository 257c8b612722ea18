"""Back ends by name: the programs that consume an exported file and run it.

A back end is one module of this package with

    def session(model: onnx.ModelProto) -> Callable[[np.ndarray], np.ndarray]

(one batch in, the graph's first output out), and optionally ``unavailable() -> str | None``
(why it cannot run here: a consumer that is an optional extra) and
``unsupported(model) -> list[(node, op, why)]`` (what it cannot take, read from the graph
without running it: the pipeline asks before profiling, verify/preflight.py). Adding one is that module plus one line in
``BACKENDS``; an export format names the back end that runs its files (export/registry.py).
"""

from __future__ import annotations

from infoq_deploy.core.registry import Entry, by_name, load

BACKENDS = by_name(
    Entry("qonnx", "infoq_deploy.backends.qonnx_exec", "qonnx's reference executor, after qonnx cleanup"),
    Entry("qonnx-ort", "infoq_deploy.backends.qonnx_ort", "QONNX in one ONNX Runtime session, each Quant as the standard ops qonnx computes it with"),
    Entry("ort", "infoq_deploy.backends.ort", "ONNX Runtime on the CPU, default graph optimizations"),
    Entry("hls4ml", "infoq_deploy.backends.hls4ml_csim", "hls4ml 1.3's C simulation (g++) of its documented QONNX flow"),
    Entry("finn", "infoq_deploy.backends.finn_exec", "FINN (finn-plus 1.6): QONNX front end, streamlining, hardware layers, FINN's execution"),
)


# runners verify picks for a format (its FAST_BACKEND), not flows a user names with --backend
INTERNAL = ("qonnx-ort",)


def names() -> list[str]:
    return list(BACKENDS)


def flow_names() -> list[str]:
    """The back ends `--backend` offers."""
    return [n for n in BACKENDS if n not in INTERNAL]


def get(name: str):
    """The module of back end ``name``."""
    return load(BACKENDS, name, "back end")
