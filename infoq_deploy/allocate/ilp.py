"""Bit allocation as an integer linear program (InfoQ paper, Eq. 5), solved with CBC via PuLP.

One binary per (layer, allowed (w_bits, a_bits) pair), exactly one per layer;
minimise sum S_w(l, w) + alpha * S_a(l, a) subject to every budget, each a linear
function of the binaries (costs.py states every metric per layer).

Ties between equally scored allocations go to the one with more bits (weights
first, then activations), through a penalty far below any real score difference:
when the scores cannot tell choices apart, the safer one for accuracy wins. CBC
runs single-threaded, so the same inputs give the same allocation.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pulp

from infoq_deploy.allocate.budgets import Budget, describe_best, folded_for, parse_budget, resolve_budget, size_mb
from infoq_deploy.allocate.costs import (
    MAX_METRICS, boundaries_modelled, fp32_size_bytes, integer, layer_cost, model_constant, model_cost,
    total_weight_params, unfused_latency)
from infoq_deploy.allocate.fpga_resources import why_not as fpga_why_not
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.targets import FPGA_METRICS
from infoq_deploy.importing.layers import Layer

FORMAT = "infoq-deploy/allocation/1"
REL_TOL = 1e-9  # a budget counts as met when used <= limit * (1 + REL_TOL): float sums, not slack
_TIE = 1e-10  # total tie-break weight over all layers, relative to the largest score
_FLOAT_BITS = 32


@dataclass
class Allocation:
    layers: list[dict]  # each {"name", "w_bits", "a_bits"} in layer order
    cost: dict[str, float]  # every metric of the target: "size_bytes", "bitops", "latency_ms", ...
    objective: float  # sum S_w + alpha * S_a of the chosen bits
    status: str  # PuLP status string
    solve_seconds: float
    budgets: list[dict]  # each {"text", "metric", "limit", "used", "unit"}, limit/used in base units
    alpha: float = 1.0


def allocate(
    layers: list[Layer],
    s_w: Mapping[str, Mapping],
    s_a: Mapping[str, Mapping],
    target,
    budgets: Sequence[Budget],
    alpha: float = 1.0,
    pairs: Mapping[tuple[str, str], Mapping[tuple[int, int], float]] | None = None,
) -> Allocation:
    """The bits of least total score within every budget. ``pairs`` (CLADO's cross-layer
    terms, `profile/clado.py`) adds, for two layers at weight bits (b_i, b_j), a score of any
    sign; the products of choices are linearised exactly, so CBC still proves the optimum."""
    if not layers:
        raise UserError("the layer table is empty, so there is nothing to allocate; check the model import")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise UserError(f"alpha must be a finite number >= 0, not {alpha!r}")
    layers = sorted(layers, key=lambda l: l.order)
    n = len(layers)
    choices = [target.layer_choices(i, n) for i in range(n)]
    sw = _scores(s_w, layers, choices, 0, "weight", target)
    sa = _scores(s_a, layers, choices, 1, "activation", target) if alpha else [{} for _ in layers]
    score = [[sw[i].get(w, 0.0) + alpha * sa[i].get(a, 0.0) for w, a in choices[i]] for i in range(n)]
    resolved = [resolve_budget(b, layers, target) for b in budgets]
    target = folded_for(resolved, target)
    rows = [_budget_row(b, layers, choices, target) for b in resolved]
    _check_each_budget(resolved, rows, layers, target)

    cross = _cross_terms(pairs or {}, layers, choices)
    w_of = [[w for w, _ in c] for c in choices]
    pick, status, seconds = _solve(score, rows, cross, w_of)
    if status == "Infeasible":
        raise UserError(_joint_message(resolved, rows, layers, target))
    if status != "Optimal":
        raise RuntimeError(f"CBC stopped with status {status!r} on a bit-allocation problem")

    bits = [choices[i][k] for i, k in enumerate(pick)]
    used = [_used(b, layers, bits, target) for b in resolved]
    return Allocation(
        layers=[{"name": l.name, "w_bits": w, "a_bits": a} for l, (w, a) in zip(layers, bits)],
        cost=model_costs(layers, bits, target),
        objective=sum(score[i][k] for i, k in enumerate(pick))
        + sum(c.get((w_of[i][pick[i]], w_of[j][pick[j]]), 0.0) for (i, j), c in cross.items()),
        status=status,
        solve_seconds=seconds,
        budgets=[
            {"text": b.text, "metric": b.metric, "limit": b.limit, "used": u, "unit": b.unit}
            for b, u in zip(resolved, used)
        ],
        alpha=float(alpha),
    )


def model_costs(layers: Sequence[Layer], bits: Sequence[tuple[int, int]], target) -> dict[str, float]:
    """Every metric the target reports, under the key names of the allocation JSON."""
    out: dict[str, float] = {}
    for metric in target.metrics:
        if metric == "size":
            size = model_cost("size", layers, bits)
            out["size_bytes"] = size
            out["size_mb"] = size_mb(size)
            out["compression"] = fp32_size_bytes(layers) / size
            out["avg_weight_bits"] = model_cost("wbits", layers, bits)
        elif metric == "bitops":
            out["bitops"] = model_cost("bitops", layers, bits)
        elif metric == "latency":
            out["latency_ms"] = model_cost("latency", layers, bits, target)
        elif metric in FPGA_METRICS and fpga_why_not(layers) is None:  # else the report says why
            out[metric] = model_cost(metric, layers, bits, target)
            out["fold_cycles_per_frame"] = float(target.fpga.cycles_per_frame)
    return out


# ---------------------------------------------------------------- inputs


def _scores(table, layers, choices, side: int, what: str, target) -> list[dict[int, float]]:
    """Per layer {bits: score} with int keys; checks every bit-width the layer may take is scored."""
    if not isinstance(table, Mapping):
        raise UserError(f"the {what} sensitivity table must map layer names to {{bits: score}}; re-run profile")
    names = {l.name for l in layers}
    extra = sorted(set(table) - names)
    if extra:
        raise UserError(
            f"the {what} sensitivity table has layers the model lacks ({', '.join(extra[:3])}); "
            "it was profiled on another model: re-run profile on this one"
        )
    out = []
    for layer, layer_choices in zip(layers, choices):
        needed = sorted({c[side] for c in layer_choices})
        if layer.name not in table:
            if len(needed) == 1:  # no choice on this side: a constant score cannot change the argmin
                out.append({})
                continue
            raise UserError(
                f"the {what} sensitivity table has no scores for layer {layer.name}; re-run profile on this model"
            )
        row = {}
        scores = table[layer.name]
        if not isinstance(scores, Mapping):
            raise UserError(
                f"the {what} sensitivity table maps layer {layer.name} to {type(scores).__name__}, "
                "not {bits: score}; re-run profile"
            )
        for k, v in scores.items():
            if isinstance(k, bool) or not (isinstance(k, int) or (isinstance(k, str) and k.strip().isdigit())):
                raise UserError(
                    f"the {what} sensitivity table has bit-width {k!r} for layer {layer.name}; bit-widths are integers"
                )
            bits = int(k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise UserError(
                    f"the {what} score of layer {layer.name} at {bits} bits is {v!r}; scores must be finite numbers"
                )
            row[bits] = float(v)
        for b in needed:
            if b not in row and b != _FLOAT_BITS and len(needed) > 1:
                raise UserError(
                    f"the {what} sensitivity table has no score for layer {layer.name} at {b} bits, which target "
                    f"{target.name} allows; re-run profile with these bit-widths"
                )
        out.append(row)
    return out


@dataclass
class _Row:
    """One budget as coefficients per (layer, choice) <= rhs, in base units. A budget on a
    maximum over layers (cycles) is a limit on every layer: a choice over it costs infinity
    (the ILP never sees it: `_undominated` drops it), one within it costs nothing; ``best``
    is then the lowest maximum any allocation reaches."""

    coef: list[list[float]]
    rhs: float
    best: float | None = None  # for a maximum: max over layers of the layer's cheapest choice
    # latency where the runtime runs an unfused integer layer in float (costs.unfused): per
    # (layer i, choice k) an extra cost paid when some group of i's readers has no choice with a
    # quantized input: (i, k, extra, [[(j, c), ...] per group: the reader choices that quantize])
    boundary: list[tuple[int, int, float, list[list[tuple[int, int]]]]] = field(default_factory=list)

    def lower(self) -> list[list[float]]:
        """Per (layer, choice) the least it can add to the row (a negative boundary cost included)."""
        low = [list(c) for c in self.coef]
        for i, k, extra, _ in self.boundary:
            low[i][k] += min(0.0, extra)
        return low

    def total(self, pick: list[int]) -> float:
        """The row's value for one choice per layer, boundary costs included."""
        value = sum(self.coef[i][k] for i, k in enumerate(pick))
        return value + sum(extra for i, k, extra, groups in self.boundary
                           if pick[i] == k and any(all(pick[j] != c for j, c in g) for g in groups))


