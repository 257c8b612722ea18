"""The pipeline's stages as plain functions: the Python API behind the CLI.

Each stage takes the previous stage's object (or file) and returns its own, so a build
pipeline can call any of them alone (the README's example, on the bundled model)::

    from infoq_deploy import stages

    model = stages.load_model(stages.DEFAULT_MODEL)  # the bundled Fashion-MNIST CNN
    target = stages.load_target("fpga-int")
    plan = stages.plan_datasets(model.preprocess, data=stages.DEFAULT_DATA, eval_data=stages.DEFAULT_EVAL_DATA)
    table = stages.profile(model, target, plan.calibration, method="mse")  # or "infoq" (stages.profile_infoq)
    allocation = stages.allocation_document(table, target, ["4bit"])       # as allocation.json
    qm = stages.quantize(model, target, allocation, plan, stages.ModelSource.of(stages.DEFAULT_MODEL))
    stages.save_quantized("api-run/quantized.pt", qm)
    stages.export_quantized(qm, "api-run/model.onnx")
    verified = stages.verify_quantized("api-run/model.onnx", qm, plan.evaluation)
    stages.report_run("api-run", qm, verified, sensitivity=table)
    print(qm.accuracies, "verified" if verified["result"]["ok"] else "FAILED")

The objects between stages are plain: `ImportedModel`, `SensitivityTable`, the allocation
document (a dict, as in allocation.json), `QuantizedModel` (saved and loaded by
`infoq_deploy.quantize.file`) and the verification document (as in verify.json).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import torch

from infoq_deploy import __version__
from infoq_deploy.allocate.budgets import parse_budget
from infoq_deploy.allocate.fpga_resources import why_not as fpga_why_not
from infoq_deploy.allocate.ilp import Allocation, allocate, allocation_bits, allocation_to_json, check_rules, recost
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.quantizer import FLOAT_BITS
from infoq_deploy.core.targets import FPGA_METRICS, Target, target_ref
from infoq_deploy.core.targets import list_targets as _list_targets
from infoq_deploy.core.targets import load_target as _load_target
from infoq_deploy.data.load import Dataset, load_data
from infoq_deploy.data.plan import DataPlan, DataRef, absolute_spec, plan_datasets
from infoq_deploy.export import registry as export_formats
from infoq_deploy.importing.deployable import deployable
from infoq_deploy.importing.inventory import inspect_json
from infoq_deploy.importing.model import ImportedModel
from infoq_deploy.importing.sources import load_model
from infoq_deploy.profile import registry as profile_methods
from infoq_deploy.profile.table import SensitivityTable
from infoq_deploy.quantize.file import ModelSource, QuantizedModel, load_quantized, save_quantized
from infoq_deploy.quantize.finetune import FinetuneConfig
from infoq_deploy.quantize.ptq import PtqConfig, check_rule, scale_rule_of

VERIFY_FORMAT = "infoq-deploy/verify/1"


DEFAULT_MODEL = "zoo:fashion-cnn"
DEFAULT_DATA = "builtin:fashion-mnist"  # 1,000 training images, committed
DEFAULT_EVAL_DATA = "builtin:fashion-mnist:eval"  # 1,000 test images, committed


def profile(model: ImportedModel, target: Target, data: Dataset | None, method: str = profile_methods.DEFAULT,
            **settings) -> SensitivityTable:
    """The sensitivity table by a registered method (`infoq_deploy.profile.registry`); settings
    the method does not take are left out."""
    return profile_methods.run(method, model, target, data, **settings)


def profile_infoq(model: ImportedModel, target: Target, data: Dataset, **settings) -> SensitivityTable:
    """The InfoQ profiler (see `infoq_deploy.profile.infoq.profile_infoq` for the settings)."""
    return profile_methods.run("infoq", model, target, data, **settings)


def profile_mse(model: ImportedModel, target: Target, data: Dataset | None, seed: int = 0) -> SensitivityTable:
    """Weight (and, with data, activation) quantization error as the sensitivity proxy."""
    return profile_methods.run("mse", model, target, data, seed=seed)


def load_target(name_or_path) -> Target:
    """A shipped target by name or a .toml file, its export format one that is registered."""
    return _load_target(name_or_path, tuple(export_formats.names()))


def list_targets() -> list[Target]:
    """Every shipped target, sorted by name."""
    return _list_targets(tuple(export_formats.names()))


def pin_target(target: Target, pins: list[tuple[str, tuple[int, int] | None]] = (), no_pin: bool = False) -> Target:
    """``target`` with its pins overridden: ``no_pin`` frees both, then each (``"first"``/``"last"``,
    pair or None) pins or frees one layer. The allocation records the result, the report shows it."""
    if not pins and not no_pin:
        return target
    chosen = {"first": None, "last": None} if no_pin else {"first": target.pin_first, "last": target.pin_last}
    for where, pair in pins:
        chosen[where] = pair
    source = " ".join((["--no-pin"] if no_pin else [])
                      + [f"--pin {w}={'free' if p is None else f'{p[0]},{p[1]}'}" for w, p in pins])
    return target.with_pins(chosen["first"], chosen["last"], source)


def allocate_table(table: SensitivityTable, target: Target, budget_texts: list[str], alpha: float = 1.0) -> Allocation:
    if not budget_texts:
        raise UserError("no budget given; pass at least one --budget, e.g. --budget 4.5MB or --budget 3.5bit")
    budgets = [parse_budget(text) for text in budget_texts]
    check_rule(scale_rule_of(table.meta), target.scale_rule, "the sensitivity table")
    check_latency_table(target, table.meta.get("model_fingerprint"))
    return allocate(table.layers, table.weights, table.activations, target, budgets, alpha=alpha, pairs=table.pairs)


def check_latency_table(target: Target, fingerprint: str | None) -> None:
    """A latency table measured on one model costs that model only (its layers' own times)."""
    measured = target.latency.model_fingerprint if target.latency is not None else None
    if measured is not None and fingerprint is not None and measured != fingerprint:
        raise UserError(f"target {target.name}'s latency table ({target.latency.source}) was measured on another model; "
                        f"measure this one with `infoq-deploy targets measure {target.name} MODEL -o FILE.toml`")


def allocation_document(table: SensitivityTable, target: Target, budget_texts: list[str], alpha: float = 1.0) -> dict:
    """`allocate_table` as the allocation document (what allocation.json holds)."""
    return allocation_to_json(allocate_table(table, target, budget_texts, alpha=alpha), target, table.meta)


# ---------------------------------------------------------------- after allocation


def check_allocation(doc: dict, target: Target, model: ImportedModel, name: str = "the allocation") -> None:
    """UserError unless ``doc`` was allocated for ``target`` and names exactly ``model``'s layers."""
    if doc["target"] != target.name:
        raise UserError(f"{name} was allocated for target {doc['target']}, not {target.name}; "
                        f"pass --target {doc['target']} or re-allocate")
    names = {layer.name for layer in model.layers}
    given = {d["name"] for d in doc["layers"]}
    if names != given:
        unknown, missing = sorted(given - names), sorted(names - given)
        raise UserError(
            f"{name} does not match {model.spec}: "
            + "; ".join(p for p in (f"it names layers the model lacks ({', '.join(unknown[:5])})" if unknown else "",
                                     f"it misses layers ({', '.join(missing[:5])})" if missing else "") if p)
            + "; allocate for this model"
        )
    check_rules(doc, model.layers, target, name)


def quantize(model: ImportedModel, target: Target, allocation: dict, plan: DataPlan, source: ModelSource,
             *, allocation_name: str = "the allocation", ptq: PtqConfig | None = None,
             progress: bool = False, device: torch.device | str = "cpu") -> QuantizedModel:
    """The Brevitas model of ``allocation``, calibrated on ``plan.calibration`` and rounded by
    ``ptq`` (default `quantize.ptq.PtqConfig()`); float and post-training accuracy on
    ``plan.evaluation`` when there is one. Calibration, PTQ and accuracy run on ``device``; the
    model comes back on the CPU."""
    from infoq_deploy.core.evaluate import accuracy
    from infoq_deploy.export.writer import check_exportable
    from infoq_deploy.quantize import gptq
    from infoq_deploy.quantize.ptq import run as ptq_run
    from infoq_deploy.quantize.brevitas_model import build_quant_model, calibrate, fit_bias_grid, read_bits

    start = time.perf_counter()
    ptq = ptq or PtqConfig()
    check_allocation(allocation, target, model, allocation_name)
    if allocation.get("sensitivity"):  # a hand-written allocation has no profile to disagree with
        check_rule(scale_rule_of(allocation["sensitivity"]), ptq.scale_rule, allocation_name)
    target = target.with_scale_rule(ptq.scale_rule)
    deployed = deployable(model)
    allocation = recost(allocation, deployed.layers, target)  # the costs of what is built, not the file's
    bits = allocation_bits(allocation)
    notes = list(plan.notes)
    if ptq.algorithm == "gptq":
        integer = {n for n, (w, _) in bits.items() if w < FLOAT_BITS}
        if ptq.chosen:
            gptq.check_samples(deployed.layers, integer - set(ptq.gptq_skip), len(plan.calibration))
        elif (short := gptq.shortfall(deployed.layers, integer, len(plan.calibration))) is not None:
            # the default does what the samples allow: GPTQ where the Hessian is full rank, nearest elsewhere
            skip = gptq.short_layers(deployed.layers, integer, len(plan.calibration))
            if set(skip) >= integer:
                ptq = ptq.without_gptq()
                done = f"the weights were rounded to nearest instead ({ptq.describe()})"
            else:
                ptq = dataclasses.replace(ptq, gptq_skip=tuple(skip))
                done = (f"GPTQ rounded {len(integer) - len(skip)} of the {len(integer)} integer layers and left "
                        f"{len(skip)} rounded to nearest ({', '.join(skip[:3])}{', ...' if len(skip) > 3 else ''})")
            notes.append(f"GPTQ (the default --ptq) needs at least {short[0]} calibration samples for every layer "
                         f"here ({short[1]}); {done}; pass --calib-size {short[0]} or more for GPTQ on every layer")
    qmodel = build_quant_model(deployed.graph, deployed.layers, bits, target.quant_spec(),
                               pool_inputs=target.activations.pool_inputs).to(device)
    calibrate(qmodel, plan.calibration.x, progress=progress)
    check_exportable(qmodel, target.export)  # a format that cannot express the bits fails before training
    calibrated = time.perf_counter()
    ptq_seconds = ptq_run(qmodel, ptq, plan.calibration.x, progress=progress)
    fit_bias_grid(qmodel)  # bias correction moves biases
    if read_bits(qmodel) != bits:
        raise RuntimeError("the quantized model's bit-widths differ from the allocation; this is a bug")
    accuracies = {}
    if plan.evaluation is not None:
        ev = plan.evaluation
        accuracies = {"float": accuracy(deployed.graph.to(device), ev.x, ev.y), "ptq": accuracy(qmodel, ev.x, ev.y)}
        deployed.graph.cpu()
    qmodel.cpu()
    model_info = inspect_json(deployed)
    model_info["float_model_params"] = inspect_json(model)["params"]
    model_info["calibration"] = {"source": plan.calibration.source, "n": len(plan.calibration)}
    if plan.evaluation is not None:
        model_info["eval"] = {"source": plan.evaluation.source, "n": len(plan.evaluation)}
    return QuantizedModel(
        qmodel=qmodel, model=model, source=source, target=target, allocation=allocation, stage="ptq",
        accuracies=accuracies, data=dict(plan.refs), model_info=model_info, ptq=ptq.to_json(),
        timings={"quantize": round(time.perf_counter() - start, 3), "calibrate": round(calibrated - start, 3),
                 **ptq_seconds},
        notes=notes,
    )


def finetune_quantized(qm: QuantizedModel, train: Dataset, evaluation: Dataset, cfg, ckpt_dir: str | Path, *,
                       resume: bool = False, progress: bool = True, train_ref: DataRef | None = None,
                       eval_ref: DataRef | None = None, device: torch.device | str = "cpu") -> QuantizedModel:
    """LSQ fine-tuning of ``qm`` in place (`infoq_deploy.quantize.finetune.finetune`); ``qm`` ends at its best checkpoint.

    When ``evaluation`` is not the set the earlier accuracies were measured on, float and
    starting accuracy are re-measured on it, so the report compares like with like.
    """
    from infoq_deploy.core.evaluate import accuracy
    from infoq_deploy.quantize.finetune import finetune

    start = time.perf_counter()
    identity = {
        "model": qm.model.fingerprint,
        "allocation": hashlib.sha256(json.dumps(sorted(qm.bits.items())).encode()).hexdigest(),
        "target": qm.target.name,
        "data": train.sha256,
    }
    before = qm.data.get("evaluation")
    same_eval = before is not None and before.sha256 == evaluation.sha256
    result = finetune(qm.qmodel, train, evaluation, cfg, Path(ckpt_dir), identity, resume=resume, progress=progress,
                      device=device)
    if cfg.epochs == 0:
        return qm
    if not same_eval:
        qm.accuracies = {"float": accuracy(deployable(qm.model).graph, evaluation.x, evaluation.y)}
        if qm.stage == "ptq":
            qm.accuracies["ptq"] = result.start_accuracy
        qm.model_info["eval"] = {"source": evaluation.source, "n": len(evaluation)}
        qm.notes.append(f"accuracies are on {evaluation.source}, the fine-tuning evaluation set")
    qm.accuracies["finetuned"] = accuracy(qm.qmodel, evaluation.x, evaluation.y)
    qm.stage = "finetuned"
    qm.finetune = result.to_json()
    if train_ref is not None:
        qm.data["train"] = train_ref
    if eval_ref is not None:
        qm.data["evaluation"] = eval_ref
    qm.timings["finetune"] = round(time.perf_counter() - start, 3)
    return qm


def export_quantized(qm: QuantizedModel, path: str | Path, fmt: str | None = None) -> float:
    """Write ``qm`` in ``fmt`` (default: its target's format) to ``path``; the seconds it took."""
    from infoq_deploy.export.writer import export_model

    start = time.perf_counter()
    # Brevitas's export traces the graph; the example input only fixes the batch size (1).
    example = torch.zeros(1, *qm.model.preprocess.input_shape)
    metadata = {"infoq_deploy.version": __version__, "infoq_deploy.target": qm.target.name}
    if qm.ptq:
        metadata["infoq_deploy.ptq"] = json.dumps(qm.ptq, sort_keys=True)
    export_model(qm.qmodel, example, fmt or qm.target.export, path, metadata=metadata)
    return round(time.perf_counter() - start, 3)


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


DEFAULT_CONSUMER_SIZE = 200  # inputs run through a consumer's simulation (hls4ml: ~40 ms each on one core)
CONSUMER_BUDGET_SECONDS = 300  # estimated simulation time the pipeline spends per consumer, at most
# wall time of one consumer's whole check in the pipeline (conversion, g++, simulation): hls4ml's
# build of EfficientNet-B0 ran past 30 minutes (bench/results/torchvision_matrix.json)
CONSUMER_TIMEOUT_SECONDS = 1200


def consumers_for(fmt: str, backend: str | None) -> tuple[str, ...]:
    """The consumer flows `verify` runs for a file of ``fmt``: the format's pipeline ones, or the
    one ``--backend`` names; UserError when that back end does not run files of this format."""
    from infoq_deploy.backends import registry as backends
    from infoq_deploy.export import registry as formats

    module = formats.get(fmt)
    if backend is None:
        return tuple(module.PIPELINE_CONSUMERS)
    backends.get(backend)  # unknown name: one sentence listing the known ones
    if backend == module.BACKEND:
        return ()
    if backend not in module.CONSUMERS:
        takes = ", ".join((module.BACKEND, *module.CONSUMERS))
        raise UserError(f"back end {backend} does not run {fmt} files; for {fmt} use {takes}")
    reason = getattr(backends.get(backend), "unavailable", lambda: None)()
    if reason is not None:
        raise UserError(f"--backend {backend} cannot run here: {reason}")
    return (backend,)


def preflight(model: ImportedModel, target: Target, calibration: Dataset, consumers: tuple[str, ...] | None = None) -> dict:
    """Before profiling: UserError (one sentence naming the layer, the operator and the flow)
    unless ``model`` exports in ``target``'s format and the flows ``consumers`` (default: the
    format's pipeline ones) can take it (verify/preflight.py)."""
    from infoq_deploy.verify.preflight import preflight as check

    consumers = consumers_for(target.export, None) if consumers is None else consumers
    return check(deployable(model), target, calibration.x, consumers)


def verify_quantized(onnx_path: str | Path, qm: QuantizedModel, evaluation: Dataset, *, verify_size: int | None = None,
                     seed: int = 0, fmt: str | None = None, eval_ref: DataRef | None = None,
                     consumers: tuple[str, ...] | None = None, consumer_size: int = DEFAULT_CONSUMER_SIZE,
                     consumer_budget: float | None = None, consumer_timeout: float | None = None) -> dict:
    """Run the exported file on (a class-balanced part of) ``evaluation`` against ``qm``: the
    verification document (verify.json), whose ``result`` is `infoq_deploy.verify.check.VerifyResult.to_json()`.

    Then each consumer flow (``consumers``; default: the format's, those installed) runs the
    same file on the first ``consumer_size`` of those samples against qonnx's execution (as
    many as fit in ``consumer_budget`` seconds of its estimated time, when given, and within
    ``consumer_timeout`` wall seconds, or it is not run); a consumer that fails or refuses the
    file is a mismatch, so the verification fails."""
    from infoq_deploy.verify.check import verify_export
    from infoq_deploy.verify.consumer import check_consumer

    if evaluation.y is None:
        raise UserError(f"{evaluation.source} has no labels, so the exported model's accuracy cannot be measured; "
                        "pass labelled evaluation data")
    check_verify_size(verify_size, evaluation)
    n = len(evaluation) if verify_size is None else verify_size
    held_out = verification_subset(evaluation, n, seed)
    fmt = fmt or qm.target.export
    result = verify_export(onnx_path, fmt, qm.qmodel, held_out.x, held_out.y, allocation=qm.bits)
    checked = []
    for backend in consumers_for(fmt, None) if consumers is None else consumers:
        consumer = check_consumer(onnx_path, backend, held_out.x[:consumer_size].numpy(), consumer_budget,
                                  consumer_timeout)
        checked.append(consumer.to_json())
        if not consumer.ok:
            result.mismatches.append(consumer.line())
    return {
        "format": VERIFY_FORMAT,
        "tool_version": __version__,
        "onnx": str(Path(onnx_path).resolve()),
        "onnx_sha256": _file_sha256(Path(onnx_path)),
        "quantized_state_sha256": qm.state_sha256(),
        "stage": qm.stage,
        "eval": {"source": evaluation.source, "n": len(evaluation), "verified_on": n, "seed": seed,
                 "ref": None if eval_ref is None else eval_ref.to_json()},
        "result": result.to_json(),
        "consumers": checked,
    }


def check_verify_size(verify_size: int | None, evaluation: Dataset) -> None:
    """UserError unless ``verify_size`` samples can be drawn from ``evaluation`` (None: all of them)."""
    if verify_size is None:
        return
    if verify_size < 1:
        raise UserError(f"--verify-size is {verify_size}; verify on at least one sample")
    if verify_size > len(evaluation):
        raise UserError(f"--verify-size {verify_size} is more than the {len(evaluation)} evaluation samples of "
                        f"{evaluation.source}; pass at most {len(evaluation)}, or leave it out to verify on all")


def verification_subset(evaluation: Dataset, n: int, seed: int) -> Dataset:
    """``n`` held-out samples for running the exported file: seeded and class-balanced,
    because data folders are ordered by class and a prefix would not be a sample."""
    from infoq_deploy.data.load import split

    return evaluation if n >= len(evaluation) else split(evaluation, n, seed=seed)[0]


def _str_map(value, kind) -> bool:
    """None, or a {str: kind} object (what ORT left float / the integer kernels it runs)."""
    return value is None or (isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, kind) and not isinstance(v, bool) for k, v in value.items()))


