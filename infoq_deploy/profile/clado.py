"""CLADO (Deng et al., arXiv 2307.05657): measured loss changes of single layers and of layer pairs.

Forward passes only. With every other layer in float, the calibration loss is measured
with layer i's weights quantized to b (``D_i(b)``), and with two layers quantized together
(``D_ij(b_i, b_j)``); the cross-layer term is ``D_ij - D_i - D_j``, which an additive criterion
(InfoQ, HAWQ, the proxy) assumes to be zero. The allocator minimises
``sum_i D_i(b_i) + sum_{i<j} cross_ij(b_i, b_j)``, CLADO's integer quadratic program, with the
products of choices linearised exactly for CBC (`allocate/ilp.py`), where the authors use Gurobi.

Weights are quantized with the target's quantizer (`core.quantizer`, its scale rule), so the
loss changes are those of the deployed rounding (round to nearest, as the other criteria).
Pairs cover the layers whose weight bits the allocation may choose (pinned layers take one
width, so they have no pair terms). CLADO itself is weights only; activations get the same
measurement for each layer's input alone (calibrated ranges, as deployed), without pair terms.
The loss is the mean cross-entropy on the calibration labels, or on the float model's own
top-1 where the data has none. A layer's scores are shifted so its best choice scores 0 (each
layer takes exactly one choice, so the optimum is unchanged), since quantization noise can
lower the loss a little.

The matrix is projected onto the positive semi-definite cone before it is solved (``psd=True``,
the default), as the CLADO authors' code does: G holds each free layer's single loss changes on
its diagonal and half of each pair's cross term off it, over one-hot width choices; its negative
eigenvalues are set to 0, the singles are read back from the diagonal (each layer's best width
shifted to 0 again) and the cross terms from twice the off-diagonal. Measured on ResNet-20, the
raw matrix has 20 negative eigenvalues of 54, and the negative cross terms summed over 153 pairs
make the lowest widths look cheapest: solved raw, allocations leave budget unspent (3.14 bits
used under 3.5-, 4- and 5-bit budgets) and are the worst of any criterion
(``bench/results/clado_matrix_cifar10-resnet20.json``, ``criteria_cifar10-resnet20.json``). The
measured values stay in ``meta.measured``; ``meta.psd`` records the eigenvalues clipped.
"""

from __future__ import annotations

import contextlib
import itertools
import time

import numpy as np
import torch
import torch.nn.functional as F

from infoq_deploy import __version__
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.quantizer import FLOAT_BITS, quantize_act, quantize_weight
from infoq_deploy.importing.deployable import deployable
from infoq_deploy.profile.mse import calibrate_act_ranges
from infoq_deploy.profile.table import SensitivityTable