def _budget_row(b: Budget, layers, choices, target) -> _Row:
    last = len(layers) - 1
    coef = [[layer_cost(b.metric, l, w, a, target, last=i == last) for w, a in cs]
            for i, (l, cs) in enumerate(zip(layers, choices))]
    if b.metric in MAX_METRICS:
        best = max(min(c) for c in coef)
        return _Row([[0.0 if _met(c, b.limit) else math.inf for c in cs] for cs in coef], b.limit, best)
    if coef:  # the model's constant part (a measured rest of the graph) rides on the first layer
        coef[0] = [c + model_constant(b.metric, target) for c in coef[0]]
    # the average weight bit-width is linear once multiplied out by the total weight count
    rhs = b.limit * total_weight_params(layers) if b.metric == "wbits" else b.limit
    boundary = _boundary(layers, choices, target) if b.metric == "latency" and boundaries_modelled(target) else []
    return _Row(coef, rhs, boundary=boundary)


def _boundary(layers, choices, target) -> list:
    index = {l.name: i for i, l in enumerate(layers)}
    out = []
    for i, (layer, cs) in enumerate(zip(layers, choices)):
        if not layer.readers:
            continue
        groups = [[(index[name], c) for name in group if name in index
                   for c, (_, a) in enumerate(choices[index[name]]) if a < _FLOAT_BITS] for group in layer.readers]
        for k, (w, a) in enumerate(cs):
            if not integer(w, a):
                continue
            extra = unfused_latency(layer, w, a, target) - layer_cost("latency", layer, w, a, target)
            if extra:
                out.append((i, k, extra, groups))
    return out