def load_verification(path: str | Path) -> dict:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"verification file {path} does not exist; run `infoq-deploy verify ... -o {path}` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON; run `infoq-deploy verify` again") from None
    if not isinstance(doc, dict) or doc.get("format") != VERIFY_FORMAT or not isinstance(doc.get("result"), dict):
        raise UserError(f"{path} is not an infoq-deploy verification file; pass the -o file of `infoq-deploy verify`")
    result, ev = doc["result"], doc.get("eval")
    if not (isinstance(doc.get("onnx"), str) and isinstance(doc.get("onnx_sha256"), str)
            and isinstance(doc.get("quantized_state_sha256"), str) and isinstance(ev, dict)
            and isinstance(ev.get("verified_on"), int) and isinstance(result.get("ok"), bool)):
        raise UserError(f"{path} is damaged (a verification file names its ONNX file, their hashes, the samples "
                        "and the verdict); run `infoq-deploy verify` again")
    numbers = ("mean_abs_diff", "max_abs_diff", "tolerance", "quant_error")
    agreement = result.get("agreement", False)
    if not ((agreement is None or (isinstance(agreement, (int, float)) and not isinstance(agreement, bool)))
            and all(isinstance(result.get(k), (int, float)) and not isinstance(result.get(k), bool) for k in numbers)
            and isinstance(result.get("mismatches"), list) and isinstance(result.get("bits_in_graph"), dict)
            and isinstance(result.get("n_inputs"), int) and isinstance(result.get("fmt"), str)
            and _str_map(result.get("ort_float"), str) and _str_map(result.get("ort_integer_ops"), int)):
        raise UserError(f"{path} is damaged (its result lacks the agreement, logit differences, bits or mismatches); "
                        "run `infoq-deploy verify` again")
    # the verdict follows from the numbers; a file saying otherwise is not believed
    from infoq_deploy.verify.check import VerifyResult

    result["ok"] = VerifyResult.passes(result["agreement"], result["mismatches"], result["mean_abs_diff"],
                                       result["tolerance"])
    onnx_path = Path(doc["onnx"])
    if onnx_path.is_file() and _file_sha256(onnx_path) != doc["onnx_sha256"]:
        raise UserError(f"{onnx_path} has changed since {path} verified it; run `infoq-deploy verify` on it again")
    return doc


