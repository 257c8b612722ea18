"""The whole run: import, profile, allocate, quantize, fine-tune, export, verify, report.

Everything lands in one run directory, each stage's output as the file the matching
subcommand writes: ``sensitivity.json`` (profile), ``allocation.json`` (allocate),
``quantized.pt`` (quantize), ``finetuned.pt`` and ``checkpoints/`` (finetune),
``model.onnx`` (export), ``verify.json`` (verify), ``report.*`` and plots (report); so any
stage can be re-run alone on the directory's files. ``run.json`` names the run's inputs
and says ``running`` until the end (``complete``, ``verification-failed``, or ``failed`` with the
reason); ``report.json`` is written last, so a directory without it is an unfinished run.
Every file is written atomically, and the directory is locked while a run writes it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from infoq_deploy import __version__, stages
from infoq_deploy.allocate.budgets import parse_budget
from infoq_deploy.allocate.ilp import load_allocation
from infoq_deploy.core import devices
from infoq_deploy.core.atomic import dumps, write_json
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.outputs import claim_dir, run_lock
from infoq_deploy.data.plan import plan_datasets
from infoq_deploy.importing.sources import load_model
from infoq_deploy.profile import registry as profile_methods
from infoq_deploy.quantize import ptq as ptq_choices
from infoq_deploy.quantize.file import ModelSource, save_quantized
from infoq_deploy.quantize.finetune import FinetuneConfig

RUN_FILE = "run.json"


@dataclass
class RunConfig:
    model: str
    target: str
    budgets: list[str]
    run_dir: Path
    weights: str | None = None
    input_shape: tuple[int, int, int] | None = None
    data_root: str | None = None
    data: str | None = None  # calibration data
    eval_data: str | None = None  # held-out evaluation data
    train_data: str | None = None  # fine-tuning data (default: the calibration data)
    train_size: int | None = None  # seeded, class-balanced subset of train_data (default: all)
    labels: str | None = None
    calib_size: int | None = None
    eval_size: int | None = None
    verify_size: int | None = None  # held-out samples run through the exported file (None: all)
    consumer_size: int = 200  # of those, run through the consumer flow's simulation (hls4ml)
    backend: str | None = None  # the consumer flow verify runs (None: the format's pipeline consumers)
    method: str = "infoq"
    ptq: str | None = None  # quantize.ptq.ALGORITHMS; None: the default (quantize.ptq.PtqConfig.chosen)
    bias_correction: bool = ptq_choices.DEFAULT_BIAS_CORRECTION
    alpha: float = 1.0
    pins: list = field(default_factory=list)  # [(first|last, [w, a] or None)]: --pin
    no_pin: bool = False
    seed: int = 0
    epochs: int = 0
    lr: float | None = None
    batch_size: int = 128
    resume: bool = False
    progress: bool = True
    allocation: str | None = None  # an allocation file: skip profiling and allocation
    infoq: dict = field(default_factory=dict)  # method settings (n_proj, k, encoder, use_inverse_bits); each method takes its own
    device: str = "cpu"  # --device; not an input of the run: any device may resume it (core/devices.py)
    notes: list[str] = field(default_factory=list)

    def ptq_config(self):
        return ptq_choices.PtqConfig(self.ptq or ptq_choices.DEFAULT_ALGORITHM, self.bias_correction,
                                     chosen=self.ptq is not None)

    def inputs(self) -> dict:
        """What identifies the run: a run directory holds the run of one set of inputs."""
        keys = ("model", "weights", "input_shape", "data", "eval_data", "train_data", "labels", "calib_size",
                "eval_size", "train_size", "method", "ptq", "bias_correction", "alpha", "pins", "no_pin", "seed", "epochs", "lr", "batch_size", "verify_size", "allocation", "infoq",
                "backend")
        # keys added later appear only when set, so older run directories still match their inputs
        d = {k: getattr(self, k) for k in keys if k not in ("pins", "no_pin", "backend") or getattr(self, k)}
        d["input_shape"] = list(self.input_shape) if self.input_shape else None
        d["target"] = self.target
        d["budgets"] = list(self.budgets)
        return d


def _previous(run_dir: Path) -> dict:
    try:
        previous = json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return previous if isinstance(previous, dict) else {}


def claim_run_dir(run_dir: Path, inputs: dict, resume: bool) -> None:
    """Refuse a directory holding another run (or anything else); a matching run is resumed."""
    claim_dir(run_dir, "-o RUN_DIR")
    if not run_dir.exists():
        return
    marker = run_dir / RUN_FILE
    if marker.is_file():
        previous = _previous(run_dir)
        if previous.get("inputs") != inputs:
            raise UserError(
                f"{run_dir} already holds another run (different model, data, target, budget or settings); "
                "pick a new -o RUN_DIR or delete that one"
            )
        if previous.get("status") == "complete" and not resume:
            raise UserError(f"{run_dir} already holds this finished run; see {run_dir}/report.md, or pass --resume to redo it")
    elif any(run_dir.iterdir()):
        raise UserError(f"{run_dir} is not empty and holds no infoq-deploy run; pick a new -o RUN_DIR")


def run(cfg: RunConfig) -> dict:
    """Every stage in one run directory; each stage's file is the next stage's input, so any
    stage can be re-run alone from that directory (see `infoq-deploy STAGE -h`)."""
    pins = [(where, None if pair is None else tuple(pair)) for where, pair in cfg.pins]
    ptq = cfg.ptq_config()
    target = stages.pin_target(stages.load_target(cfg.target), pins, cfg.no_pin).with_scale_rule(ptq.scale_rule)
    for text in cfg.budgets:  # fail on a typo before any expensive stage
        parse_budget(text)
    devices.resolve(cfg.device)  # a typo or a missing GPU, before any expensive stage
    if cfg.allocation is None:
        profile_methods.get(cfg.method)
    consumers = stages.consumers_for(target.export, cfg.backend)
    inputs = cfg.inputs()
    run_dir = Path(cfg.run_dir)
    claim_run_dir(run_dir, inputs, cfg.resume)

    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 3)
        clock = now

    model = load_model(cfg.model, weights=cfg.weights, input_shape=cfg.input_shape, data_root=cfg.data_root)
    plan = plan_datasets(model.preprocess, data=cfg.data, eval_data=cfg.eval_data, train_data=cfg.train_data,
                         labels=cfg.labels, calib_size=cfg.calib_size, eval_size=cfg.eval_size,
                         train_size=cfg.train_size, seed=cfg.seed)
    if plan.evaluation is not None:
        stages.check_verify_size(cfg.verify_size, plan.evaluation)
    given = None
    if cfg.allocation is not None:
        given = load_allocation(cfg.allocation)
        stages.check_allocation(given, target, model, cfg.allocation)
    lap("import")
    # before any long work: the format can express the model and the flows verify runs take it
    stages.preflight(model, target, plan.calibration, consumers)
    lap("preflight")
    # Inputs are valid: only now does the run directory come to exist, held by this run alone.
    run_dir.mkdir(parents=True, exist_ok=True)
    holder = _previous(run_dir).get("pid")
    with run_lock(run_dir, f"process {holder}" if holder else "another process"):
        claim_run_dir(run_dir, inputs, cfg.resume)  # again: no other run can write here now
        status = {"tool_version": __version__, "inputs": inputs, "pid": os.getpid()}
        write_json(run_dir / RUN_FILE, {**status, "status": "running"})
        try:
            (run_dir / "report.json").unlink(missing_ok=True)
            return _stages(cfg, target, model, plan, given, run_dir, status, timings, lap, consumers)
        except VerificationFailed:
            raise  # run.json already holds the verdict
        except BaseException as exc:
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else (str(exc) or type(exc).__name__)
            _mark_failed(run_dir / RUN_FILE, {**status, "status": "failed", "reason": reason})
            raise


def _share(value: float | None) -> str:
    return "not judged" if value is None else f"{value:.4f}"


class VerificationFailed(UserError):
    """The run finished and its exported graph failed verification (run.json says so): exit 1, as `verify`."""

    exit_code = 1


def _mark_failed(marker: Path, doc: dict) -> None:
    """Best effort, since the failure may be a full disk: an atomic rewrite needs free space,
    so fall back to rewriting the small file in place, in the blocks it already has."""
    try:
        write_json(marker, doc)
        return
    except Exception:
        pass
    try:
        with open(marker, "r+") as f:
            f.write(dumps(doc))
            f.truncate()
    except OSError:
        pass


def _stages(cfg: RunConfig, target, model, plan, given, run_dir: Path, status: dict, timings: dict, lap,
            consumers: tuple[str, ...]) -> dict:
    inputs = status["inputs"]
    calib = plan.calibration
    device = devices.resolve(cfg.device)
    if given is not None:
        table, alloc_doc = None, given
    else:
        table = stages.profile(model, target, calib, cfg.method, seed=cfg.seed, progress=cfg.progress,
                               plots_dir=run_dir / "profile", device=device, **cfg.infoq)
        cfg.notes.extend(profile_methods.notes(cfg.method, table))
    if table is not None:
        table.save(run_dir / "sensitivity.json")
        lap("profile")
        alloc_doc = stages.allocation_document(table, target, cfg.budgets, alpha=cfg.alpha)
        lap("allocate")
    else:
        cfg.notes.append(f"bit-widths taken from {cfg.allocation}")
    write_json(run_dir / "allocation.json", alloc_doc)

    source = ModelSource.of(cfg.model, cfg.weights, cfg.input_shape, cfg.data_root)
    qm = stages.quantize(model, target, alloc_doc, plan, source, allocation_name=cfg.allocation or "the allocation",
                         ptq=cfg.ptq_config(), progress=cfg.progress, device=device)
    save_quantized(run_dir / "quantized.pt", qm)
    lap("quantize")

    if cfg.epochs > 0:
        ft_cfg = FinetuneConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed)
        if cfg.lr is not None:
            ft_cfg.lr = cfg.lr
        stages.finetune_quantized(qm, plan.train, plan.evaluation, ft_cfg, run_dir / "checkpoints",
                                  resume=cfg.resume, progress=cfg.progress, device=device)
        save_quantized(run_dir / "finetuned.pt", qm)
        lap("finetune")
    else:
        (run_dir / "finetuned.pt").unlink(missing_ok=True)

    onnx_path = run_dir / "model.onnx"
    stages.export_quantized(qm, onnx_path)
    lap("export")

    verified = stages.verify_quantized(onnx_path, qm, plan.evaluation, verify_size=cfg.verify_size, seed=cfg.seed,
                                       eval_ref=qm.data.get("evaluation"), consumers=consumers,
                                       consumer_size=cfg.consumer_size,
                                       consumer_budget=stages.CONSUMER_BUDGET_SECONDS,
                                       consumer_timeout=stages.CONSUMER_TIMEOUT_SECONDS)
    write_json(run_dir / "verify.json", verified)
    lap("verify")

    stages.report_run(run_dir, qm, verified, sensitivity=table, inputs=inputs, timings=timings, notes=cfg.notes)
    ver = verified["result"]
    write_json(run_dir / RUN_FILE, {**status, "status": "complete" if ver["ok"] else "verification-failed"})
    if not ver["ok"]:
        raise VerificationFailed(
            f"the exported {target.export} graph failed verification (top-1 agreement {_share(ver['agreement'])}, "
            f"bit mismatches {ver['mismatches']}); see {run_dir}/report.md"
        )
    return {"run_dir": str(run_dir), "accuracies": dict(qm.accuracies, exported=ver["accuracy"]), "timings": timings,
            "cost": alloc_doc["cost"], "verify": {"agreement": ver["agreement"], "ok": ver["ok"]}}
