"""Run only the part of an fx graph that a single-layer perturbation can change.

InfoQ perturbs one layer at a time (its weights, or its input activation) and looks at
observer outputs downstream. Everything computed before that layer's first call is the
same as in the 8-bit baseline, so it is computed once per layer (the *prefix*) and kept
as a *frontier*: the values of every node before the cut that a node at or after the
cut still reads. Each perturbed run then evaluates only the *suffix* from that frontier,
and only the nodes the requested observers depend on.

The runner is a small fx interpreter with the deployed quantizer built in: every
quantizable layer (``layers.Layer``) runs with its weights fake-quantized to
``base_bits`` and its input activation fake-quantized to ``base_bits`` with the
calibrated range, exactly as ``quantizer.quantize_weight`` / ``quantize_act`` define;
any layer can be overridden (a ``Perturb``, or several together for pairwise terms).
``base_bits=32`` (or no activation ranges) gives the float model, which is how the runner
is tested against ``gm(x)``.

Frontier values are per batch (``list[dict[node_name, Tensor]]``); batches are fixed at
construction so a resumed sweep evaluates the same operations on the same tensors and
gets bit-identical results.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch
import torch.fx
from torch import nn

from infoq_deploy.core.quantizer import FLOAT_BITS, ActRange, QuantSpec, quantize_act, quantize_weight
from infoq_deploy.importing.joins import plan_joins
from infoq_deploy.importing.layers import Layer

Env = dict[str, torch.Tensor]
Transform = Callable[[torch.Tensor], torch.Tensor]
Tap = Transform | None | str | tuple[str, Transform | None]


@dataclass(frozen=True)
class Perturb:
    """Quantize one layer's weights (``what="w"``) or input activation (``"a"``) to ``bits``."""

    layer: str
    what: str  # "w" | "a"
    bits: int


Perturbation = Perturb | tuple[Perturb, ...] | None


def _by_layer(perturb: Perturbation) -> dict[tuple[str, str], int]:
    """{(layer, "w" | "a"): bits} of one perturbation or of several applied together."""
    if perturb is None:
        return {}
    return {(p.layer, p.what): p.bits for p in (perturb if isinstance(perturb, tuple) else (perturb,))}


class NonFiniteError(RuntimeError):
    """A node produced NaN or inf; ``node`` names it (the layer name for quantizable layers)."""

    def __init__(self, node: str):
        super().__init__(node)
        self.node = node


def _load_arg(a, env: Env):
    return torch.fx.node.map_arg(a, lambda n: env[n.name])


