"""Candidate observer positions and the paper's correlation analysis that picks them.

Candidates (DESIGN.md / paper Sec. 4): the output of every quantizable layer, plus the
graph's final nodes: every *global* pooling node (its output has one value per channel)
and the returned tensor (logits) when it is not a layer output already. A candidate j
is *downstream* of layer i when j's node depends on i's node in the graph (a strict
descendant: the paper's ``j > i``; in a residual network this is every later position).

Correlation analysis: each layer's weights are quantized to the lowest candidate
bit-width with everything else at 8 bit; for every (candidate, kind) with kind
``XL`` (ΔSMI(X_E; L_j)) or ``LY`` (ΔSMI(L_j; Y)), Pearson's r between ΔSMI at j and the
top-1 accuracy drop is taken over the layers upstream of j. A (candidate, kind) needs
at least ``MIN_POINTS`` upstream layers and non-constant values on both axes, else it
is skipped. Observers are those with r > ``THRESHOLD``. If none qualifies, the best
``FALLBACK_N`` by r are kept (and the caller says so); if no r can be computed at all
(e.g. no layer changes the accuracy), the paper's heuristic is used: LY at the final
nodes (global pooling, logits).

Per layer, the observers used are the selected ones downstream of it. A layer with
none (typically the last layers, when every selected observer is earlier) falls back
to the nearest downstream candidate, measured in both kinds; a layer with no
downstream candidate at all (the classifier) uses its own output, in both kinds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from infoq_deploy.core import devices
from infoq_deploy.profile.suffix_runner import SuffixRunner

KINDS = ("XL", "LY")
THRESHOLD = 0.7
MIN_POINTS = 4
FALLBACK_N = 3

_POOL_MODULES = (
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
)
_POOL_FUNCTIONS = {
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d,
    torch.mean, torch.amax, torch.max,
}
_POOL_METHODS = {"mean", "amax"}


@dataclass(frozen=True)
class Candidate:
    node: str  # fx node name (unique)
    name: str  # what reports call it: the layer name for layer outputs, else the node name
    index: int  # topological position in the graph
    dim: int  # features per sample (flattened output)
    role: str  # "layer" | "global-pool" | "logits"


def find_candidates(runner: SuffixRunner, input_shape: tuple[int, ...]) -> list[Candidate]:
    """Every candidate observer of the runner's graph, in topological order."""
    gm = runner.gm
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros((1, *input_shape), device=devices.of(gm)))
    layer_nodes = {node: layer for layer, node in runner.layer_node.items()}
    out: list[Candidate] = []
    for i, n in enumerate(runner.nodes):
        meta = n.meta.get("tensor_meta")
        shape = getattr(meta, "shape", None)
        if shape is None:
            continue
        dim = int(math.prod(shape[1:]))
        if n.name in layer_nodes:
            out.append(Candidate(n.name, layer_nodes[n.name], i, dim, "layer"))
        elif _is_global_pool(n, runner.modules, shape):
            out.append(Candidate(n.name, n.name, i, dim, "global-pool"))
        elif n.name == runner.result_node:
            out.append(Candidate(n.name, n.name, i, dim, "logits"))
    return out


def _is_global_pool(n, modules, shape) -> bool:
    if n.op == "call_module":
        pool = isinstance(modules[n.target], _POOL_MODULES)
    elif n.op == "call_function":
        pool = n.target in _POOL_FUNCTIONS
    elif n.op == "call_method":
        pool = n.target in _POOL_METHODS
    else:
        pool = False
    if not pool:
        return False
    src = n.all_input_nodes[0].meta.get("tensor_meta") if n.all_input_nodes else None
    src_shape = getattr(src, "shape", None)
    if src_shape is None or len(src_shape) < 3 or math.prod(src_shape[2:]) <= 1:
        return False  # pooling something that has no spatial extent
    return len(shape) == 2 or math.prod(shape[2:]) == 1


def downstream(runner: SuffixRunner, layer: str, candidates: list[Candidate]) -> list[Candidate]:
    """Candidates that are strict descendants of the layer's (first) call node."""
    desc = runner.descendants(runner.layer_node[layer])
    return [c for c in candidates if c.node in desc]


