"""`infoq-deploy targets measure TARGET MODEL`: a latency table measured on one model, as a new target file.

For every (w_bits, a_bits) the target allows, the model is built with every layer at that
choice, calibrated, exported in the target's format, and run in ONNX Runtime: each layer's
share of the run is read from ORT's profiler in that graph (backends/ort_latency.py) and
scaled to the unprofiled run's time, and the rest of the graph (pools, adds, layout changes,
the input quantizer) is the whole-graph time minus the layers'. The new target is the old one
with its [latency] table pointing at this file, so every stage after it (allocate, quantize,
the report) costs this model with its own numbers.
A uniform build cannot see a mixed allocation's boundaries: an integer layer whose output a
float layer reads has no output quantizer, and ORT runs it in float, dequantizing its weights on
every run. Two more builds, every other layer integer (even, then odd positions), measure that
time for each integer layer the layer table predicts unfused and ORT indeed runs in float: its
float kernel plus the DequantizeLinear nodes of its input, weights and bias and the
QuantizeLinear of its input (``unfused_layers``; costs.unfused_latency).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import tempfile
from pathlib import Path

import onnx
import onnxruntime
import torch

from infoq_deploy import __version__
from infoq_deploy.allocate.costs import integer, unfused
from infoq_deploy.backends.ort_latency import graph_ms, node_ms
from infoq_deploy.core.atomic import atomic_path, write_json
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.targets import LATENCY_FORMAT, Target
from infoq_deploy.export.graph import OnnxGraph
from infoq_deploy.export.writer import export_model
from infoq_deploy.importing.deployable import deployable
from infoq_deploy.importing.model import ImportedModel
from infoq_deploy.quantize.brevitas_model import build_quant_model, calibrate
from infoq_deploy.verify.check import match_layers, ort_fusion


def measure(target: Target, model: ImportedModel, calibration: torch.Tensor | None, *, runs: int = 30,
            warmup: int = 5, seed: int = 0) -> dict:
    """The latency document (format ``LATENCY_FORMAT``) of ``model`` on ``target``."""
    if target.latency is None or "latency" not in target.metrics:
        raise UserError(f"target {target.name} has no latency metric; measure a target that reports latency (edge-cpu-ort)")
    if target.export != "qcdq":
        raise UserError(f"target {target.name} exports {target.export}, which ONNX Runtime does not run as integer "
                        "kernels; measure a qcdq target (edge-cpu-ort)")
    deployed = deployable(model)
    if calibration is None:  # kernel times do not depend on the values; the scales only need a range
        calibration = torch.randn(16, *model.preprocess.input_shape, generator=torch.Generator().manual_seed(seed))
    example = calibration[:1]
    pool_inputs = target.activations.pool_inputs
    rows, rests, totals, profiled_totals = [], {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for w_bits, a_bits in target.choices():
            bits = {layer.name: (w_bits, a_bits) for layer in deployed.layers}
            qmodel = build_quant_model(deployed.graph, deployed.layers, bits, target.quant_spec(), pool_inputs=pool_inputs)
            calibrate(qmodel, calibration)
            path = Path(tmp) / f"w{w_bits}a{a_bits}.onnx"
            export_model(qmodel, example, target.export, path)
            onnx_model = onnx.load(str(path))
            pairs, problems = match_layers(OnnxGraph(onnx_model), target.export, qmodel)
            if problems:
                raise RuntimeError(f"the exported graph does not match the model: {problems[0]}")
            node_of = {name: node.name for node, name, _ in pairs}
            profiled, profiled_total = node_ms(onnx_model, set(node_of.values()), example.numpy(), runs, warmup)
            missing = [name for name, node in node_of.items() if node not in profiled]
            if missing:
                raise RuntimeError(f"ONNX Runtime's profile has no kernel for layer(s) {', '.join(missing[:3])}")
            total = graph_ms(onnx_model, example.numpy(), runs, warmup)
            # the profiler's own cost per kernel, spread in proportion: the shares are the profile's,
            # the sum is the unprofiled run's
            times = {node: ms * total / profiled_total for node, ms in profiled.items()}
            layer_sum = sum(times[node_of[layer.name]] for layer in deployed.layers)
            key = f"w{w_bits}/a{a_bits}"
            totals[key], rests[key] = total, max(0.0, total - layer_sum)
            profiled_totals[key] = profiled_total
            rows += [{"layer": layer.name, "w_bits": w_bits, "a_bits": a_bits, "ms": times[node_of[layer.name]]}
                     for layer in deployed.layers]
        unfused_rows = _unfused_rows(target, deployed, calibration, example, Path(tmp), runs, warmup)
    generic = json.loads(Path(target.latency.source).read_text()) if Path(target.latency.source).is_file() else {}
    return {
        "format": LATENCY_FORMAT,
        "model": "latency_ms = sum over layers of the layer's measured ms at its (w_bits, a_bits) + model_overhead_ms; "
                 "layers of other models: macs * ns_per_mac + overhead_ns (entries)",
        "model_spec": model.spec,
        "model_fingerprint": model.fingerprint,
        # the rest of the graph differs between precisions; the largest keeps a budget on the safe side
        "model_overhead_ms": max(rests.values()),
        "provenance": {
            "command": f"infoq-deploy targets measure {target.name} {model.spec}",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "tool_version": __version__, "onnxruntime": onnxruntime.__version__,
            "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
            "method": f"every layer at one allowed (w, a) per build; ORT profiler kernel time per layer, median of {runs} "
                      f"runs after {warmup} warm-up, one intra-op thread, batch 1, scaled by whole graph / sum of all "
                      "profiled kernels (the profiler's own cost); whole graph: median thread-CPU time unprofiled",
            "whole_graph_ms": totals, "rest_of_graph_ms": rests, "profiled_kernels_ms": profiled_totals,
        },
        "entries": generic.get("entries") or [
            {"kind": e.kind, "w_bits": e.w_bits, "a_bits": e.a_bits, "ns_per_mac": e.ns_per_mac, "overhead_ns": e.overhead_ns}
            for e in target.latency.entries],
        "layers": rows,
        "unfused_layers": unfused_rows,
    }


def _unfused_rows(target, deployed, calibration, example, tmp: Path, runs: int, warmup: int) -> list[dict]:
    """Each integer layer's time where ORT runs it in float, from builds with every other layer integer."""
    float_pair = next((p for p in target.choices() if not integer(*p) and p[1] >= 32), None)
    if float_pair is None:
        return []
    rows = []
    for w_bits, a_bits in (p for p in target.choices() if integer(*p)):
        for parity in (0, 1):
            bits = {l.name: (w_bits, a_bits) if l.order % 2 == parity else float_pair for l in deployed.layers}
            predicted = unfused(deployed.layers, [bits[l.name] for l in deployed.layers])
            if not predicted:
                continue
            qmodel = build_quant_model(deployed.graph, deployed.layers, bits, target.quant_spec(),
                                       pool_inputs=target.activations.pool_inputs)
            calibrate(qmodel, calibration)
            path = tmp / f"unfused_w{w_bits}a{a_bits}_{parity}.onnx"
            export_model(qmodel, example, target.export, path)
            onnx_model = onnx.load(str(path))
            ran_float, _ = ort_fusion(onnx_model, target.export, qmodel, bits)
            pairs, _ = match_layers(OnnxGraph(onnx_model), target.export, qmodel)
            nodes = {name: _with_quantizers(onnx_model, node) for node, name, _ in pairs
                     if name in predicted and name in ran_float}
            if not nodes:
                continue
            profiled, profiled_total = node_ms(onnx_model, set().union(*nodes.values()), example.numpy(), runs, warmup)
            scale = graph_ms(onnx_model, example.numpy(), runs, warmup) / profiled_total
            rows += [{"layer": name, "w_bits": w_bits, "a_bits": a_bits,
                      "ms": scale * sum(profiled.get(n, 0.0) for n in names)} for name, names in nodes.items()]
    return rows