def _widest_fpga_cost(qm: QuantizedModel, allocation: dict) -> dict:
    """LUTs and BRAMs of the model with every layer at the widest bits the target allows there,
    at the allocation's folding: the reference the report draws FPGA costs against."""
    from infoq_deploy.allocate.budgets import folded_for
    from infoq_deploy.allocate.ilp import model_costs, pinned_as_allocated

    layers = sorted(deployable(qm.model).layers, key=lambda l: l.order)
    target = pinned_as_allocated(allocation, qm.target)
    target = folded_for([parse_budget(b["text"]) for b in allocation.get("budgets", [])], target)
    cost = model_costs(layers, target.widest_bits(len(layers)), target)
    return {k: cost[k] for k in ("luts", "brams") if k in cost}


def report_run(run_dir: str | Path, qm: QuantizedModel, verified: dict, *, sensitivity: SensitivityTable | None = None,
               inputs: dict | None = None, timings: dict[str, float] | None = None, notes: list[str] = ()) -> None:
    """report.md, report.json and the plots of ``qm`` and its verification into ``run_dir``."""
    from infoq_deploy.quantize.brevitas_model import read_bits
    from infoq_deploy.report.write import write_report

    if verified.get("quantized_state_sha256") != qm.state_sha256():
        raise UserError(f"the verification of {verified.get('onnx')} was made for another quantized model "
                        "(different bit-widths, weights or scales); verify this model's export first")
    if sensitivity is not None and sensitivity.meta.get("model_fingerprint") not in (None, qm.model.fingerprint):
        raise UserError(f"the sensitivity table is for another model than {qm.source.spec}; pass the table "
                        "this model's allocation came from")
    # The costs of the model as built, whatever the files say.
    allocation = recost(qm.allocation, deployable(qm.model).layers, qm.target, read_bits(qm.qmodel))
    result = dict(verified["result"], consumers=list(verified.get("consumers") or []))
    accuracies = dict(qm.accuracies)
    accuracies["exported"] = result.get("accuracy")
    model_info = dict(qm.model_info)
    model_info["eval"] = dict(model_info.get("eval") or {}, verified_on=verified["eval"]["verified_on"])
    model_info["ptq"] = dict(qm.ptq) or PtqConfig.from_json(None).to_json()
    if "luts" in allocation["cost"]:  # FPGA resources against every layer at its widest bits
        model_info["reference_cost"] = _widest_fpga_cost(qm, allocation)
    if timings is None:  # from the stage records
        timings = {}
        if sensitivity is not None and "seconds" in sensitivity.meta:
            timings["profile"] = sensitivity.meta["seconds"]
        solver = qm.allocation.get("solver") or {}
        if solver.get("seconds") is not None:
            timings["allocate"] = solver["seconds"]
        timings.update(qm.timings)
        timings["verify"] = round(float(result.get("seconds", 0.0)), 3)
    all_notes = list(qm.notes) + list(notes)
    n_eval = verified["eval"]["n"]
    if verified["eval"]["verified_on"] < n_eval:
        all_notes.append(
            f"the exported graph was run on {verified['eval']['verified_on']} of the {n_eval} evaluation samples "
            "(--verify-size, class-balanced): its accuracy is on that subset, the other accuracies on all of them"
        )
    if any(m in FPGA_METRICS for m in qm.target.metrics) and (
            why := fpga_why_not(deployable(qm.model).layers)) is not None:
        all_notes.append(f"no LUT, BRAM or cycle estimates: {why}")
    if not result.get("ok"):
        all_notes.append("VERIFICATION FAILED: the exported graph does not match the quantized model (see verify)")
    if inputs is None:
        inputs = {"quantized_model": qm.source.to_json(), "target": target_ref(qm.target), "stage": qm.stage,
                  "budgets": [b.get("text") for b in qm.allocation.get("budgets", [])],
                  "data": {k: f"{v.source}" + ("" if v.part == "all" else f" ({v.part})") + f", {v.n} samples"
                           for k, v in qm.data.items()},
                  "exported": verified["onnx"]}
    write_report(Path(run_dir), inputs=inputs, model_info=model_info, allocation=allocation,
                 sensitivity=sensitivity, accuracies=accuracies, verify=result, timings=timings,
                 finetune=qm.finetune, notes=all_notes)


__all__ = [
    "DEFAULT_DATA", "DEFAULT_EVAL_DATA", "DEFAULT_MODEL", "DataPlan", "DataRef", "FinetuneConfig", "ModelSource",
    "QuantizedModel", "absolute_spec", "allocate_table", "allocation_document", "check_allocation", "deployable", "export_quantized",
    "finetune_quantized", "preflight", "load_data", "load_model", "load_quantized", "load_target", "list_targets", "load_verification",
    "pin_target", "plan_datasets", "profile", "profile_infoq", "profile_mse", "quantize", "report_run", "save_quantized", "verification_subset",
    "verify_quantized",
]