def _used(b: Budget, layers, bits, target) -> float:
    return model_cost(b.metric, layers, bits, target)


def _met(total: float, rhs: float) -> bool:
    return total <= rhs * (1 + REL_TOL)


# ---------------------------------------------------------------- infeasibility


def _check_each_budget(budgets, rows, layers, target) -> None:
    """A single budget is feasible exactly when every layer at its cheapest choice meets it."""
    failed = []
    for b, row in zip(budgets, rows):
        best = _best(row)
        if not _met(best, row.rhs):
            failed.append(f"{describe_best(b, _base(b, best, layers), layers)} ({_cheapest_note(target)})")
            failed[-1] = f"the budget {b.text} cannot be met on {target.name}: {failed[-1]}"
    if failed:
        unpin = " or free the pinned layers (--no-pin, --pin last=W,A)" if target.pin_first or target.pin_last else ""
        raise UserError("; ".join(failed) + "; raise the budget" + ("s" if len(failed) > 1 else "") + unpin)


def _joint_message(budgets, rows, layers, target) -> str:
    each = "; ".join(
        describe_best(b, _base(b, _best(row), layers), layers) for b, row in zip(budgets, rows)
    )
    texts = " and ".join(b.text for b in budgets)
    return (
        f"the budgets {texts} cannot be met together on {target.name}: each alone can ({each}), "
        "but no allocation meets all of them at once; raise one of them"
    )


def _best(row: _Row) -> float:
    """The lowest value of the row's metric any allocation reaches, budgets apart."""
    return row.best if row.best is not None else sum(min(c) for c in row.lower())


def _base(b: Budget, row_total: float, layers) -> float:
    return row_total / total_weight_params(layers) if b.metric == "wbits" else row_total


def _cheapest_note(target) -> str:
    pins = target.pin_note()
    return "every layer at its cheapest allowed choice" + (f", {pins}" if pins else "")


