"""Before any long work: can the target's format express this model, and the flows the run
verifies with take it?

The model is built at the target's widest integer bits (pins kept), calibrated on a few
calibration samples and exported in the target's format, exactly as the pipeline will later;
then each consumer flow the run verifies with that can read a graph without simulating it (a
back end's ``unsupported``: hls4ml's operator handlers and pool constraints) lists what it
cannot take. Either failure is one sentence naming the layer (a weight layer itself, or the
nearest one in front of the node), the operator and the back end, raised before profiling.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import onnx
import torch

from infoq_deploy.backends import registry as backends
from infoq_deploy.core.errors import UserError
from infoq_deploy.export.graph import OnnxGraph
from infoq_deploy.export.writer import export_model
from infoq_deploy.quantize.brevitas_model import build_quant_model, calibrate
from infoq_deploy.verify.check import match_layers

SAMPLES = 8  # calibration samples for the trial export: ranges only need to exist, not be good


def preflight(deployed, target, x: torch.Tensor, consumers: tuple[str, ...]) -> dict:
    """UserError unless ``deployed`` exports in ``target``'s format and every back end of
    ``consumers`` that can check a graph takes it; what was checked, and how long it took."""
    start = time.perf_counter()
    layers = sorted(deployed.layers, key=lambda l: l.order)
    bits = dict(zip((l.name for l in layers), target.widest_bits(len(layers))))
    fmt = target.export
    with tempfile.TemporaryDirectory(prefix="infoq-preflight-") as tmp:
        path = Path(tmp) / "trial.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                qmodel = build_quant_model(deployed.graph, layers, bits, target.quant_spec(),
                                           pool_inputs=target.activations.pool_inputs)
                calibrate(qmodel, x[:SAMPLES])
                export_model(qmodel, x[:1], fmt, path)
        except (UserError, OSError):  # our own sentence; a full disk is not the model's fault
            raise
        except Exception as exc:  # the exporter's or Brevitas's own words: they name the operator
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise UserError(f"the model cannot be exported as {fmt} for target {target.name} ({type(exc).__name__}: "
                            f"{reason}); replace that operator or pick another target") from None
        model = onnx.load(str(path))
        checked = []
        for backend in consumers:
            module = backends.get(backend)
            check = getattr(module, "unsupported", None)
            if check is None or getattr(module, "unavailable", lambda: None)() is not None:
                continue
            refused = check(model)
            checked.append(backend)
            if refused:
                name, op, why = refused[0]
                layer = _layer_near(model, fmt, qmodel, name)
                where = f"layer {layer}'s {op}" if layer else f"the {op}"
                more = f" (and {len(refused) - 1} more node(s))" if len(refused) > 1 else ""
                raise UserError(
                    f"{backend}, a flow target {target.name} exports for, cannot take {where} "
                    f"(node {name}: {why}){more}; pick another target, or verify with another flow "
                    "(--backend finn, or --backend qonnx for qonnx's executor alone)")
    return {"format": fmt, "consumers_checked": checked, "seconds": round(time.perf_counter() - start, 3)}


def _layer_near(model: onnx.ModelProto, fmt: str, qmodel, node_name: str) -> str | None:
    """The layer computed by ``node_name``, or the nearest weight layer in front of it (None:
    no such node in the file, or none in front of it)."""
    g = OnnxGraph(model)
    pairs, _ = match_layers(g, fmt, qmodel)
    layer_of = {node.name: name for node, name, _ in pairs}
    node = next((n for n in g.nodes if n.name == node_name), None)
    todo, seen = ([node] if node is not None else []), set()
    while todo:
        current = todo.pop(0)
        if current.name in layer_of:
            return layer_of[current.name]
        seen.add(current.name)
        todo += [g.producer[i] for i in current.input if i in g.producer and g.producer[i].name not in seen]
    return None
