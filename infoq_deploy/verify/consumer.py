"""Run an exported file on the flow that consumes it (hls4ml's C simulation, ...) and compare
with qonnx's execution of the same file.

Our own check (`verify/check.py`) proves the file computes what the Brevitas model computes;
this one proves the consumer reads the file as qonnx does. The comparison is the same as
there: top-1 agreement on the decisive inputs (reference top-2 margin above twice the logit
tolerance) of at least `MIN_AGREEMENT`, and a mean absolute logit difference within the
tolerance, here `RUNTIME_RTOL` x mean |logit| (one quantization step at a rounding boundary,
the only difference a fixed-point reading of a fixed-point graph may show). The fraction of
logits that are bit-identical is reported beside it.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import numpy as np
import onnx

from infoq_deploy.backends import registry as backends
from infoq_deploy.backends.batched import run_batched
from infoq_deploy.core.errors import ConsumerRefused, ConsumerTimeout
from infoq_deploy.verify.check import MIN_AGREEMENT, RUNTIME_RTOL, top1_agreement

PASSED, FAILED, REFUSED, NOT_RUN = "passed", "failed", "refused", "not run"


@dataclass
class ConsumerResult:
    backend: str
    status: str  # passed | failed | refused (the flow could not take the file) | not run (not installed)
    reason: str = ""
    n_inputs: int = 0
    agreement: float | None = None
    agreement_all: float | None = None
    top1_judged_on: int | None = None
    ties: int = 0
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    tolerance: float | None = None
    exact_fraction: float | None = None  # logits identical to qonnx's, bit for bit
    precision: str | None = None
    build_seconds: float | None = None
    seconds_per_input: float | None = None
    graph_ops: dict | None = None  # op type -> count in the graph the consumer built, where it says

    @property
    def ok(self) -> bool:
        return self.status in (PASSED, NOT_RUN)

    def to_json(self) -> dict:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "ok": self.ok}

    def line(self) -> str:
        if self.status == NOT_RUN:
            return f"{self.backend}: not run: {self.reason}"
        if self.status == REFUSED:
            return f"{self.backend}: refused the file: {self.reason}"
        agreement = "n/a (every input a near-tie)" if self.agreement is None else f"{self.agreement:.2%}"
        return (f"{self.backend}: {self.status}: top-1 agreement with qonnx {agreement} on {self.top1_judged_on} "
                f"decisive of {self.n_inputs} inputs, max |logit diff| {self.max_abs_diff:.3g}, "
                f"{self.exact_fraction:.1%} of logits bit-identical"
                + (f" ({self.reason})" if self.reason else ""))


MIN_INPUTS = 20  # fewer than this says little: not run, with the command that runs it


def check_consumer(path, backend: str, x: np.ndarray, budget_seconds: float | None = None,
                   timeout: float | None = None) -> ConsumerResult:
    """Run the file at ``path`` on ``backend`` and on qonnx's executor, over the inputs ``x``
    (the first ones that fit in ``budget_seconds`` of the back end's estimated time, if given).
    ``timeout``: wall seconds the back end's build and run may take together (a back end that
    runs in a child process: hls4ml); past it the check is not run, and says so."""
    module = backends.get(backend)
    reason = module.unavailable() if hasattr(module, "unavailable") else None
    if reason is not None:
        return ConsumerResult(backend, NOT_RUN, reason)
    model = onnx.load(str(path))
    if budget_seconds is not None and hasattr(module, "seconds_per_input"):
        each = module.seconds_per_input(model)
        fits = int(budget_seconds // each) if each > 0 else len(x)
        if fits < min(MIN_INPUTS, len(x)):
            return ConsumerResult(backend, NOT_RUN, (
                f"its simulation would take about {each:.1f} s per input, more than this run allows for "
                f"{MIN_INPUTS} inputs; run `infoq-deploy verify {path} QUANTIZED.pt --backend {backend} "
                "--consumer-size N` for it"))
        x = x[:fits]
    x = np.ascontiguousarray(x, dtype=np.float32)
    ref = run_batched(model, x, min(len(x), 256), "qonnx").reshape(len(x), -1).astype(np.float64)
    start = time.perf_counter()
    try:
        # only a back end that runs in a child process can be stopped (hls4ml); the others run unbounded
        bounded = timeout is not None and "timeout" in inspect.signature(module.session).parameters
        run = module.session(model, timeout=timeout) if bounded else module.session(model)
        out = np.asarray(run(x), dtype=np.float64).reshape(ref.shape)
    except ConsumerRefused as exc:
        return ConsumerResult(backend, REFUSED, str(exc), n_inputs=len(x))
    except ConsumerTimeout:
        return ConsumerResult(backend, NOT_RUN, (
            f"its build and simulation did not finish within {timeout:g} s, this run's limit; run "
            f"`infoq-deploy verify {path} QUANTIZED.pt --backend {backend}` for it without one"), n_inputs=len(x))
    done = time.perf_counter()
    build = getattr(run, "build_seconds", 0.0)  # a back end that builds before it runs says how long
    diff = np.abs(out - ref)
    tolerance = RUNTIME_RTOL * float(np.abs(ref).mean())
    judged, judged_on, ties = top1_agreement(ref, out, tolerance)
    good = (judged is None or judged >= MIN_AGREEMENT) and float(diff.mean()) <= tolerance
    return ConsumerResult(
        backend,
        PASSED if good else FAILED,
        n_inputs=len(x),
        agreement=judged,
        agreement_all=float((out.argmax(1) == ref.argmax(1)).mean()),
        top1_judged_on=judged_on,
        ties=ties,
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        tolerance=tolerance,
        exact_fraction=float((diff == 0).mean()),
        precision=getattr(run, "precision", None),
        build_seconds=build,
        seconds_per_input=(done - start - build) / len(x),
        graph_ops=getattr(run, "graph_ops", None),
    )
