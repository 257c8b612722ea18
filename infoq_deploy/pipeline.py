"""The whole run: import, profile, allocate, quantize, fine-tune, export, verify, report.

Everything lands in one run directory. ``run.json`` names the run's inputs and says
``running`` until the end; ``report.json`` is written last, so a directory without it
is an unfinished run. Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, stages
from .allocate import allocation_to_json, load_allocation
from .atomic import write_json
from .brevitas_model import build_quant_model, calibrate, read_bits
from .budgets import parse_budget
from .data import Dataset, load_data, split
from .errors import UserError
from .evaluate import accuracy
from .export import check_exportable, export_model
from .finetune import FinetuneConfig, finetune
from .inspect_report import inspect_json
from .model_sources import load_model
from .report import write_report
from .targets import Target, load_target
from .verify import verify_export

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
    method: str = "infoq"
    alpha: float = 1.0
    seed: int = 0
    epochs: int = 0
    lr: float | None = None
    batch_size: int = 128
    resume: bool = False
    progress: bool = True
    allocation: str | None = None  # an allocation file: skip profiling and allocation
    infoq: dict = field(default_factory=dict)  # profile_infoq settings: n_proj, k, encoder, use_inverse_bits
    notes: list[str] = field(default_factory=list)

    def inputs(self) -> dict:
        """What identifies the run: a run directory holds the run of one set of inputs."""
        keys = ("model", "weights", "input_shape", "data", "eval_data", "train_data", "labels", "calib_size",
                "eval_size", "train_size", "method", "alpha", "seed", "epochs", "lr", "batch_size", "verify_size", "allocation", "infoq")
        d = {k: getattr(self, k) for k in keys}
        d["input_shape"] = list(self.input_shape) if self.input_shape else None
        d["target"] = self.target
        d["budgets"] = list(self.budgets)
        return d


def claim_run_dir(run_dir: Path, inputs: dict, resume: bool) -> None:
    """Refuse a directory holding another run (or anything else); a matching run is resumed."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} exists and is not a directory; pick another -o RUN_DIR")
    marker = run_dir / RUN_FILE
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text())
        except json.JSONDecodeError:
            previous = {}
        if previous.get("inputs") != inputs:
            raise UserError(
                f"{run_dir} already holds another run (different model, data, target, budget or settings); "
                "pick a new -o RUN_DIR or delete that one"
            )
        if previous.get("status") == "complete" and not resume:
            raise UserError(f"{run_dir} already holds this finished run; see {run_dir}/report.md, or pass --resume to redo it")
    elif any(run_dir.iterdir()):
        raise UserError(f"{run_dir} is not empty and holds no infoq-deploy run; pick a new -o RUN_DIR")