def profile(model, target, data, *, seed: int = 0, batch_size: int = 256, pairs: bool = True, psd: bool = True,
            progress: bool = False) -> SensitivityTable:
    """CLADO's single-layer and pairwise loss changes (see the module docstring); ``pairs=False``
    measures the single layers only (an additive table, CLADO without its cross-layer terms);
    ``psd=False`` solves the matrix as measured, without projecting it onto the PSD cone."""
    if data is None:
        raise UserError("--method clado needs calibration data to measure the loss; pass --data")
    from tqdm import tqdm

    deployed = deployable(model)
    gm, layers = deployed.graph.eval(), sorted(deployed.layers, key=lambda l: l.order)
    spec = target.quant_spec()
    start = time.perf_counter()
    modules = dict(gm.named_modules())
    x = data.x
    with torch.no_grad():
        y = data.y if data.y is not None else torch.cat(
            [gm(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    n = len(layers)
    w_bits = {l.name: sorted({w for w, _ in target.layer_choices(l.order, n)}) for l in layers}
    all_w = sorted(target.weights.bits)
    quantized = {l.name: {b: quantize_weight(modules[l.name].weight.detach(), b, spec) for b in all_w if b < FLOAT_BITS}
                 for l in layers}
    forwards = 0

    def loss(weights: dict[str, int] = {}, act: tuple[str, int] | None = None) -> float:  # noqa: B006
        nonlocal forwards
        forwards += 1
        with _weights(modules, {name: quantized[name][b] for name, b in weights.items()}), \
                _input_quantized(modules, act, ranges, spec):
            total = 0.0
            for i in range(0, len(x), batch_size):
                with torch.no_grad():
                    total += float(F.cross_entropy(gm(x[i:i + batch_size]), y[i:i + batch_size], reduction="sum"))
        return total / len(x)

    a_bits = sorted(target.activations.bits)
    ranges = calibrate_act_ranges(gm, layers, x, spec) if any(b < FLOAT_BITS for b in a_bits) else {}
    free = [l.name for l in layers if len([b for b in w_bits[l.name] if b < FLOAT_BITS]) > 1]
    pair_list = list(itertools.combinations(free, 2)) if pairs else []
    total = 1 + n * (len(all_w) + len(a_bits)) + sum(
        len([b for b in w_bits[a] if b < FLOAT_BITS]) * len([b for b in w_bits[b_] if b < FLOAT_BITS])
        for a, b_ in pair_list)
    bar = tqdm(total=total, desc="CLADO", unit="pass", disable=not progress, leave=False)

    def measure(**kw) -> float:
        value = loss(**kw)
        bar.update(1)
        return value

    try:
        base = measure()
        single = {l.name: {b: 0.0 if b >= FLOAT_BITS else measure(weights={l.name: b}) - base for b in all_w}
                  for l in layers}
        act = {l.name: {b: 0.0 if b >= FLOAT_BITS else measure(act=(l.name, b)) - base for b in a_bits}
               for l in layers}
        cross = {}
        for a, b_ in pair_list:
            cross[(a, b_)] = {(wa, wb): measure(weights={a: wa, b_: wb}) - base - single[a][wa] - single[b_][wb]
                              for wa in w_bits[a] if wa < FLOAT_BITS for wb in w_bits[b_] if wb < FLOAT_BITS}
    finally:
        bar.close()
    shift = lambda d: {b: v - min(d.values()) for b, v in d.items()}  # noqa: E731
    weights = {k: shift(v) for k, v in single.items()}
    measured = {"weights": weights, "pairs": [{"layers": [a, b_], "w_bits": {f"{wa},{wb}": v for (wa, wb), v in t.items()}}
                                              for (a, b_), t in cross.items()]}
    psd_meta = None
    if psd and cross:
        weights, cross, psd_meta = project_psd(weights, cross, free, {name: [b for b in w_bits[name] if b < FLOAT_BITS]
                                                                      for name in free})
        weights = {k: shift(v) for k, v in weights.items()}
    meta = {
        "method": "clado",
        "tool_version": __version__,
        "settings": {"batch_size": batch_size,
                     "loss": "mean cross-entropy on the labels" if data.y is not None
                     else "mean cross-entropy on the float model's top-1 (the data has no labels)"},
        "base_loss": base,
        "forward_passes": forwards,
        "pairs": len(pair_list),
        "model_fingerprint": model.fingerprint,
        "data_hash": data.sha256,
        "data_source": data.source,
        "calib_size": len(x),
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 3),
        "psd": psd_meta if psd_meta is not None else {"projected": False},
        "measured": measured if psd_meta is not None else None,
    }
    return SensitivityTable(model=model.spec, target=target.name, layers=layers, weights=weights,
                            activations={k: shift(v) for k, v in act.items()}, meta=meta, pairs=cross)


def project_psd(weights: dict[str, dict[int, float]], cross: dict[tuple[str, str], dict[tuple[int, int], float]],
                free: list[str], widths: dict[str, list[int]]):
    """(singles, cross terms, meta) of CLADO's matrix G projected onto the PSD cone (see the module
    docstring): G's diagonal the singles of each free layer's widths, off it half of each cross
    term; negative eigenvalues set to 0; singles and cross terms read back from the result."""
    index = [(name, b) for name in free for b in widths[name]]
    pos = {k: i for i, k in enumerate(index)}
    g = np.zeros((len(index), len(index)))
    for (name, b), i in pos.items():
        g[i, i] = weights[name][b]
    for (a, b_), terms in cross.items():
        for (wa, wb), v in terms.items():
            g[pos[(a, wa)], pos[(b_, wb)]] = g[pos[(b_, wb)], pos[(a, wa)]] = v / 2
    ev, vec = np.linalg.eigh(g)
    p = (vec * np.clip(ev, 0.0, None)) @ vec.T
    out_w = {name: dict(d) for name, d in weights.items()}
    for name in free:
        out_w[name] = {**out_w[name], **{b: float(p[pos[(name, b)], pos[(name, b)]]) for b in widths[name]}}
    out_c = {(a, b_): {k: float(2 * p[pos[(a, k[0])], pos[(b_, k[1])]]) for k in terms} for (a, b_), terms in cross.items()}
    meta = {"projected": True, "size": len(index), "negative_eigenvalues": int((ev < 0).sum()),
            "min_eigenvalue": float(ev.min()), "max_eigenvalue": float(ev.max())}
    return out_w, out_c, meta


def notes(table: SensitivityTable) -> list[str]:
    m = table.meta
    psd = m.get("psd") or {}
    projected = (f"; its matrix projected onto the PSD cone ({psd['negative_eigenvalues']} negative eigenvalues of "
                 f"{psd['size']} set to 0)") if psd.get("projected") else ""
    return [f"sensitivity from CLADO (--method clado): measured loss changes of {len(table.layers)} single layers "
            f"and {m.get('pairs')} layer pairs, {m.get('forward_passes')} passes over {m.get('calib_size')} "
            f"calibration samples{projected}; the allocation solves its quadratic program (pair products "
            "linearised for CBC)"]


@contextlib.contextmanager
def _weights(modules, replaced: dict[str, torch.Tensor]):
    saved = {name: modules[name].weight.data for name in replaced}
    try:
        for name, w in replaced.items():
            modules[name].weight.data = w
        yield
    finally:
        for name, w in saved.items():
            modules[name].weight.data = w


@contextlib.contextmanager
def _input_quantized(modules, act: tuple[str, int] | None, ranges, spec):
    if act is None:
        yield
        return
    name, bits = act
    handle = modules[name].register_forward_pre_hook(
        lambda m, args: (quantize_act(args[0], bits, ranges[name], spec), *args[1:]))
    try:
        yield
    finally:
        handle.remove()
