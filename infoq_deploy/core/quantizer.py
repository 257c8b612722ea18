"""The quantizer the toolchain simulates while profiling and deploys after allocation.

DESIGN.md: "the quantizer simulated while profiling must be the one deployed". This
module states that quantizer once, as data (`QuantSpec`) plus the reference fake-quant
functions used by the profilers; the Brevitas configuration in `brevitas_model.py` is
built from the same `QuantSpec` and is tested against these functions.

Rules (symmetric, round-to-nearest, zero point 0, as FINN/hls4ml and ORT QDQ expect):
- weights: signed, narrow range [-(2^(b-1)-1), 2^(b-1)-1], scale = threshold / (2^(b-1)-1)
  per output channel or per tensor;
- activations: per tensor; unsigned [0, 2^b-1] when every calibration value is >= 0
  (after ReLU), else signed [-(2^(b-1)), 2^(b-1)-1]; scale = threshold / largest level;
- the threshold (the clipping range) is chosen by the scale rule:
  - "minmax": max|w| of the channel, max|x| over the calibration set; nothing clips;
  - "mse": the candidate with the least quantization MSE (clipping plus rounding);
    candidates are 100 fractions of the minmax threshold, or on po2 targets the minmax
    power of two and the four below it. Weights are searched exactly; activations on a
    histogram of the calibration set's non-zero values (`RangeObserver`), with rounding
    error taken as scale^2/12 inside the range (zeros are exact at every scale);
- "po2" scale rule: the scale is rounded UP to a power of two, so no value clips more
  than the threshold allows (fixed-point hardware needs po2 scales);
- 32 bits means "left in float" (the identity).

Brevitas has an MSE scale search (``StatsOp.MSE``), but it searches a float threshold and
then rounds the scale, so on po2 targets it cannot pick a power of two below the one
above, and its activation version averages per-batch optima; the search here is the one
rule both the profilers and the Brevitas model (which loads these thresholds) use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FLOAT_BITS = 32
SCALE_RULES = ("minmax", "mse")
MSE_FRACTIONS = 100  # float candidates: k/100 of the minmax threshold, k = 100..1
PO2_CANDIDATES = 5  # po2 candidates: the minmax power of two and the 4 below it
HIST_BINS = 8192
RANGE_BITS = tuple(range(2, 17))  # activation bit-widths an "mse" ActRange holds a threshold for


@dataclass(frozen=True)
class QuantSpec:
    weight_per_channel: bool = True
    weight_po2: bool = False
    act_po2: bool = False
    act_signed: str = "auto"  # "auto" (unsigned if calibration min >= 0) | "signed" | "unsigned"
    scale_rule: str = "minmax"  # "minmax" | "mse": how thresholds are chosen (SCALE_RULES)


def _po2(scale: torch.Tensor) -> torch.Tensor:
    return torch.exp2(torch.ceil(torch.log2(scale)))


def _candidates(threshold: torch.Tensor, qmax: int, po2: bool) -> torch.Tensor:
    """Candidate thresholds (rows) for each minmax ``threshold`` (columns), the minmax one first
    (argmin keeps the first of equal errors: a tie never clips)."""
    if po2:
        top = _po2(threshold / qmax)
        steps = torch.exp2(-torch.arange(PO2_CANDIDATES, dtype=threshold.dtype))
        return (top[None, :] * steps[:, None]) * qmax
    fractions = torch.arange(MSE_FRACTIONS, 0, -1, dtype=threshold.dtype) / MSE_FRACTIONS
    return threshold[None, :] * fractions[:, None]


def _weight_mse_threshold(w2d: torch.Tensor, absmax: torch.Tensor, qmax: int, po2: bool) -> torch.Tensor:
    cands = _candidates(absmax, qmax, po2)  # (M, C)
    err = torch.empty_like(cands)
    chunk = max(1, int(2**24 // max(1, w2d.numel())))
    for start in range(0, cands.shape[0], chunk):
        t = cands[start : start + chunk, :, None]  # (m, C, 1)
        scale = _po2(t / qmax) if po2 else t / qmax
        q = torch.clamp(torch.round(w2d[None] / scale), -qmax, qmax) * scale
        err[start : start + chunk] = ((q - w2d[None]) ** 2).sum(dim=2)
    best = err.argmin(dim=0)
    return cands[best, torch.arange(cands.shape[1])]


def weight_threshold(w: torch.Tensor, bits: int, spec: QuantSpec) -> torch.Tensor:
    """The clipping range of a weight tensor under the spec's scale rule, shaped to broadcast
    against ``w`` (per output channel) or a scalar tensor (per tensor)."""
    w = w.detach()
    w2d = w.reshape(w.shape[0], -1) if spec.weight_per_channel else w.reshape(1, -1)
    absmax = torch.clamp(w2d.abs().amax(dim=1), min=1e-12)
    if spec.scale_rule == "mse":
        absmax = _weight_mse_threshold(w2d, absmax, 2 ** (bits - 1) - 1, spec.weight_po2)
    elif spec.scale_rule != "minmax":
        raise ValueError(f"unknown scale rule {spec.scale_rule!r}")
    if spec.weight_per_channel:
        return absmax.reshape(-1, *([1] * (w.dim() - 1)))
    return absmax.reshape(())


def weight_scale(w: torch.Tensor, bits: int, spec: QuantSpec) -> torch.Tensor:
    qmax = 2 ** (bits - 1) - 1
    scale = weight_threshold(w, bits, spec) / qmax
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
    """Calibrated range of one layer's input activation; under the "mse" rule also the
    threshold chosen for each bit-width of RANGE_BITS."""

    absmax: float
    signed: bool
    mse: tuple[tuple[int, float], ...] = ()  # (bits, threshold)

    def threshold(self, bits: int, spec: QuantSpec) -> float:
        if spec.scale_rule == "minmax":
            return self.absmax
        for b, t in self.mse:
            if b == bits:
                return t
        raise ValueError(f"this activation range holds no {spec.scale_rule} threshold for {bits} bits")


def _levels(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def act_range(x: torch.Tensor, spec: QuantSpec) -> ActRange:
    """The range of one tensor (all the calibration data at once)."""
    obs = RangeObserver(spec)
    obs.observe(x)
    if obs.needs_histogram:
        obs.start_histogram()
        obs.observe(x)
    return obs.result()


class RangeObserver:
    """The calibration range of one activation, fed batch by batch: min and max|x| first;
    under the "mse" rule a second pass fills a histogram over that range, from which each
    bit-width's threshold is chosen. The profilers and the Brevitas calibration both use it,
    so both choose the same thresholds from the same values."""

    def __init__(self, spec: QuantSpec):
        self.spec = spec
        self.lo, self.absmax = math.inf, 0.0
        self.hist: torch.Tensor | None = None

    @property
    def needs_histogram(self) -> bool:
        return self.spec.scale_rule == "mse" and self.hist is None

    @property
    def seen(self) -> bool:
        return self.lo != math.inf

    @property
    def signed(self) -> bool:
        return self.lo < 0 if self.spec.act_signed == "auto" else self.spec.act_signed == "signed"

    def _hist_range(self) -> tuple[float, float]:
        top = max(self.absmax, 1e-12)
        return (-top, top) if self.signed else (0.0, top)

    def start_histogram(self) -> None:
        self.hist = torch.zeros(HIST_BINS, dtype=torch.float64)

    def observe(self, t: torch.Tensor) -> None:
        t = t.detach()
        if self.hist is None:
            self.lo = min(self.lo, float(t.min()))
            self.absmax = max(self.absmax, float(t.abs().max()))
            return
        lo, hi = self._hist_range()
        # exact zeros (half of a ReLU's output) are a level of every candidate: no error, so
        # they stay out of the histogram, whose bins are charged the average rounding error
        t = t[t != 0].float()
        # negative values of an unsigned range clip to 0 (the first bin's left edge)
        self.hist += torch.histc(t.clamp(lo, hi), bins=HIST_BINS, min=lo, max=hi).double().cpu()

    def result(self) -> ActRange:
        if self.spec.scale_rule == "minmax":
            return ActRange(absmax=self.absmax, signed=self.signed)
        if self.hist is None:
            raise RuntimeError("the mse rule needs the histogram pass; call start_histogram() and observe again")
        return ActRange(absmax=self.absmax, signed=self.signed, mse=tuple(
            (b, self._mse_threshold(b)) for b in RANGE_BITS))

    def _mse_threshold(self, bits: int) -> float:
        signed = self.signed
        lo_level, hi_level = _levels(bits, signed)
        qmax = hi_level if not signed else 2 ** (bits - 1) - 1
        lo, hi = self._hist_range()
        width = (hi - lo) / HIST_BINS
        centers = lo + width * (torch.arange(HIST_BINS, dtype=torch.float64) + 0.5)
        cands = _candidates(torch.tensor([max(self.absmax, 1e-12)], dtype=torch.float64), qmax, self.spec.act_po2)[:, 0]
        best, best_err = None, math.inf
        for t in cands.tolist():
            scale = 2.0 ** math.ceil(math.log2(t / qmax)) if self.spec.act_po2 else t / qmax
            top, bottom = hi_level * scale, lo_level * scale
            clipped = torch.clamp(centers, bottom, top)
            inside = (centers >= bottom) & (centers <= top)
            err = torch.where(inside, torch.full_like(centers, scale * scale / 12.0), (centers - clipped) ** 2)
            total = float((err * self.hist).sum())
            if total < best_err:
                best, best_err = t, total
        # a float32 value, as the calibrated max is: Brevitas stores the threshold in float32
        return float(torch.tensor(best, dtype=torch.float32))


def act_scale(r: ActRange, bits: int, spec: QuantSpec) -> float:
    qmax = 2 ** (bits - 1) - 1 if r.signed else 2**bits - 1
    scale = max(r.threshold(bits, spec), 1e-12) / qmax
    return 2.0 ** math.ceil(math.log2(scale)) if spec.act_po2 else scale


def quantize_act(x: torch.Tensor, bits: int, r: ActRange, spec: QuantSpec) -> torch.Tensor:
    """Fake-quantize an activation tensor to ``bits`` with its calibrated range."""
    if bits >= FLOAT_BITS:
        return x
    scale = act_scale(r, bits, spec)
    lo, hi = _levels(bits, r.signed)
    if x.requires_grad:
        return torch.clamp(torch.round(x / scale), lo, hi) * scale
    # the same operations in place on one new tensor: identical values, one allocation instead of
    # four; the profiler runs this at every layer input of every suffix
    y = x / scale
    y.round_()
    y.clamp_(lo, hi)
    return y.mul_(scale)