# ---------------------------------------------------------------- the ILP


def _cross_terms(pairs, layers, choices) -> dict[tuple[int, int], dict[tuple[int, int], float]]:
    """Layer-pair terms by (layer index i < j) and (weight bits of i, of j)."""
    index = {layer.name: i for i, layer in enumerate(layers)}
    out = {}
    for (a, b), by_bits in pairs.items():
        if a not in index or b not in index or a == b:
            raise UserError(f"the sensitivity table's pair ({a}, {b}) names layers this allocation does not have; "
                            "regenerate the table")
        i, j = sorted((index[a], index[b]))
        allowed_i, allowed_j = {w for w, _ in choices[i]}, {w for w, _ in choices[j]}
        terms = out.setdefault((i, j), {})
        for (wa, wb), c in by_bits.items():
            wi, wj = (wb, wa) if index[a] > index[b] else (wa, wb)
            if c and wi in allowed_i and wj in allowed_j:
                terms[(wi, wj)] = terms.get((wi, wj), 0.0) + float(c)
    return {key: terms for key, terms in out.items() if terms}


def _solve(score: list[list[float]], rows: list[_Row], cross=None, w_of=None) -> tuple[list[int], str, float]:
    """Returns the chosen index per layer, the PuLP status and CBC's wall time."""
    cross = cross or {}
    scale = max([abs(v) for layer in score for v in layer] + [abs(v) for t in cross.values() for v in t.values()],
                default=0.0) or 1.0
    weight = _objective(score, scale)
    cross = {key: {kl: c / scale for kl, c in t.items()} for key, t in cross.items()}
    # dominance assumes each layer's score and costs stand alone; with pair terms or boundary
    # costs only the fit test holds
    keep = _undominated(weight, rows, dominance=not cross and not any(row.boundary for row in rows))
    if not all(keep):  # some layer has no choice that fits every budget together
        return [], "Infeasible", 0.0
    rhs = [1.0] * len(rows)
    for _ in range(4):
        prob, x = _build(weight, rows, rhs, keep, cross, w_of)
        t0 = time.perf_counter()
        prob.solve(_solver())
        seconds = time.perf_counter() - t0
        status = pulp.LpStatus[prob.status]
        if status != "Optimal":
            return [], status, seconds
        pick = [kept[_picked(xs)] for kept, xs in zip(keep, x)]
        over = [row.total(pick) / row.rhs - 1 for row in rows]
        if all(o <= REL_TOL for o in over):
            return pick, status, seconds
        # CBC's feasibility tolerance let a row exceed its limit by ~1e-7: tighten only that row
        rhs = [r - 2 * o if o > REL_TOL else r for r, o in zip(rhs, over)]
    raise RuntimeError("CBC kept returning allocations a hair over budget; report this with the inputs")


def _objective(score: list[list[float]], scale: float | None = None) -> list[list[float]]:
    """Scores scaled to at most 1 (so CBC's absolute tolerances mean the same on every model)
    plus the tie-break: choices are listed ascending in bits, the last (most bits) pays nothing."""
    scale = scale or max((abs(s) for layer in score for s in layer), default=0.0) or 1.0
    tie = _TIE / len(score)
    return [
        [s / scale + tie * (len(layer) - 1 - k) / max(len(layer) - 1, 1) for k, s in enumerate(layer)]
        for layer in score
    ]


def _undominated(weight: list[list[float]], rows: list[_Row], dominance: bool = True) -> list[list[int]]:
    """Per layer, the choices an optimum may use. Dropped: a choice that alone breaks a budget
    with every other layer at its cheapest, and a choice another one beats in the objective
    (tie-break included) while costing no more in any budget: swapping it in never hurts.
    The ILP stays exact; CBC needs ~1.5x less time on the benchmark problem."""
    lower = [row.lower() for row in rows]
    slack = np.array([row.rhs * (1 + REL_TOL) - sum(min(c) for c in low) for row, low in zip(rows, lower)])
    keep = []
    for i, w in enumerate(weight):
        cost = np.array([low[i] for low in lower]).T.reshape(len(w), len(rows))  # choices x budgets
        fits = np.all(cost - cost.min(axis=0) <= slack, axis=1)
        w = np.asarray(w)
        # better[d, k]: d is strictly better (or equal and listed first) in the objective than k
        better = (w[:, None] < w[None, :]) | ((w[:, None] == w[None, :]) & np.tri(len(w), k=-1, dtype=bool).T)
        no_costlier = np.all(cost[:, None, :] <= cost[None, :, :], axis=2)
        dominated = np.any(better & no_costlier & fits[:, None], axis=0) if dominance else np.zeros(len(w), bool)
        keep.append([int(k) for k in np.flatnonzero(fits & ~dominated)])
    return keep