def _with_quantizers(model: onnx.ModelProto, node) -> set[str]:
    """``node`` and the DequantizeLinear nodes it reads, with the QuantizeLinear before each."""
    producer = {o: n for n in model.graph.node for o in n.output}
    names = {node.name}
    for tensor in node.input:
        dq = producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        names.add(dq.name)
        q = producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            names.add(q.name)
    return names


def write_target(target: Target, doc: dict, out: str | os.PathLike) -> tuple[Path, Path]:
    """``target``'s file with its name and latency table replaced, and the table beside it."""
    out = Path(out)
    if out.suffix != ".toml":
        raise UserError(f"the measured target is written as a target file; name it NAME.toml, not {out.name}")
    source = Path(target.path).read_text()
    table = out.with_suffix(".latency.json")
    text, n_name = re.subn(r'(?m)^name\s*=\s*".*"$', f'name = "{out.stem}"', source, count=1)
    text, n_table = re.subn(r'(?m)^table\s*=\s*".*"$', f'table = "{table.name}"', text, count=1)
    if not (n_name and n_table):
        raise UserError(f"{target.path} has no name = \"...\" line or no [latency] table = \"...\" line to replace; "
                        "measure a target whose latency table is a JSON file")
    header = f"# {target.name} with a latency table measured on {doc['model_spec']} (`{doc['provenance']['command']}`)\n"
    write_json(table, doc)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(header + text)
    return out, table
