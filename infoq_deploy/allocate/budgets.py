"""Budget strings ("4.5MB", "23GBOPs", "2.5ms", "12x", "3.5bit") parsed into base units.

Units (the grammar is documented in targets/README.md):
- size: B, KB/kB/KiB, MB/MiB, GB/GiB, powers of 1024. A lower-case "b" means bits
  in "Mb"/"kb", so such spellings (including "mb") are rejected rather than guessed.
- BitOps: BOPs or BitOps (any case) with an optional K/k, M, G, T prefix (powers of
  1000) and an optional hyphen: "23GBOPs", "23 G-BitOps".
- latency: ms, us (or µs), s; stored in ms.
- FPGA resources (FINN's estimators): LUT/LUTs, BRAM/BRAMs (BRAM_18K), cycles (per frame,
  the dataflow's throughput), with an optional k or M prefix (powers of 1000): "20kLUT",
  "150BRAM", "50kcycles".
- compression: x; average weight bits: bit/bits. Both are relative to the model and
  are turned into "size" / "wbits" limits by `resolve_budget` given the layer table.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from infoq_deploy.allocate.costs import BYTES_PER_MB, fp32_size_bytes
from infoq_deploy.core.errors import UserError
from infoq_deploy.importing.layers import Layer

_SIZE = {"B": 1, "KB": 1024, "kB": 1024, "KiB": 1024, "MB": 1024**2, "MiB": 1024**2, "GB": 1024**3, "GiB": 1024**3}
_TIME_MS = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}
_BOP_PREFIX = {"": 1.0, "K": 1e3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_BOPS = re.compile(r"(?P<prefix>[KkMGT]?)-?(?i:bops|bitops)")
_NUMBER = re.compile(r"\s*(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>.*?)\s*")
_FPGA = re.compile(r"(?P<prefix>[kKM]?)-?(?P<what>(?i:luts?|brams?|cycles?))")
_FPGA_METRIC = {"lut": "luts", "bram": "brams", "cycle": "cycles"}
_FPGA_UNIT = {"luts": "LUT", "brams": "BRAM", "cycles": "cycles"}
_BITS_NOT_BYTES = re.compile(r"[KkMmGg]?i?b")

ACCEPTED = (
    "size 4.5MB, 300KB, 1.2GB, 512B (powers of 1024; KiB/MiB/GiB and kB too), "
    "BitOps 23GBOPs, 500MBOPs, 23G-BitOps (powers of 1000; K, M, G, T prefixes), "
    "latency 2.5ms, 800us, 0.01s, FPGA 20kLUT, 150BRAM, 50kcycles (per frame; k, M prefixes), "
    "compression vs float 12x, average weight bits 3.5bit"
)

# which target metric each budget kind needs
REQUIRED_METRIC = {"size": "size", "compression": "size", "wbits": "size", "bitops": "bitops", "latency": "latency",
                   "luts": "luts", "brams": "brams", "cycles": "cycles"}


@dataclass(frozen=True)
class Budget:
    text: str  # as the user wrote it
    metric: str  # "size" | "bitops" | "latency" | "wbits" | "compression" (unresolved)
    limit: float  # bytes | BitOps | ms | average weight bits | compression ratio
    unit: str  # display unit: "MB", "GBOPs", "ms", "x", "bit", ...


def parse_budget(text: str) -> Budget:
    m = _NUMBER.fullmatch(text)
    if not m:
        raise UserError(f"cannot read the budget '{text}'; write a positive number and a unit, e.g. {ACCEPTED}")
    value, unit = float(m["num"]), m["unit"]
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"the budget '{text}' must be a positive number; e.g. {ACCEPTED}")
    if unit in _SIZE:
        return _finite(Budget(text, "size", value * _SIZE[unit], unit))
    if unit in _TIME_MS:
        return _finite(Budget(text, "latency", value * _TIME_MS[unit], unit))
    if unit in ("x", "X", "×"):
        return _finite(Budget(text, "compression", value, "x"))
    if unit in ("bit", "bits"):
        return _finite(Budget(text, "wbits", value, "bit"))
    if f := _FPGA.fullmatch(unit):
        metric = _FPGA_METRIC[f["what"].lower().rstrip("s")]
        return _finite(Budget(text, metric, value * _BOP_PREFIX[f["prefix"]], f"{f['prefix']}{_FPGA_UNIT[metric]}"))
    if b := _BOPS.fullmatch(unit):
        return _finite(Budget(text, "bitops", value * _BOP_PREFIX[b["prefix"]], f"{b['prefix']}BOPs"))
    if _BITS_NOT_BYTES.fullmatch(unit):
        raise UserError(
            f"the budget '{text}' uses '{unit}', a lower-case b (bits); sizes are in bytes with a capital B, "
            f"e.g. {unit[:-1].upper().replace('I', 'i')}B; accepted: {ACCEPTED}"
        )
    raise UserError(f"the budget '{text}' has an unknown unit '{unit}'; accepted: {ACCEPTED}")


def _finite(b: Budget) -> Budget:
    """A limit that overflows to infinity cannot be written as (strict) JSON, nor mean anything."""
    if not math.isfinite(b.limit) or b.limit <= 0:
        raise UserError(f"the budget '{b.text}' is out of range (it does not fit a float); give a realistic limit")
    return b


def resolve_budget(budget: Budget, layers: Sequence[Layer], target) -> Budget:
    """Check ``target`` reports the budget's metric; turn "12x" into a size limit in bytes."""
    needed = REQUIRED_METRIC[budget.metric]
    if needed not in target.metrics:
        raise UserError(
            f"the budget {budget.text} is a {needed} budget, but target {target.name} reports only "
            f"{', '.join(target.metrics)}; give a budget in one of those or pick another target"
        )
    if budget.metric == "compression":
        return Budget(budget.text, "size", fp32_size_bytes(layers) / budget.limit, budget.unit)
    return budget