def _build(weight: list[list[float]], rows: list[_Row], rhs: list[float], keep: list[list[int]], cross=None,
           w_of=None):
    # LpAffineExpression from (variable, coefficient) pairs: PuLP's operator overloading is
    # the slow part of building otherwise
    prob = pulp.LpProblem("infoq_bit_allocation", pulp.LpMinimize)
    # PuLP 3.3 deprecates free-standing LpVariable in favour of add_variable (absent before 3.3)
    var = getattr(prob, "add_variable", None) or pulp.LpVariable
    x = [[var(f"x_{i}_{k}", cat=pulp.LpBinary) for k in kept] for i, kept in enumerate(keep)]
    pairs = [(i, k, v) for i, kept in enumerate(keep) for k, v in zip(kept, x[i])]
    terms = [(v, weight[i][k]) for i, k, v in pairs]
    # Pair terms depend on weight bits only: z_iw = sum of layer i's choices with w-bit weights
    # (0 or 1, one choice per layer), and y = z_iw * z_jv exactly, with only the side of the
    # linearisation the objective presses on: a positive term is pushed down, so y >= z_iw +
    # z_jv - 1 and y >= 0 suffice; a negative one is pushed up, so y <= z_iw and y <= z_jv
    def z(i, w):
        return [(v, 1) for k, v in zip(keep[i], x[i]) if w_of[i][k] == w]

    for (i, j), t in (cross or {}).items():
        for (wi, wj), c in t.items():
            zi, zj = z(i, wi), z(j, wj)
            if not zi or not zj:  # that width was pruned (it cannot fit a budget)
                continue
            y = var(f"y_{i}_{wi}_{j}_{wj}", lowBound=0, upBound=1)
            if c > 0:
                prob.addConstraint(pulp.LpAffineExpression([(y, 1)] + [(v, -1) for v, _ in zi + zj]) >= -1)
            else:
                prob.addConstraint(pulp.LpAffineExpression([(y, 1)] + [(v, -1) for v, _ in zi]) <= 0)
                prob.addConstraint(pulp.LpAffineExpression([(y, 1)] + [(v, -1) for v, _ in zj]) <= 0)
            terms.append((y, c))
    prob.setObjective(pulp.LpAffineExpression(terms))
    for i, xs in enumerate(x):
        prob.addConstraint(pulp.LpAffineExpression([(v, 1) for v in xs]) == 1, f"one_choice_{i}")
    where = {(i, k): v for i, k, v in pairs}
    for j, row in enumerate(rows):
        # budget rows scaled to a right-hand side of 1, for the same reason as the objective
        terms = [(v, row.coef[i][k] / row.rhs) for i, k, v in pairs]
        # an unfused integer layer's extra time (of either sign), u = 1 exactly when x_ik = 1 and
        # some reader group has no quantizing choice. The row presses u down where the extra is
        # positive: u >= x_ik - (that group's quantizing choices), u >= 0 suffice; up where it is
        # negative: u <= x_ik and u <= sum over groups of (1 - h_g), with h_g >= each of the
        # group's quantizing choices (h_g is 1 when one is picked)
        for n, (i, k, extra, groups) in enumerate(row.boundary):
            if (i, k) not in where:
                continue
            u = var(f"u_{j}_{n}", lowBound=0, upBound=1)
            x_ik = where[(i, k)]
            if extra > 0:
                for g in groups:
                    readers = [(where[key], 1) for key in g if key in where]
                    prob.addConstraint(pulp.LpAffineExpression([(u, 1), (x_ik, -1)] + readers) >= 0)
            else:
                prob.addConstraint(pulp.LpAffineExpression([(u, 1), (x_ik, -1)]) <= 0)
                h = [var(f"h_{j}_{n}_{m}", lowBound=0, upBound=1) for m in range(len(groups))]
                for h_g, g in zip(h, groups):
                    for key in g:
                        if key in where:
                            prob.addConstraint(pulp.LpAffineExpression([(h_g, 1), (where[key], -1)]) >= 0)
                prob.addConstraint(pulp.LpAffineExpression([(u, 1)] + [(h_g, 1) for h_g in h]) <= len(groups))
            terms.append((u, extra / row.rhs))
        prob.addConstraint(pulp.LpAffineExpression(terms) <= rhs[j], f"budget_{j}")
    return prob, x


