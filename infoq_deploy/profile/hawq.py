"""HAWQ-v2 (Dong et al., NeurIPS 2020): average Hessian trace times quantization perturbation.

For each layer and bit-width ``b`` the score is the second-order estimate of the increase of
the mean loss when that layer alone is quantized to ``b``, the curvature taken as the
layer's average Hessian diagonal:

- weights: ``1/2 * Tr(H_W) / n_W * ||Q_b(W) - W||^2`` (the HAWQ code's
  ``trace / n_params * ||Q(W) - W||^2``, with the 1/2 of the Taylor term kept so that
  weights and activations are in the same unit);
- activations (HAWQ-v2's Section 3.4 applies the same criterion to activations): the
  Hessian of the batch-mean loss with respect to the layer's input tensor, ``1/2 * Tr(H_A) /
  n_A * E||Q_b(a) - a||^2``, with ``n_A`` the elements of one sample's input and the
  expectation over the calibration samples; ranges calibrated as deployed.

``Q_b`` is the target's quantizer under its scale rule (`core.quantizer`), the one the
allocation deploys. Traces are Hutchinson's estimates ``E[v^T H v]`` over Rademacher vectors
``v`` (one vector over all layers' weights and inputs per iteration, each iteration on the
next calibration batch; Hessian-vector products by double backpropagation through the
float, BatchNorm-folded graph). The estimate stops when the standard error of the total trace
of the weights, and of the inputs, is at most ``tol`` of it (default 2%, at least ``min_iter``
iterations; PyHessian's rule is on the total too) or after ``max_iter``; each layer's own
relative standard error is larger, and the largest is recorded.
The loss is the cross-entropy on the calibration labels, or on the float model's own top-1
where the data has none. A trace that comes out negative (the loss is not convex) scores 0.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from infoq_deploy import __version__
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.quantizer import FLOAT_BITS, quantize_act, quantize_weight
from infoq_deploy.importing.deployable import deployable
from infoq_deploy.profile.mse import calibrate_act_ranges, layer_inputs
from infoq_deploy.profile.table import SensitivityTable


def profile(model, target, data, *, seed: int = 0, batch_size: int = 128, tol: float = 0.02, min_iter: int = 10,
            max_iter: int = 200, progress: bool = False) -> SensitivityTable:
    """HAWQ-v2 sensitivity of every layer's weights and inputs (see the module docstring)."""
    if data is None:
        raise UserError("--method hawq needs calibration data for the Hessian; pass --data")
    deployed = deployable(model)
    gm, layers = deployed.graph, deployed.layers
    spec = target.quant_spec()
    start = time.perf_counter()
    traces = hessian_traces(gm, [l.name for l in layers], data.x, data.y, seed=seed, batch_size=batch_size,
                            tol=tol, min_iter=min_iter, max_iter=max_iter, progress=progress)
    modules = dict(gm.named_modules())
    s_w = {}
    for layer in layers:
        w = modules[layer.name].weight.detach()
        curvature = max(traces["weights"][layer.name]["mean"], 0.0) / w.numel()
        s_w[layer.name] = {b: 0.0 if b >= FLOAT_BITS else
                           0.5 * curvature * float(((quantize_weight(w, b, spec) - w) ** 2).sum())
                           for b in target.weights.bits}
    a_bits = list(target.activations.bits)
    errors = input_errors(gm, layers, a_bits, spec, data.x)
    s_a = {layer.name: {b: 0.5 * max(traces["activations"][layer.name]["mean"], 0.0)
                        / traces["activations"][layer.name]["elements"] * errors[layer.name][b] for b in a_bits}
           for layer in layers}
    meta = {
        "method": "hawq",
        "tool_version": __version__,
        "settings": {"batch_size": batch_size, "tol": tol, "min_iter": min_iter, "max_iter": max_iter,
                     "loss": "cross-entropy on the labels" if data.y is not None
                     else "cross-entropy on the float model's top-1 (the data has no labels)"},
        "hutchinson": {k: traces[k] for k in ("iterations", "converged", "total_relative_stderr",
                                              "max_layer_relative_stderr")},
        "traces": {"weights": {k: v["mean"] for k, v in traces["weights"].items()},
                   "activations": {k: v["mean"] for k, v in traces["activations"].items()}},
        "model_fingerprint": model.fingerprint,
        "data_hash": data.sha256,
        "data_source": data.source,
        "calib_size": len(data.x),
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 3),
    }
    return SensitivityTable(model=model.spec, target=target.name, layers=layers, weights=s_w, activations=s_a,
                            meta=meta)


def notes(table: SensitivityTable) -> list[str]:
    h = table.meta.get("hutchinson", {})
    lines = [f"sensitivity from HAWQ-v2 (--method hawq): Hessian traces by Hutchinson's method, "
             f"{h.get('iterations')} iterations, total trace within {h.get('total_relative_stderr', 0):.1%} "
             f"(one standard error), each layer's within {h.get('max_layer_relative_stderr', 0):.0%}"]
    if not h.get("converged", True):
        lines.append(f"the Hessian traces had not settled to {table.meta['settings']['tol']:.0%} after "
                     f"{h.get('iterations')} iterations; the ranking of close layers is uncertain")
    negative = [n for part in ("weights", "activations") for n, t in table.meta.get("traces", {}).get(part, {}).items()
                if t < 0]
    if negative:
        lines.append(f"negative Hessian traces (scored 0): {', '.join(sorted(set(negative))[:5])}")
    return lines


