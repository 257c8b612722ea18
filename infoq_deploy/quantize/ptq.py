"""Post-training quantization choices: which thresholds, which rounding, bias correction.

``--ptq`` names the algorithm:

- ``minmax``: thresholds max|w| per channel and max|x| over the calibration set, weights
  rounded to nearest (nothing clips);
- ``mse``: thresholds chosen for the least quantization MSE (`core.quantizer`), rounded to nearest;
- ``gptq``: the ``minmax`` thresholds, weights rounded by GPTQ (`quantize.gptq`). On the
  minmax thresholds rather than the mse ones: on CIFAR-10 ResNet-20 at 3-bit weights
  (fpga-int, 2,000 test images) GPTQ reached 76.8% on minmax thresholds and 75.7% on mse
  ones; GPTQ's error feedback already trades rounding against range, and clipping the
  range first takes levels away from it (`bench/results/ptq_cifar10-resnet20.json`).

``--bias-correction`` adds Brevitas's bias correction on top of any of them
(`quantize.bias_correction`). The threshold rule is part of the quantizer the profiler
simulates (`Target.with_scale_rule`), so a sensitivity table records it and a table
profiled under another rule is refused; GPTQ and bias correction change only which
integers the deployed model holds, which the profiler does not simulate (rounding to
nearest with the same thresholds; `bench/bench_ptq.py` measures whether that changes the ranking).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from infoq_deploy.core.errors import UserError

if TYPE_CHECKING:  # the command line reads the choices without importing torch
    import torch
    from torch import nn

ALGORITHMS = ("minmax", "mse", "gptq")
DEFAULT_ALGORITHM = "gptq"
DEFAULT_BIAS_CORRECTION = True
_SCALE_RULE = {"minmax": "minmax", "mse": "mse", "gptq": "minmax"}


@dataclass(frozen=True)
class PtqConfig:
    algorithm: str = DEFAULT_ALGORITHM
    bias_correction: bool = DEFAULT_BIAS_CORRECTION
    # False when the user left --ptq at its default: a calibration set too small for GPTQ then
    # falls back to rounding to nearest (same thresholds, so the profile still holds) with a
    # note, where an explicit --ptq gptq is refused.
    chosen: bool = field(default=True, compare=False)
    # layers GPTQ leaves rounded to nearest: those the default's calibration set is too small
    # for (a singular Hessian), so the rest still get GPTQ
    gptq_skip: tuple[str, ...] = ()

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise UserError(f"--ptq {self.algorithm} is not one of {', '.join(ALGORITHMS)}")

    @property
    def scale_rule(self) -> str:
        return _SCALE_RULE[self.algorithm]

    def to_json(self) -> dict:
        d = {"algorithm": self.algorithm, "bias_correction": self.bias_correction, "scale_rule": self.scale_rule}
        if self.gptq_skip:
            d["rounded_to_nearest"] = list(self.gptq_skip)
        return d

    def without_gptq(self) -> "PtqConfig":
        """Round to nearest on the thresholds GPTQ would have used (same scale rule)."""
        return PtqConfig("minmax", self.bias_correction, chosen=self.chosen)

    @staticmethod
    def from_json(d: dict | None) -> "PtqConfig":
        """The record of a file; files from before --ptq were minmax without bias correction."""
        if not d:
            return PtqConfig("minmax", False)
        skip = d.get("rounded_to_nearest", [])
        if (d.get("algorithm") not in ALGORITHMS or not isinstance(d.get("bias_correction"), bool)
                or not isinstance(skip, list) or not all(isinstance(n, str) for n in skip)):
            raise ValueError(f"its ptq record {d!r} names no known algorithm")
        return PtqConfig(d["algorithm"], d["bias_correction"], gptq_skip=tuple(skip))

    def describe(self) -> str:
        skipped = f" ({len(self.gptq_skip)} layers rounded to nearest)" if self.gptq_skip else ""
        return self.algorithm + skipped + (" + bias correction" if self.bias_correction else "")


def scale_rule_of(meta: dict | None) -> str:
    """The threshold rule a sensitivity table (its meta) was profiled under; older tables: minmax."""
    return (meta or {}).get("scale_rule", "minmax")


def check_rule(profiled: str, deployed: str, what: str) -> None:
    """UserError unless a table profiled under ``profiled`` thresholds is used for ``deployed`` ones."""
    if profiled != deployed:
        fits = "--ptq minmax or --ptq gptq" if profiled == "minmax" else "--ptq mse"
        raise UserError(f"{what} was profiled with {profiled} thresholds, but the --ptq given deploys {deployed} "
                        f"thresholds; profile again with that --ptq, or pass {fits} (what it was profiled for)")


def run(qmodel: nn.Module, cfg: PtqConfig, x: torch.Tensor, *, progress: bool = False) -> dict[str, float]:
    """The rounding algorithms of ``cfg`` on the calibrated ``qmodel``, in place; seconds of each."""
    from infoq_deploy.quantize import bias_correction, gptq

    timings = {}
    if cfg.algorithm == "gptq":
        start = time.perf_counter()
        gptq.apply(qmodel, x, skip=set(cfg.gptq_skip), progress=progress)
        timings["gptq"] = round(time.perf_counter() - start, 3)
    if cfg.bias_correction:
        start = time.perf_counter()
        bias_correction.apply(qmodel, x, progress=progress)
        timings["bias_correction"] = round(time.perf_counter() - start, 3)
    return timings
