"""Cost metrics of a bit allocation, in base units.

- "size": bytes; weights at w_bits, biases always 32-bit (they are added into the
  32-bit accumulator). Users see MB = 2^20 bytes, the MPQ literature convention.
- "bitops": sum of MACs x w_bits x a_bits (per sample).
- "latency": milliseconds, macs * ns_per_mac + overhead_ns from the target's table, or the
  layer's own measured time when the table was measured on this model (plus, once per model,
  that measurement's rest of the graph). On a target whose runtime fuses a layer into an
  integer kernel only when quantizers alone read its output (``pool_inputs``: ONNX Runtime),
  an integer layer that its readers leave unquantized (`unfused`) runs in float with its
  quantizers around it: its time measured so on this model when the table has it, else its
  float time (a lower bound: the quantizers' own time is not in the generic table).
- "luts", "brams": FINN's LUT and BRAM_18K estimates of the layer's hardware (its sliding
  window and its MVAU/VVAU) at the folding FINN's SetFolding picks for the target's cycles
  per frame (fpga_resources.py).
- "cycles": the cycles per frame of the dataflow pipeline, which runs as fast as its slowest
  layer: the model value is the maximum over layers, not the sum. The allocator states a
  cycles budget as a limit on every layer (allocate/ilp.py).
- "wbits": the weight bits of a layer (weight_params x w_bits); the model value is
  their average over all weights (biases excluded), i.e. the "3.5bit" budget.

Every layer term is linear in the layer's choice, which is what lets the allocator
state budgets as linear constraints (a maximum, as for cycles, is one constraint per layer);
the latency of an unfused layer depends on its readers' choices too, which the allocator
states with one extra variable per such layer (allocate/ilp.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from infoq_deploy.allocate.fpga_resources import layer_resources
from infoq_deploy.importing.layers import Layer

BYTES_PER_MB = 2**20
BIAS_BITS = 32
FP32_BITS = 32
COST_METRICS = ("size", "bitops", "latency", "wbits", "luts", "brams", "cycles")
MAX_METRICS = ("cycles",)  # the model's value is the largest layer value

Bits = Sequence[tuple[int, int]] | Mapping[str, tuple[int, int]]


def layer_cost(metric: str, layer: Layer, w_bits: int, a_bits: int, target=None, last: bool = False) -> float:
    """One layer's term of ``metric`` (for "wbits": its weight bits, the numerator of the average);
    ``last``: the model's last quantizable layer (it writes the logits: no thresholds on FPGA)."""
    if metric == "size":
        return layer.weight_params * w_bits / 8 + layer.bias_params * BIAS_BITS / 8
    if metric == "bitops":
        return float(layer.macs * w_bits * a_bits)
    if metric == "latency":
        if target is None or target.latency is None:
            raise ValueError("latency needs a target with a latency table")
        measured = target.latency.measured(layer.name, w_bits, a_bits)
        if measured is not None:
            return measured
        e = target.latency.lookup(layer.kind, w_bits, a_bits)
        return (layer.macs * e.ns_per_mac + e.overhead_ns) / 1e6
    if metric == "wbits":
        return float(layer.weight_params * w_bits)
    if metric in ("luts", "brams", "cycles"):
        if target is None or target.fpga is None:
            raise ValueError(f"{metric} needs a target with an [fpga] table")
        r = layer_resources(layer, w_bits, a_bits, last=last, fpga=target.fpga)
        return float({"luts": r.luts, "brams": r.brams, "cycles": r.cycles}[metric])
    raise ValueError(f"unknown cost metric {metric!r}; expected one of {COST_METRICS}")


def integer(w_bits: int, a_bits: int) -> bool:
    return w_bits < FP32_BITS and a_bits < FP32_BITS


def boundaries_modelled(target) -> bool:
    """Whether ``target``'s runtime runs an integer layer in float when its output is not quantized."""
    return target is not None and getattr(target.activations, "pool_inputs", False)


def unfused(layers: Sequence[Layer], pairs: Sequence[tuple[int, int]]) -> set[str]:
    """The integer layers some reader group leaves unquantized (no layer in it quantizes its input)."""
    quantized_input = {l.name for l, (_, a) in zip(layers, pairs) if a < FP32_BITS}
    return {l.name for l, (w, a) in zip(layers, pairs)
            if integer(w, a) and any(not (set(group) & quantized_input) for group in l.readers)}


def unfused_latency(layer: Layer, w_bits: int, a_bits: int, target) -> float:
    """An integer layer's time when ORT leaves it in float (module docstring, "latency")."""
    measured = target.latency.unfused(layer.name, w_bits, a_bits)
    if measured is not None:
        return measured
    return layer_cost("latency", layer, FP32_BITS, FP32_BITS, target)


def model_cost(metric: str, layers: Sequence[Layer], bits: Bits, target=None) -> float:
    """``metric`` of the whole model; ``bits`` is (w, a) per layer, in layer order or by name."""
    pairs = [bits[l.name] for l in layers] if isinstance(bits, Mapping) else list(bits)
    if len(pairs) != len(layers):
        raise ValueError(f"{len(pairs)} bit pairs for {len(layers)} layers")
    last = max(l.order for l in layers)
    terms = [layer_cost(metric, l, w, a, target, last=l.order == last) for l, (w, a) in zip(layers, pairs)]
    if metric == "latency" and boundaries_modelled(target):
        left = unfused(layers, pairs)
        terms = [unfused_latency(l, w, a, target) if l.name in left else t
                 for l, (w, a), t in zip(layers, pairs, terms)]
    if metric in MAX_METRICS:
        return max(terms)
    total = sum(terms)
    if metric == "wbits":
        return total / total_weight_params(layers)
    return total + model_constant(metric, target)


def model_constant(metric: str, target=None) -> float:
    """The part of ``metric`` no layer's choice changes: a measured table's rest of the graph."""
    if metric == "latency" and target is not None and target.latency is not None:
        return target.latency.model_overhead_ms
    return 0.0


def total_weight_params(layers: Sequence[Layer]) -> int:
    return sum(l.weight_params for l in layers)


def fp32_size_bytes(layers: Sequence[Layer]) -> float:
    """Size of the quantizable layers left in float (the reference of "12x" compression)."""
    return sum(layer_cost("size", l, FP32_BITS, FP32_BITS) for l in layers)