def measured_for(runner: SuffixRunner, layer: str, candidates: list[Candidate]) -> list[Candidate]:
    """What the correlation run of ``layer`` measures: its downstream candidates, or its own output."""
    down = downstream(runner, layer, candidates)
    if down:
        return down
    own = runner.layer_node[layer]
    return [c for c in candidates if c.node == own]


# --------------------------------------------------------------------- correlation


def pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson's r, or None when an axis is constant (r undefined)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    a, b = a - a.mean(), b - b.mean()
    return float(np.clip((a @ b) / math.sqrt(float(a @ a) * float(b @ b)), -1.0, 1.0))


@dataclass(frozen=True)
class Correlation:
    node: str
    name: str
    kind: str
    r: float | None  # None: skipped (too few points or a constant axis)
    n: int  # number of upstream layers (points)
    reason: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["r"] = None if self.r is None else round(self.r, 6)
        return d


def correlate(
    runner: SuffixRunner,
    layers: list[str],
    candidates: list[Candidate],
    acc_drop: dict[str, float],
    dsmi: dict[str, dict[str, dict[str, float]]],
) -> list[Correlation]:
    """Pearson r per (candidate, kind) over the layers strictly upstream of the candidate."""
    out = []
    for c in candidates:
        upstream = [l for l in layers if c.node in runner.descendants(runner.layer_node[l]) and c.node in dsmi.get(l, {})]
        for kind in KINDS:
            if len(upstream) < MIN_POINTS:
                out.append(Correlation(c.node, c.name, kind, None, len(upstream), f"fewer than {MIN_POINTS} upstream layers"))
                continue
            xs = [dsmi[l][c.node][kind] for l in upstream]
            ys = [acc_drop[l] for l in upstream]
            r = pearson(xs, ys)
            out.append(Correlation(c.node, c.name, kind, r, len(upstream), "" if r is not None else "constant values"))
    return out


@dataclass
class Selection:
    observers: list[Correlation]  # selected (node, kind) pairs with their r
    fallback: str | None  # None | "best-3" | "paper-default"
    note: str = ""


def select(correlations: list[Correlation], candidates: list[Candidate]) -> Selection:
    valid = [c for c in correlations if c.r is not None]
    chosen = [c for c in valid if c.r > THRESHOLD]
    if chosen:
        return Selection(chosen, None)
    if valid:
        best = sorted(valid, key=lambda c: (-c.r, c.node, c.kind))[:FALLBACK_N]
        rs = ", ".join(f"{c.name}/{c.kind} r={c.r:.2f}" for c in best)
        return Selection(
            sorted(best, key=lambda c: ([x.node for x in candidates].index(c.node), c.kind)),
            "best-3",
            f"no observer has Pearson r > {THRESHOLD} between ΔSMI and the accuracy drop; kept the best "
            f"{len(best)} by r ({rs})",
        )
    finals = [c for c in candidates if c.role in ("global-pool", "logits")] or candidates[-1:]
    chosen = [Correlation(c.node, c.name, "LY", None, 0, "paper default") for c in finals]
    return Selection(
        chosen,
        "paper-default",
        "no correlation could be computed (too few layers, or no single-layer perturbation changed the accuracy); "
        "using the paper's heuristic, ΔSMI(L;Y) at the final nodes",
    )


def layer_observers(
    runner: SuffixRunner, layer: str, selection: Selection, candidates: list[Candidate]
) -> tuple[list[tuple[str, str]], str | None]:
    """(node, kind) pairs scored for ``layer``, and the fallback used (None, "nearest", "own-output")."""
    desc = runner.descendants(runner.layer_node[layer])
    chosen = [(c.node, c.kind) for c in selection.observers if c.node in desc]
    if chosen:
        return chosen, None
    down = downstream(runner, layer, candidates)
    if down:
        nearest = min(down, key=lambda c: c.index)
        return [(nearest.node, k) for k in KINDS], "nearest"
    own = runner.layer_node[layer]
    return [(own, k) for k in KINDS], "own-output"