def hessian_traces(gm: torch.nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor | None, *, seed: int,
                   batch_size: int, tol: float, min_iter: int, max_iter: int, progress: bool = False) -> dict:
    """Hutchinson estimates of the trace of the batch-mean loss's Hessian with respect to each
    named module's weight and its input, with their standard errors and the iteration count."""
    from tqdm import tqdm

    gm = gm.eval()
    modules = dict(gm.named_modules())
    weights = [modules[n].weight for n in names]
    was = [w.requires_grad for w in weights]
    if y is None:
        with torch.no_grad():
            y = torch.cat([gm(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    gen = torch.Generator().manual_seed(seed)
    samples = {"weights": {n: [] for n in names}, "activations": {n: [] for n in names}}
    elements = {}
    batches = [(i, min(i + batch_size, len(x))) for i in range(0, len(x), batch_size)]
    converged, it, worst = False, 0, math.inf
    bar = tqdm(total=max_iter, desc="HAWQ traces", unit="it", disable=not progress, leave=False)
    try:
        for w in weights:
            w.requires_grad_(True)
        for it in range(1, max_iter + 1):
            lo, hi = batches[(it - 1) % len(batches)]
            captured = {}
            hooks = [modules[n].register_forward_pre_hook(lambda m, args, n=n: _own_input(captured, n, args))
                     for n in names]
            try:
                xb = x[lo:hi].clone().requires_grad_(True)  # so the first layer's input is in the graph
                loss = F.cross_entropy(gm(xb), y[lo:hi])
            finally:
                for h in hooks:
                    h.remove()
            inputs = [captured[n] for n in names]
            for n in names:
                elements[n] = captured[n][0].numel()
            wrt = weights + inputs
            grads = torch.autograd.grad(loss, wrt, create_graph=True)
            vs = [torch.randint(0, 2, g.shape, generator=gen).to(g.dtype) * 2 - 1 for g in grads]
            hv = torch.autograd.grad(grads, wrt, grad_outputs=vs, allow_unused=True)
            for k, n in enumerate(names):
                for part, j in (("weights", k), ("activations", len(names) + k)):
                    samples[part][n].append(0.0 if hv[j] is None else float((vs[j] * hv[j]).sum()))
            bar.update(1)
            if it >= min_iter:
                # PyHessian's rule, on the standard error rather than the last step: the total trace of
                # each part (weights, inputs) settled to ``tol``; per-layer errors are reported
                worst = max(_relative_stderr([sum(v) for v in zip(*part.values())]) for part in samples.values())
                if worst <= tol:
                    converged = True
                    break
    finally:
        bar.close()
        for w, r in zip(weights, was):
            w.requires_grad_(r)
    out = {"iterations": it, "converged": converged, "total_relative_stderr": worst,
           "max_layer_relative_stderr": max(_relative_stderr(v) for part in samples.values() for v in part.values())}
    for part in samples:
        out[part] = {n: {"mean": sum(s) / len(s), "stderr": _stderr(s), "elements": elements[n]}
                     for n, s in samples[part].items()}
    return out


def _own_input(captured: dict, name: str, args: tuple) -> tuple:
    """The layer reads its own copy of its input: the deployed quantizer sits on that copy alone
    (a residual branch reading the same tensor is not quantized by it), and nothing later
    modifies the copy in place."""
    a = args[0].clone()
    captured[name] = a
    return (a, *args[1:])


def _stderr(s: list[float]) -> float:
    if len(s) < 2:
        return math.inf
    m = sum(s) / len(s)
    return math.sqrt(sum((v - m) ** 2 for v in s) / (len(s) - 1) / len(s))


def _relative_stderr(s: list[float]) -> float:
    m = abs(sum(s) / len(s))
    # a trace that is zero (a layer the loss does not reach) has nothing to settle
    return 0.0 if m == 0 and _stderr(s) == 0 else _stderr(s) / m if m > 0 else math.inf


def input_errors(gm, layers, bits: list[int], spec, x: torch.Tensor, batch_size: int = 250) -> dict[str, dict[int, float]]:
    """Mean over the samples of ``||Q_b(a) - a||^2`` of each layer's input, ranges as deployed."""
    ranges = calibrate_act_ranges(gm, layers, x, spec, batch_size)
    err = {layer.name: {b: 0.0 for b in bits} for layer in layers}

    def accumulate(name, t):
        for b in bits:
            if b < FLOAT_BITS:
                err[name][b] += float(((quantize_act(t, b, ranges[name], spec) - t) ** 2).sum())

    layer_inputs(gm, layers, x, batch_size, accumulate)
    return {name: {b: e / len(x) for b, e in d.items()} for name, d in err.items()}
