"""A cheap, honest sensitivity proxy: relative quantization error per layer and bit-width.

Weights: ``||Q_b(W) - W||^2 / ||W||^2`` with the target's quantizer. Activations: the
same ratio for each layer's input over the calibration set, with the range calibrated
on that set. It is local (no information flow), so it is the baseline InfoQ must beat,
and it exercises the allocator end to end before the InfoQ profiler runs.
"""

from __future__ import annotations

import time

import torch
import torch.fx

from infoq_deploy import __version__
from infoq_deploy.core import devices
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.quantizer import FLOAT_BITS, ActRange, QuantSpec, RangeObserver, quantize_act, quantize_weight
from infoq_deploy.importing.deployable import deployable
from infoq_deploy.importing.layers import Layer
from infoq_deploy.profile.table import SensitivityTable


def profile(model, target, data, *, seed: int = 0) -> SensitivityTable:
    """Weight (and, with data, activation) quantization error as the sensitivity proxy."""
    deployed = deployable(model)
    spec = target.quant_spec()
    start = time.perf_counter()
    s_w = weight_scores(deployed.graph, deployed.layers, list(target.weights.bits), spec)
    a_bits = list(target.activations.bits)
    if data is not None:
        s_a = activation_scores(deployed.graph, deployed.layers, a_bits, spec, data.x)
    elif len(a_bits) == 1:
        s_a = {layer.name: {a_bits[0]: 0.0} for layer in deployed.layers}
    else:
        raise UserError(
            f"target {target.name} chooses activation bits among {a_bits}, which needs calibration data; pass --data"
        )
    meta = {
        "method": "mse",
        "tool_version": __version__,
        "settings": {"quant_spec": vars(spec) if hasattr(spec, "__dict__") else str(spec)},
        "model_fingerprint": model.fingerprint,
        "data_hash": None if data is None else data.sha256,
        "data_source": None if data is None else data.source,
        "calib_size": 0 if data is None else len(data.x),
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 3),
    }
    return SensitivityTable(
        model=model.spec, target=target.name, layers=deployed.layers, weights=s_w, activations=s_a, meta=meta
    )


def notes(table: SensitivityTable) -> list[str]:
    return ["sensitivity from the weight/activation quantization-error proxy (--method mse), not InfoQ"]


def weight_scores(gm: torch.fx.GraphModule, layers: list[Layer], bits: list[int], spec: QuantSpec) -> dict[str, dict[int, float]]:
    modules = dict(gm.named_modules())
    out: dict[str, dict[int, float]] = {}
    for layer in layers:
        w = modules[layer.name].weight.detach()
        energy = float((w * w).sum()) or 1.0
        out[layer.name] = {
            b: 0.0 if b >= FLOAT_BITS else float(((quantize_weight(w, b, spec) - w) ** 2).sum()) / energy for b in bits
        }
    return out


def layer_inputs(gm: torch.fx.GraphModule, layers: list[Layer], x: torch.Tensor, batch_size: int, fn) -> None:
    """Run ``x`` through ``gm`` and call ``fn(layer_name, input_batch)`` for every quantizable layer."""
    modules = dict(gm.named_modules())
    device = devices.of(gm)
    handles = [
        modules[layer.name].register_forward_pre_hook(lambda m, args, name=layer.name: fn(name, args[0].detach()))
        for layer in layers
    ]
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                gm(x[start : start + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()


def calibrate_act_ranges(gm, layers: list[Layer], x: torch.Tensor, spec: QuantSpec, batch_size: int = 250) -> dict[str, ActRange]:
    """Per-layer input range over the whole calibration set (the deployed activation range),
    chosen by the spec's scale rule (`core.quantizer.RangeObserver`, as Brevitas calibration)."""
    observers = {layer.name: RangeObserver(spec) for layer in layers}
    layer_inputs(gm, layers, x, batch_size, lambda name, t: observers[name].observe(t))
    if any(o.needs_histogram for o in observers.values()):
        for o in observers.values():
            o.start_histogram()
        layer_inputs(gm, layers, x, batch_size, lambda name, t: observers[name].observe(t))
    return {name: o.result() for name, o in observers.items() if o.seen}


def activation_scores(
    gm, layers: list[Layer], bits: list[int], spec: QuantSpec, x: torch.Tensor, batch_size: int = 250
) -> dict[str, dict[int, float]]:
    ranges = calibrate_act_ranges(gm, layers, x, spec, batch_size)
    err = {layer.name: {b: 0.0 for b in bits} for layer in layers}
    energy = {layer.name: 0.0 for layer in layers}

    def accumulate(name: str, t: torch.Tensor) -> None:
        energy[name] += float((t * t).sum())
        for b in bits:
            if b < FLOAT_BITS:
                err[name][b] += float(((quantize_act(t, b, ranges[name], spec) - t) ** 2).sum())

    layer_inputs(gm, layers, x, batch_size, accumulate)
    return {name: {b: e / (energy[name] or 1.0) for b, e in d.items()} for name, d in err.items()}
