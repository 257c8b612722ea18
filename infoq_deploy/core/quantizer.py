"""The quantizer the toolchain simulates while profiling and deploys after allocation.

DESIGN.md: "the quantizer simulated while profiling must be the one deployed". This
module states that quantizer once, as data (`QuantSpec`) plus the reference fake-quant
functions used by the profilers; the Brevitas configuration in `brevitas_model.py` is
built from the same `QuantSpec` and is tested against these functions.

Rules (symmetric, round-to-nearest, zero point 0, as FINN/hls4ml and ORT QDQ expect):
- weights: signed, narrow range [-(2^(b-1)-1), 2^(b-1)-1], scale = max|w| / (2^(b-1)-1)
  per output channel or per tensor;
- activations: per tensor; unsigned [0, 2^b-1] when every calibration value is >= 0
  (after ReLU), else signed [-(2^(b-1)), 2^(b-1)-1]; scale from the calibration range;
- "po2" scale rule: the scale is rounded UP to a power of two, so no value clips more
  than it would with the float scale (fixed-point hardware needs po2 scales);
- 32 bits means "left in float" (the identity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FLOAT_BITS = 32


@dataclass(frozen=True)
class QuantSpec:
    weight_per_channel: bool = True
    weight_po2: bool = False
    act_po2: bool = False
    act_signed: str = "auto"  # "auto" (unsigned if calibration min >= 0) | "signed" | "unsigned"


def _po2(scale: torch.Tensor) -> torch.Tensor:
    return torch.exp2(torch.ceil(torch.log2(scale)))


def weight_scale(w: torch.Tensor, bits: int, spec: QuantSpec) -> torch.Tensor:
    qmax = 2 ** (bits - 1) - 1
    if spec.weight_per_channel:
        absmax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)
        absmax = absmax.reshape(-1, *([1] * (w.dim() - 1)))
    else:
        absmax = w.detach().abs().amax()
    scale = torch.clamp(absmax, min=1e-12) / qmax
    return _po2(scale) if spec.weight_po2 else scale


def quantize_weight(w: torch.Tensor, bits: int, spec: QuantSpec) -> torch.Tensor:
    """Fake-quantize a weight tensor (output channel first) to ``bits``."""
    if bits >= FLOAT_BITS:
        return w
    qmax = 2 ** (bits - 1) - 1
    scale = weight_scale(w, bits, spec)
    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


@dataclass(frozen=True)
class ActRange:
    """Calibrated range of one layer's input activation."""

    absmax: float
    signed: bool


def act_range(x: torch.Tensor, spec: QuantSpec) -> ActRange:
    if spec.act_signed == "auto":
        signed = bool(x.min() < 0)
    else:
        signed = spec.act_signed == "signed"
    return ActRange(absmax=float(x.detach().abs().max()), signed=signed)


def act_scale(r: ActRange, bits: int, spec: QuantSpec) -> float:
    qmax = 2 ** (bits - 1) - 1 if r.signed else 2**bits - 1
    scale = max(r.absmax, 1e-12) / qmax
    return 2.0 ** math.ceil(math.log2(scale)) if spec.act_po2 else scale


def quantize_act(x: torch.Tensor, bits: int, r: ActRange, spec: QuantSpec) -> torch.Tensor:
    """Fake-quantize an activation tensor to ``bits`` with its calibrated range."""
    if bits >= FLOAT_BITS:
        return x
    scale = act_scale(r, bits, spec)
    if r.signed:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1
    return torch.clamp(torch.round(x / scale), lo, hi) * scale