def _picked(xs) -> int:
    hot = [k for k, v in enumerate(xs) if (v.value() or 0) > 0.5]
    if len(hot) != 1:
        raise RuntimeError(f"CBC returned {len(hot)} choices for one layer")
    return hot[0]


def _solver():
    # increment: CBC skips solutions less than this much better than the incumbent (default
    # 1e-5), which could hide real score differences; zero gaps: prove optimality.
    # preprocess off: CBC's integer preprocessing slows these multiple-choice knapsacks 2-6x
    # (bench/bench_allocator.py). No "threads": CBC's "-threads 1" adds a worker thread.
    return pulp.PULP_CBC_CMD(msg=False, gapRel=0, gapAbs=0, options=["increment 1e-12", "preprocess off"])


# ---------------------------------------------------------------- JSON


def allocation_to_json(a: Allocation, target, sensitivity_meta: dict | None) -> dict:
    return {
        "format": FORMAT,
        "target": target.name,
        "alpha": a.alpha,
        "budgets": a.budgets,
        "layers": a.layers,
        "cost": a.cost,
        "objective": a.objective,
        "solver": {"name": "CBC", "status": a.status, "seconds": a.solve_seconds},
        "sensitivity": sensitivity_meta,
        "pins": target.pins(),
    }


def allocation_bits(doc: dict) -> dict[str, tuple[int, int]]:
    """Layer name -> (w_bits, a_bits) of an allocation document."""
    return {d["name"]: (int(d["w_bits"]), int(d["a_bits"])) for d in doc["layers"]}


def check_rules(doc: dict, layers: Sequence[Layer], target, name: str = "the allocation") -> None:
    """UserError unless every layer's (w_bits, a_bits) is one ``target`` allows at its place (pins included),
    whatever produced the allocation."""
    layers = sorted(layers, key=lambda l: l.order)
    target = pinned_as_allocated(doc, target)
    bits = allocation_bits(doc)
    bad = []
    for i, layer in enumerate(layers):
        allowed = target.layer_choices(i, len(layers))
        pair = bits[layer.name]
        if pair not in allowed:
            why = f"pinned at w{allowed[0][0]}/a{allowed[0][1]}" if len(allowed) == 1 else "not an allowed pair"
            bad.append(f"{layer.name} at w{pair[0]}/a{pair[1]} ({why})")
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise UserError(f"{name} gives bit-widths target {target.name} does not allow: {'; '.join(bad[:3])}{more}; "
                        f"it allows {target.choices_note()}{', ' + target.pin_note() if target.pin_note() else ''}; "
                        "re-allocate for this target")


def pinned_as_allocated(doc: dict, target):
    """``target`` with the pins the allocation was made under: the target's own, or those the
    user set with --pin / --no-pin (recorded in the document, and shown in the report)."""
    pins = doc.get("pins")
    if pins is None or pins.get("from") == "target":
        return target
    return target.with_pins(pins.get("first"), pins.get("last"), pins["from"])


def recost(doc: dict, layers: Sequence[Layer], target, bits: Mapping[str, tuple[int, int]] | None = None) -> dict:
    """``doc`` with its costs, budget limits and budget use computed from ``bits`` (default: the
    document's own) and the model's layers: a cost is never read back from a file."""
    layers = sorted(layers, key=lambda l: l.order)
    bits = allocation_bits(doc) if bits is None else bits
    chosen = [tuple(bits[l.name]) for l in layers]
    resolved = [resolve_budget(parse_budget(b["text"]), layers, target) for b in doc["budgets"]]
    target = folded_for(resolved, target)
    budgets = [dict(b, metric=r.metric, limit=r.limit, used=model_cost(r.metric, layers, chosen, target))
               for b, r in zip(doc["budgets"], resolved)]
    return dict(doc, layers=[{"name": l.name, "w_bits": w, "a_bits": a} for l, (w, a) in zip(layers, chosen)],
                cost=model_costs(layers, chosen, target), budgets=budgets)