def _datasets(cfg: RunConfig, model) -> tuple[Dataset, Dataset, Dataset]:
    """Calibration, evaluation and fine-tuning sets; evaluation never overlaps calibration."""
    pre = model.preprocess
    if cfg.data is None:
        raise UserError("no calibration data; pass --data (an image folder, a .tar.gz of one, .npz/.pt or builtin:NAME)")
    calib = load_data(cfg.data, pre, limit=cfg.calib_size, seed=cfg.seed, labels=cfg.labels)
    if cfg.eval_data is not None:
        evaluation = load_data(cfg.eval_data, pre, limit=cfg.eval_size, seed=cfg.seed)
    else:
        if len(calib) < 4:
            raise UserError(f"{cfg.data} holds {len(calib)} samples, too few to hold some out; pass --eval-data")
        calib, evaluation = split(calib, len(calib) // 2, seed=cfg.seed)
        cfg.notes.append(
            f"no --eval-data: half of {cfg.data} ({len(evaluation)} samples) was held out for evaluation"
        )
    train = calib if cfg.train_data is None else load_data(cfg.train_data, pre, limit=cfg.train_size, seed=cfg.seed)
    if evaluation.y is None:
        raise UserError("the evaluation data has no labels, so accuracy cannot be measured; pass labelled --eval-data")
    return calib, evaluation, train


def verification_subset(evaluation: Dataset, n: int, seed: int) -> Dataset:
    """``n`` held-out samples for running the exported file: seeded and class-balanced,
    because data folders are ordered by class and a prefix would not be a sample."""
    return evaluation if n >= len(evaluation) else split(evaluation, n, seed=seed)[0]


def _allocation_for(path: str, target: Target, model) -> dict:
    doc = load_allocation(path)
    if doc["target"] != target.name:
        raise UserError(f"{path} was allocated for target {doc['target']}, not {target.name}; pass --target {doc['target']} or re-allocate")
    names = {layer.name for layer in model.layers}
    given = {d["name"] for d in doc["layers"]}
    if names != given:
        unknown, missing = sorted(given - names), sorted(names - given)
        raise UserError(
            f"{path} does not match {model.spec}: "
            + "; ".join(p for p in (f"it names layers the model lacks ({', '.join(unknown[:5])})" if unknown else "",
                                     f"it misses layers ({', '.join(missing[:5])})" if missing else "") if p)
            + "; allocate for this model"
        )
    return doc


def run(cfg: RunConfig) -> dict:
    target = load_target(cfg.target)
    for text in cfg.budgets:  # fail on a typo before any expensive stage
        parse_budget(text)
    if cfg.allocation is None and cfg.method not in ("infoq", "mse"):
        raise UserError(f"unknown method '{cfg.method}'; use infoq or mse")
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
    calib, evaluation, train = _datasets(cfg, model)
    given = _allocation_for(cfg.allocation, target, model) if cfg.allocation is not None else None
    # Inputs are valid: only now does the run directory come to exist.
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / RUN_FILE, {"tool_version": __version__, "inputs": inputs, "status": "running"})
    (run_dir / "report.json").unlink(missing_ok=True)
    lap("import")

    if cfg.allocation is not None:
        table, alloc_doc = None, given
    elif cfg.method == "infoq":
        from .profile_infoq import profile_infoq

        table = profile_infoq(model, target, calib, seed=cfg.seed, progress=cfg.progress, plots_dir=run_dir / "profile",
                              **cfg.infoq)
        if table.meta.get("labels") == "predictions":
            cfg.notes.append("the calibration data has no labels: InfoQ used the float model's predictions as labels")
        enc = table.meta.get("settings", {}).get("encoder", {})
        if enc:
            detail = f" ({enc['note']})" if enc.get("note") else ""
            cfg.notes.append(f"InfoQ input embedding: {enc.get('name')}{detail}")
        if table.meta.get("cache_hit"):
            cfg.notes.append("sensitivity table taken from the profiling cache (same model, data and settings)")
    else:
        table = stages.profile_mse(model, target, calib, seed=cfg.seed)
        cfg.notes.append("sensitivity from the weight/activation quantization-error proxy (--method mse), not InfoQ")
    if table is not None:
        table.save(run_dir / "sensitivity.json")
        lap("profile")
        alloc = stages.allocate_table(table, target, cfg.budgets, alpha=cfg.alpha)
        alloc_doc = allocation_to_json(alloc, target, table.meta)
        lap("allocate")
    else:
        cfg.notes.append(f"bit-widths taken from {cfg.allocation}")
    write_json(run_dir / "allocation.json", alloc_doc)
    bits = {d["name"]: (int(d["w_bits"]), int(d["a_bits"])) for d in alloc_doc["layers"]}

    deployed = stages.deployable(model)
    qmodel = build_quant_model(deployed.graph, deployed.layers, bits, target.quant_spec())
    calibrate(qmodel, calib.x)
    check_exportable(qmodel, target.export)  # a format that cannot express the bits fails before training
    if read_bits(qmodel) != bits:
        raise RuntimeError("the quantized model's bit-widths differ from the allocation; this is a bug")
    accuracies = {"float": accuracy(deployed.graph, evaluation.x, evaluation.y), "ptq": accuracy(qmodel, evaluation.x, evaluation.y)}
    lap("quantize")

    ft_doc = None
    if cfg.epochs > 0:
        ft_cfg = FinetuneConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed)
        if cfg.lr is not None:
            ft_cfg.lr = cfg.lr
        identity = {
            "model": model.fingerprint,
            "allocation": hashlib.sha256(json.dumps(sorted(bits.items())).encode()).hexdigest(),
            "target": target.name,
            "data": train.sha256,
        }
        result = finetune(qmodel, train, evaluation, ft_cfg, run_dir / "checkpoints", identity,
                          resume=cfg.resume, progress=cfg.progress)
        ft_doc = result.to_json()
        accuracies["finetuned"] = accuracy(qmodel, evaluation.x, evaluation.y)
        lap("finetune")

    onnx_path = run_dir / "model.onnx"
    export_model(qmodel, evaluation.x[:1], target.export, onnx_path)
    lap("export")

    n_verify = len(evaluation) if cfg.verify_size is None else min(cfg.verify_size, len(evaluation))
    held_out = verification_subset(evaluation, n_verify, cfg.seed)
    if n_verify < len(evaluation):
        cfg.notes.append(
            f"the exported graph was run on {n_verify} of the {len(evaluation)} evaluation samples (--verify-size, "
            "class-balanced): its accuracy is on that subset, the other accuracies on all of them"
        )
    ver = verify_export(onnx_path, target.export, qmodel, held_out.x, held_out.y, allocation=bits)
    ver_doc = ver.to_json()
    accuracies["exported"] = ver.accuracy
    lap("verify")

    model_info = inspect_json(deployed)
    model_info["float_model_params"] = inspect_json(model)["params"]
    model_info["eval"] = {"source": evaluation.source, "n": len(evaluation), "verified_on": n_verify}
    model_info["calibration"] = {"source": calib.source, "n": len(calib)}
    if not ver.ok:
        cfg.notes.append("VERIFICATION FAILED: the exported graph does not match the quantized model (see verify)")
    write_report(run_dir, inputs=inputs, model_info=model_info, allocation=alloc_doc, sensitivity=table,
                 accuracies=accuracies, verify=ver_doc, timings=timings, finetune=ft_doc, notes=cfg.notes)
    status = "complete" if ver.ok else "verification-failed"
    write_json(run_dir / RUN_FILE, {"tool_version": __version__, "inputs": inputs, "status": status})
    if not ver.ok:
        raise UserError(
            f"the exported {target.export} graph failed verification (agreement {ver.agreement:.4f}, "
            f"bit mismatches {ver.mismatches}); see {run_dir}/report.md"
        )
    return {"run_dir": str(run_dir), "accuracies": accuracies, "timings": timings, "cost": alloc_doc["cost"],
            "verify": {"agreement": ver.agreement, "ok": ver.ok}}