def folded_for(budgets: Sequence[Budget], target):
    """``target`` folded for the tightest cycles budget: FINN's folding is chosen to meet a
    throughput, so a cycles budget sets it, and the LUT and BRAM costs are those of that folding."""
    cycles = [b.limit for b in budgets if b.metric == "cycles"]
    return target.with_cycles(min(cycles)) if cycles else target


def in_unit(budget: Budget, value: float, layers: Sequence[Layer]) -> float:
    """A resolved budget's base-unit ``value`` expressed in the unit the user wrote."""
    if budget.unit == "x":
        return fp32_size_bytes(layers) / value
    if budget.metric == "size":
        return value / _SIZE[budget.unit]
    if budget.metric == "latency":
        return value / _TIME_MS[budget.unit]
    if budget.metric == "bitops":
        return value / _BOP_PREFIX[budget.unit[: -len("BOPs")]]
    if budget.metric in _FPGA_UNIT:
        return value / _BOP_PREFIX[budget.unit[: -len(_FPGA_UNIT[budget.metric])]]
    return value  # wbits


def describe_best(budget: Budget, best: float, layers: Sequence[Layer]) -> str:
    """'the smallest model size reachable is 0.27 MB', with enough digits to differ from the limit."""
    shown, limit = in_unit(budget, best, layers), in_unit(budget, budget.limit, layers)
    for digits in range(3, 12):
        a, b = f"{shown:.{digits}g}", f"{limit:.{digits}g}"
        if a != b:
            break
    if budget.metric in _FPGA_UNIT and float(best).is_integer():  # counts: write them out in full
        return {"luts": "the fewest LUTs reachable are {:,}", "brams": "the fewest BRAM_18K reachable are {:,}",
                "cycles": "the fewest cycles per frame reachable are {:,}"}[budget.metric].format(int(best))
    what = {
        "x": "the highest compression reachable is {}x",
        "size": "the smallest model size reachable is {} " + budget.unit,
        "bitops": "the fewest BitOps reachable are {} " + budget.unit,
        "latency": "the lowest latency reachable is {} " + budget.unit,
        "wbits": "the lowest average weight bit-width reachable is {} bit",
        "luts": "the fewest LUTs reachable are {} " + budget.unit,
        "brams": "the fewest BRAMs reachable are {} " + budget.unit,
        "cycles": "the fewest cycles per frame reachable are {} " + budget.unit,
    }["x" if budget.unit == "x" else budget.metric]
    return what.format(a)


def size_mb(size_bytes: float) -> float:
    return size_bytes / BYTES_PER_MB
