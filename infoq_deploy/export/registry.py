"""Export formats by name: what `export --format` and a target's ``export`` key accept.

A format is one module of this package with

    BACKEND: str                      # the back end (backends/registry.py) that runs its files in `verify`
    FAST_BACKEND: str | None          # optional: one computing the same faster; `verify` runs all inputs
                                      # there and a sample on BACKEND (verify/check.py, REFERENCE_SAMPLE)
    CONSUMERS: tuple[str, ...]        # back ends of the flows that take its files (`verify --backend`)
    PIPELINE_CONSUMERS: tuple[str, ...]  # those of them `verify` runs unasked (the pipeline's verify)
    QUANT_OP: str                     # the ONNX node that ends a quantizer in its graphs
    def check(qmodel) -> None         # UserError when the model cannot be written in this format
    def write(qmodel, example, path)  # the file at path (the writer makes the write atomic)
    def quant_bits(graph, qnode) -> int | str  # bits of one quantizer, or what is wrong

Adding a format is that module plus one line in ``FORMATS``.
"""

from __future__ import annotations

from infoq_deploy.core.registry import Entry, by_name, load

FORMATS = by_name(
    Entry("qonnx", "infoq_deploy.export.to_qonnx", "QONNX Quant nodes of any width (FINN, hls4ml)"),
    Entry("qcdq", "infoq_deploy.export.to_qcdq", "QuantizeLinear/Clip/DequantizeLinear, at most 8 bits (ONNX Runtime)"),
)


def names() -> list[str]:
    return list(FORMATS)


def get(name: str):
    """The module of format ``name``."""
    return load(FORMATS, name, "export format")