def load_allocation(path: str | os.PathLike) -> dict:
    """Read an allocation JSON; UserError naming the file and the problem when it is malformed."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"allocation file {path} does not exist; run allocate first or fix the path") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); re-run allocate") from None
    return validate_allocation(doc, path)


def validate_allocation(doc, where) -> dict:
    """``doc`` if it is a well-formed allocation document; UserError naming ``where`` otherwise."""
    path = where

    def bad(what: str) -> UserError:
        return UserError(f"{path} is not a valid allocation: {what}; re-run allocate")

    if not isinstance(doc, dict):
        raise bad("the top level must be an object")
    required = {"format", "target", "alpha", "budgets", "layers", "cost", "objective", "solver", "sensitivity"}
    if doc.get("format") != FORMAT:
        raise bad(f"'format' is {doc.get('format')!r}, expected {FORMAT!r}")
    if missing := sorted(required - set(doc)):
        raise bad(f"key '{missing[0]}' is missing")
    if unknown := sorted(set(doc) - required - {"pins"}):  # pins: optional, absent in older files
        raise bad(f"key '{unknown[0]}' is not part of the format")
    if not isinstance(doc["target"], str):
        raise bad("'target' must be a string")
    if not _is_number(doc["alpha"]) or not _is_number(doc["objective"]):
        raise bad("'alpha' and 'objective' must be numbers")
    layers = doc["layers"]
    if not isinstance(layers, list) or not layers:
        raise bad("'layers' must be a non-empty list")
    seen = set()
    for i, l in enumerate(layers):
        if not isinstance(l, dict) or set(l) != {"name", "w_bits", "a_bits"}:
            raise bad(f"layers[{i}] must have exactly the keys name, w_bits, a_bits")
        if not isinstance(l["name"], str) or l["name"] in seen:
            raise bad(f"layers[{i}].name must be a string naming each layer once")
        seen.add(l["name"])
        for k in ("w_bits", "a_bits"):
            b = l[k]
            if not isinstance(b, int) or isinstance(b, bool) or not (2 <= b <= 16 or b == _FLOAT_BITS):
                raise bad(f"layers[{i}].{k} is {b!r}; bit-widths are 2..16 or 32 (float)")
    if not isinstance(doc["cost"], dict) or not all(_is_number(v) for v in doc["cost"].values()):
        raise bad("'cost' must map metric names to numbers")
    if not isinstance(doc["budgets"], list) or not all(
        isinstance(b, dict) and {"text", "metric", "limit", "used"} <= set(b) for b in doc["budgets"]
    ):
        raise bad("'budgets' must be a list of {text, metric, limit, used, unit}")
    for i, b in enumerate(doc["budgets"]):
        try:
            parse_budget(b["text"]) if isinstance(b["text"], str) else None
        except UserError:
            raise bad(f"budgets[{i}].text {b['text']!r} is not a budget") from None
        if not isinstance(b["text"], str):
            raise bad(f"budgets[{i}].text must be a budget string such as 4.5MB")
    if not isinstance(doc["solver"], dict) or not {"name", "status", "seconds"} <= set(doc["solver"]):
        raise bad("'solver' must be {name, status, seconds}")
    if doc["sensitivity"] is not None and not isinstance(doc["sensitivity"], dict):
        raise bad("'sensitivity' must be an object or null")
    pins = doc.get("pins", {"first": None, "last": None, "from": "target"})
    if not (isinstance(pins, dict) and isinstance(pins.get("from"), str)
            and all(p is None or (isinstance(p, list) and len(p) == 2 and all(isinstance(b, int) for b in p))
                    for p in (pins.get("first"), pins.get("last")))):
        raise bad("'pins' must be {first, last, from} with [w_bits, a_bits] or null for first and last")
    return doc


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