class SuffixRunner:
    """Evaluate a traced model from any layer's cut point, with the deployed quantizer."""

    def __init__(
        self,
        gm: torch.fx.GraphModule,
        layers: list[Layer],
        spec: QuantSpec | None = None,
        act_ranges: Mapping[str, ActRange] | None = None,
        base_bits: int = 8,
    ):
        # own copy: in-place ops are switched off so frontier tensors are never mutated
        self.gm = copy.deepcopy(gm).eval()
        for m in self.gm.modules():
            if getattr(m, "inplace", False) is True:
                m.inplace = False
        self.layers = {layer.name: layer for layer in layers}
        self.spec = spec if spec is not None else QuantSpec()
        self.act_ranges = dict(act_ranges) if act_ranges is not None else None
        self.base_bits = base_bits
        self.modules = dict(self.gm.named_modules())
        self.nodes: list[torch.fx.Node] = list(self.gm.graph.nodes)
        self.index = {n.name: i for i, n in enumerate(self.nodes)}
        self.by_name = {n.name: n for n in self.nodes}
        self.output_node = next(n for n in self.nodes if n.op == "output")
        out_arg = self.output_node.args[0]
        # the node whose value the model returns (logits), when it returns one tensor
        self.result_node: str | None = out_arg.name if isinstance(out_arg, torch.fx.Node) else None
        self.placeholders = [n.name for n in self.nodes if n.op == "placeholder"]

        # first call of every quantizable layer = its cut point; later calls share weights
        self.layer_node: dict[str, str] = {}
        for n in self.nodes:
            if n.op == "call_module" and n.target in self.layers and n.target not in self.layer_node:
                self.layer_node[n.target] = n.name
        missing = [name for name in self.layers if name not in self.layer_node]
        if missing:
            raise ValueError(f"layers not called in the graph: {missing}")
        # one quantizer per tensor (importing/joins.py): these consumers read a layer's input
        # through that layer's input quantizer, as the deployed model does
        self.shares: dict[str, dict[str, str]] = {}  # consumer node -> {source node: layer}
        if self.act_ranges is not None and base_bits < FLOAT_BITS:
            for share in plan_joins(self.gm, set(self.layers)).shares:
                self.shares.setdefault(share.consumer, {})[share.source] = share.layer
        # a perturbation of a layer's input changes its shared consumers too: they may come first
        self._cut = {name: self.index[node] for name, node in self.layer_node.items()}
        for consumer, sources in self.shares.items():
            for layer in sources.values():
                self._cut[layer] = min(self._cut[layer], self.index[consumer])
        self._w_base = {name: self._qweight(name, base_bits) for name in self.layers}
        self._needed_cache: dict[tuple[int, tuple[str, ...]], list[int]] = {}
        self._desc_cache: dict[str, frozenset[str]] = {}

    # ------------------------------------------------------------------ graph facts

    def cut(self, layer: str) -> int:
        """Index of the first node a perturbation of the layer changes: its first call, or an
        earlier consumer that shares its input quantizer."""
        return self._cut[layer]

    def frontier_names(self, cut: int) -> list[str]:
        """Nodes before ``cut`` whose value some node at or after ``cut`` reads."""
        out = []
        for n in self.nodes[:cut]:
            if any(self.index[u.name] >= cut for u in n.users):
                out.append(n.name)
        return out

    def descendants(self, node: str) -> frozenset[str]:
        """Names of all nodes reachable from ``node`` (not including it), output node excluded."""
        if node not in self._desc_cache:
            seen: set[str] = set()
            stack = [self.by_name[node]]
            while stack:
                for u in stack.pop().users:
                    if u.name not in seen and u.op != "output":
                        seen.add(u.name)
                        stack.append(u)
            self._desc_cache[node] = frozenset(seen)
        return self._desc_cache[node]

    def _needed(self, start: int, targets: tuple[str, ...]) -> list[int]:
        """Indices >= start of the nodes the targets depend on, in topological order."""
        key = (start, targets)
        if key not in self._needed_cache:
            need: set[int] = set()
            stack = [self.by_name[t] for t in targets]
            while stack:
                n = stack.pop()
                i = self.index[n.name]
                if i < start or i in need:
                    continue
                need.add(i)
                stack.extend(n.all_input_nodes)
            self._needed_cache[key] = sorted(need)
        return self._needed_cache[key]

    # ------------------------------------------------------------------ quantizer

    def _qweight(self, layer: str, bits: int) -> torch.Tensor:
        w = self.modules[layer].weight.detach()
        return quantize_weight(w, bits, self.spec) if bits < FLOAT_BITS else w

    def _quant_input(self, name: str, x: torch.Tensor, perturb: dict) -> torch.Tensor:
        a_bits = perturb.get((name, "a"), self.base_bits)
        if self.act_ranges is not None and a_bits < FLOAT_BITS:
            return quantize_act(x, a_bits, self.act_ranges[name], self.spec)
        return x

    def _call_layer(self, name: str, x: torch.Tensor, perturb: dict, w_pert: dict[str, torch.Tensor]):
        m = self.modules[name]
        w = w_pert.get(name, self._w_base[name])
        x = self._quant_input(name, x, perturb)
        if isinstance(m, nn.Linear):
            return nn.functional.linear(x, w, m.bias)
        return m._conv_forward(x, w, m.bias)

    # ------------------------------------------------------------------ evaluation

    def _eval_node(self, n: torch.fx.Node, env: Env, perturb, w_pert):
        shared = self.shares.get(n.name)
        if shared:
            env = {**env, **{src: self._quant_input(layer, env[src], perturb) for src, layer in shared.items()}}
        args = _load_arg(n.args, env)
        kwargs = _load_arg(n.kwargs, env)
        if n.op == "placeholder":
            return env[n.name]
        if n.op == "get_attr":
            obj = self.gm
            for part in n.target.split("."):
                obj = getattr(obj, part)
            return obj
        if n.op == "call_module":
            if n.target in self.layers:
                return self._call_layer(n.target, args[0], perturb, w_pert)
            return self.modules[n.target](*args, **kwargs)
        if n.op == "call_function":
            if kwargs.get("inplace") is True:
                kwargs = {**kwargs, "inplace": False}
            return n.target(*args, **kwargs)
        if n.op == "call_method":
            obj, *rest = args
            if n.target.endswith("_") and not n.target.endswith("__") and isinstance(obj, torch.Tensor):
                obj = obj.clone()  # in-place method: never touch a shared value
            return getattr(obj, n.target)(*rest, **kwargs)
        raise RuntimeError(f"unsupported fx op {n.op}")

    def _display(self, node_name: str) -> str:
        n = self.by_name[node_name]
        return n.target if n.op == "call_module" and n.target in self.layers else node_name

    def _run_one(
        self,
        env: Env,
        start: int,
        order: list[int],
        keep: Callable[[int], bool],
        perturb: dict,
        w_pert: dict[str, torch.Tensor],
        check_finite: bool,
        on_value: Callable[[str, torch.Tensor], None] | None = None,
    ) -> Env:
        """Evaluate ``order`` (indices >= start) from ``env``; values are freed after their last use,
        and the returned env holds what ``keep`` keeps (and ``env``'s own values). ``on_value(name,
        value)`` sees each value of ``order`` as soon as it is computed."""
        with torch.no_grad():
            return self._run_one_inner(env, order, keep, perturb, w_pert, check_finite, on_value)

    def _run_one_inner(self, env, order, keep, perturb, w_pert, check_finite, on_value=None) -> Env:
        last_use: dict[str, int] = {}
        for i in order:
            for a in self.nodes[i].all_input_nodes:
                last_use[a.name] = max(last_use.get(a.name, -1), i)
        env = dict(env)
        for i in order:
            n = self.nodes[i]
            value = self._eval_node(n, env, perturb, w_pert)
            if check_finite and isinstance(value, torch.Tensor) and value.is_floating_point():
                if not bool(torch.isfinite(value).all()):
                    raise NonFiniteError(self._display(n.name))
            env[n.name] = value
            if on_value is not None:
                on_value(n.name, value)
            for a in n.all_input_nodes:
                if last_use.get(a.name) == i and not keep(self.index[a.name]):
                    env.pop(a.name, None)
            if n.name not in last_use and not keep(i):  # nothing here reads it, nobody keeps it
                env.pop(n.name)
        return env

    def start(self, batches: Iterable[torch.Tensor]) -> list[Env]:
        """The frontier at cut 0: the model inputs, one env per batch."""
        if len(self.placeholders) != 1:
            raise ValueError(f"the model takes {len(self.placeholders)} inputs; only single-input models are supported")
        return [{self.placeholders[0]: b} for b in batches]

    def advance(self, frontier: list[Env], start: int, stop: int, check_finite: bool = False) -> list[Env]:
        """Frontier at ``stop`` from the frontier at ``start`` (baseline configuration)."""
        if stop == start:
            return frontier
        order = list(range(start, stop))
        wanted = set(self.frontier_names(stop))
        out = []
        for env in frontier:
            new = self._run_one(env, start, order, lambda i: self.nodes[i].name in wanted, {}, {}, check_finite)
            out.append({k: v for k, v in new.items() if k in wanted})
        return out

    def run(
        self,
        frontier: list[Env],
        start: int,
        observers: Mapping[str, Tap],
        perturb: Perturbation = None,
        check_finite: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Evaluate from ``start`` and return every observer's output over all batches.

        ``observers`` maps a label to what to collect: a node name's value is the node's
        output flattened to (batch, features) float32, passed per batch through the
        transform (e.g. a projection onto random directions; ``None`` keeps it). The
        value may also be ``(node_name, transform)`` or just ``node_name`` (no transform), to
        collect one node under several labels. Only the nodes the observers depend on are evaluated; observers before
        ``start`` are read from the frontier. Several perturbations together need ``start`` at or
        before the earliest of their cuts.
        """
        taps = {
            label: tap if isinstance(tap, tuple) else (tap, None) if isinstance(tap, str) else (label, tap)
            for label, tap in observers.items()
        }
        targets = tuple(sorted({node for node, _ in taps.values()}, key=lambda s: self.index[s]))
        order = self._needed(start, targets)
        perturb = _by_layer(perturb)
        w_pert = {layer: self._qweight(layer, bits) for (layer, what), bits in perturb.items() if what == "w"}
        by_node: dict[str, list[tuple[str, Transform | None]]] = {}
        for label, (node, fn) in taps.items():
            by_node.setdefault(node, []).append((label, fn))
        chunks: dict[str, list[torch.Tensor]] = {label: [] for label in taps}

        def take(name: str, value: torch.Tensor) -> None:
            # transformed (projected) as soon as it is computed, so an observer's full activation
            # is freed at its last use like any other value: on EfficientNet-Lite0 the correlation
            # runs observe every layer downstream, which held all their outputs for a whole batch
            if name in by_node:
                flat = value.detach().reshape(value.shape[0], -1).float()
                for label, fn in by_node[name]:
                    chunks[label].append(fn(flat) if fn is not None else flat)

        for env in frontier:
            for t in targets:  # observers before the cut: read from the frontier
                if self.index[t] < start:
                    take(t, env[t])
            self._run_one(env, start, order, lambda i: False, perturb, w_pert, check_finite, on_value=take)
        return {label: torch.cat(c) for label, c in chunks.items()}


def split_batches(x: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
