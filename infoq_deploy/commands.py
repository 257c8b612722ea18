"""What each CLI command does, from parsed arguments to files and printed output."""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from pathlib import Path

from infoq_deploy import stages
from infoq_deploy.backends import ort_fusion
from infoq_deploy.core import devices, distributed
from infoq_deploy.core.atomic import dumps, write_json
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.outputs import claim_dir, claim_file
from infoq_deploy.data.load import load_data
from infoq_deploy.importing.inventory import format_layer_table, inspect_json
from infoq_deploy.importing.sources import load_model
from infoq_deploy.profile import registry as profile_methods
from infoq_deploy.profile.table import load_sensitivity
from infoq_deploy.quantize.ptq import DEFAULT_ALGORITHM, DEFAULT_BIAS_CORRECTION, PtqConfig

# What each subcommand writes with -o: claimed before any work starts (core/outputs.py).
_OUTPUTS = {"profile": "file", "allocate": "file", "quantize": "file", "finetune": "file", "export": "file",
            "verify": "file", "report": "dir"}


def _plots_dir(output) -> Path:
    out = Path(output)
    return out.with_name(out.stem + "_plots")


def _checkpoint_dir(args) -> Path:
    return Path(args.checkpoints) if args.checkpoints else Path(args.output).parent / "checkpoints"


def claim_outputs(args) -> None:
    """Refuse an output location that cannot be written now, not after a sweep or a training run."""
    kind = _OUTPUTS.get(args.command)
    if kind is None or (args.command == "verify" and args.output is None):
        return
    (claim_file if kind == "file" else claim_dir)(args.output)
    if args.command == "profile":
        claim_dir(_plots_dir(args.output), "-o (its plots folder)")
    if args.command == "finetune":
        claim_dir(_checkpoint_dir(args), "--checkpoints")


def _check_launch(command: str) -> None:
    """Under torchrun only the stages that split their work may run: any other would run N times."""
    if distributed.launched() and command not in distributed.DISTRIBUTED_COMMANDS:
        raise UserError(f"{command if command.startswith('the ') else f'`{command}`'} does not run under torchrun (only "
                        f"{' and '.join(distributed.DISTRIBUTED_COMMANDS)} split their work across processes); "
                        "run it as one process")


def run_subcommand(args) -> int:
    _check_launch(args.command)
    claim_outputs(args)
    return globals()[f"cmd_{args.command}"](args)


def _load(args):
    return load_model(args.model, weights=args.weights, input_shape=args.input_shape, data_root=args.data_root)


def cmd_inspect(args) -> int:
    loaded = _load(args)
    # the layer table every later stage costs (BatchNorm folded, so folded biases count), and the
    # whole-model parameter count of the model as given: one accounting from inspect to report
    model = dataclasses.replace(loaded, layers=stages.deployable(loaded).layers)
    if args.json:
        print(dumps(inspect_json(model)), end="")
    else:
        print(format_layer_table(model))
    return 0


def _method_settings(args) -> dict:
    """Every method option of the command line; each method takes the ones it names."""
    return {"seed": args.seed, "n_proj": args.n_proj, "k": args.k, "encoder": args.encoder,
            "use_inverse_bits": not args.no_inverse_bits, **({"pairwise": True} if args.pairwise else {}),
            **({"noise_floor": True} if args.noise_floor else {}),
            **({"shrink": True} if args.shrink else {}),
            **({"label_term": args.label_term} if args.label_term != "labels" else {})}


def _profile(args, model, target, plots_dir=None):
    method = args.method or profile_methods.DEFAULT
    profile_methods.get(method)
    data = None
    if args.data is not None:
        data = load_data(args.data, model.preprocess, limit=args.calib_size, seed=args.seed, labels=args.labels)
    return stages.profile(model, target, data, method, plots_dir=plots_dir, device=devices.resolve(args.device),
                          **_method_settings(args))


def _ptq(args) -> PtqConfig:
    return PtqConfig(args.ptq or DEFAULT_ALGORITHM, getattr(args, "bias_correction", DEFAULT_BIAS_CORRECTION),
                     chosen=args.ptq is not None)


def cmd_profile(args) -> int:
    model = _load(args)
    target = stages.load_target(args.target).with_scale_rule(_ptq(args).scale_rule)
    out = Path(args.output)
    plots_dir = _plots_dir(out)
    started = time.time() - 1  # plots this run wrote, not an earlier run's (file times are coarse)
    table = _profile(args, model, target, plots_dir=plots_dir)
    if not distributed.world().main:  # under torchrun every rank holds the table; rank 0 writes it
        return 0
    table.save(out)
    pairs = f", {len(table.pairs)} layer pairs" if table.pairs else ""
    print(f"wrote {out}: {len(table.layers)} layers{pairs}, method {table.meta.get('method')}")
    plots = sorted(p for p in plots_dir.glob("*.png") if p.stat().st_mtime >= started) if plots_dir.is_dir() else []
    if plots:
        print("plots: " + ", ".join(f"{plots_dir}/{p.name}" for p in plots))
    for o in table.meta.get("observers", []):
        print(f"observer {o['name']} ({o['kind']}): r = {o['r']}")
    return 0


def _print_allocation(doc: dict) -> None:
    width = max(len(layer["name"]) for layer in doc["layers"])
    print(f"{'layer':<{width}}  w_bits  a_bits")
    for layer in doc["layers"]:
        print(f"{layer['name']:<{width}}  {layer['w_bits']:>6}  {layer['a_bits']:>6}")
    costs = ", ".join(f"{k} {v:,.6g}" for k, v in doc["cost"].items())
    print(f"cost: {costs}")
    for b in doc.get("budgets", []):
        print(f"budget {b['text']}: {b['used']:,.6g} used of {b['limit']:,.6g} ({b['metric']})")


def cmd_allocate(args) -> int:
    table = load_sensitivity(args.sensitivity)
    target = stages.pin_target(stages.load_target(args.target), args.pin, args.no_pin).with_scale_rule(_ptq(args).scale_rule)
    doc = stages.allocation_document(table, target, args.budget, alpha=args.alpha)
    write_json(args.output, doc)
    if args.json:
        print(dumps(doc), end="")
    else:
        _print_allocation(doc)
        print(f"wrote {args.output}")
    return 0


def _target_json(t) -> dict:
    return {
        "name": t.name,
        "description": t.description,
        "export": t.export,
        "metrics": list(t.metrics),
        "weights": {"bits": list(t.weights.bits), "granularity": t.weights.granularity, "scale": t.weights.scale},
        "activations": {"bits": list(t.activations.bits), "scale": t.activations.scale, "signed": t.activations.signed},
        "pin_first": list(t.pin_first) if t.pin_first else None,
        "pin_last": list(t.pin_last) if t.pin_last else None,
        "pairs": [list(p) for p in t.pairs] if t.pairs else None,
        "path": t.path,
    }


def cmd_targets(args) -> int:
    if getattr(args, "targets_action", None) == "measure":
        return _measure_target(args)
    targets = stages.list_targets()
    if args.json:
        print(dumps([_target_json(t) for t in targets]), end="")
        return 0
    for t in targets:
        bits = f"w{{{','.join(map(str, t.weights.bits))}}} a{{{','.join(map(str, t.activations.bits))}}}"
        if t.pairs:
            bits = "pairs " + " ".join(f"w{w}/a{a}" for w, a in t.pairs)
        pins = t.pin_note() or "no pinned layers"
        print(f"{t.name:<13} {t.export:<6} {bits}; {t.weights.granularity} {t.weights.scale} weights; "
              f"metrics {', '.join(t.metrics)}; {pins}")
        print(f"{'':<13} {t.description}")
    return 0


def _measure_target(args) -> int:
    from infoq_deploy.measure_target import measure, write_target

    target = stages.load_target(args.target)
    if not args.output.endswith(".toml"):
        raise UserError(f"the measured target is written as a target file; name it NAME.toml, not {Path(args.output).name}")
    claim_file(args.output)
    model = _load(args)
    calibration = None
    if args.data is not None:
        calibration = load_data(args.data, model.preprocess, limit=args.calib_size, seed=args.seed).x
    doc = measure(target, model, calibration, runs=args.runs, seed=args.seed)
    toml, table = write_target(target, doc, args.output)
    prov = doc["provenance"]
    for key, total in prov["whole_graph_ms"].items():
        print(f"{key}: whole graph {total:.3f} ms, rest of the graph {prov['rest_of_graph_ms'][key]:.3f} ms")
    print(f"wrote {toml} and {table}; use it with --target {toml}")
    return 0


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", Path(text).stem if text.endswith(".onnx") else text).strip("-").lower()


def _run_config(args, *, budgets: list[str], method: str, allocation: str | None = None):
    from infoq_deploy.pipeline import RunConfig

    default = args.model is None
    model_spec = args.model or stages.DEFAULT_MODEL
    if args.output is not None and not args.output.strip():
        raise UserError("-o is empty; name the run directory, or leave -o out for runs/<model>-<target>")
    target_name = Path(args.target).stem if args.target.endswith(".toml") else args.target
    return RunConfig(
        model=model_spec,
        target=args.target,
        budgets=budgets,
        run_dir=Path(args.output) if args.output is not None else Path("runs") / f"{_slug(model_spec)}-{target_name}",
        weights=args.weights,
        input_shape=args.input_shape,
        data_root=args.data_root,
        data=args.data or (stages.DEFAULT_DATA if default else None),
        eval_data=args.eval_data or (stages.DEFAULT_EVAL_DATA if default and args.data is None else None),
        train_data=args.train_data,
        train_size=args.train_size,
        labels=args.labels,
        calib_size=args.calib_size,
        eval_size=args.eval_size,
        verify_size=args.verify_size,
        consumer_size=args.consumer_size,
        backend=args.backend,
        method=method,
        ptq=args.ptq,
        bias_correction=args.bias_correction,
        alpha=getattr(args, "alpha", 1.0),
        pins=[(w, None if p is None else list(p)) for w, p in args.pin],
        no_pin=args.no_pin,
        seed=args.seed,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        resume=args.resume,
        progress=not args.json,
        allocation=allocation,
        infoq={k: v for k, v in _method_settings(args).items() if k != "seed"},
        device=args.device,
    )


def _run_and_print(cfg, as_json: bool) -> int:
    from infoq_deploy.pipeline import run

    summary = run(cfg)
    if as_json:
        print(dumps(summary), end="")
    else:
        print((Path(summary["run_dir"]) / "report.md").read_text())
        print(f"wrote {summary['run_dir']}/ (model.onnx, report.md, report.json, allocation.json, quantized.pt, "
              "verify.json, plots)")
    return 0


def cmd_run(args) -> int:
    _check_launch("the one-command pipeline")
    if args.allocation is not None:
        if args.budget:
            raise UserError("--allocation gives the bit-widths, so --budget has nothing to do; pass one or the other")
        if args.pin or args.no_pin:
            raise UserError("--allocation gives the bit-widths and records its pins, so --pin/--no-pin have nothing "
                            "to do; pass them to `infoq-deploy allocate` instead")
        cfg = _run_config(args, budgets=[], method="none", allocation=args.allocation)
    elif not args.budget:
        raise UserError("no budget given; pass at least one --budget (e.g. --budget 4.5MB or --budget 3.5bit), "
                        "or --allocation ALLOCATION.json")
    else:
        cfg = _run_config(args, budgets=list(args.budget), method=args.method or profile_methods.DEFAULT)
    return _run_and_print(cfg, args.json)


# ---------------------------------------------------------------- stage subcommands after allocate


def _pct(value) -> str:
    return "—" if value is None else f"{100.0 * value:.2f}%"


def _agreement(r: dict) -> str:
    """Top-1 agreement and what it was judged on (verify/check.py: top1_agreement)."""
    judged_on = r.get("top1_judged_on")
    if judged_on is None:  # a file from before near-ties were set aside
        return _pct(r["agreement"])
    if r["agreement"] is None:
        return f"not judged (all {r['n_inputs']} inputs are near-ties within what rounding and the tolerance allow)"
    ties = f", {r['ties']} near-tie flips set aside" if r.get("ties") else ""
    return f"{_pct(r['agreement'])} on {judged_on} decisive inputs of {r['n_inputs']}{ties}"


def _print_accuracies(acc: dict) -> None:
    if acc:
        print("top-1: " + ", ".join(f"{k} {_pct(v)}" for k, v in acc.items()))


def _quantized_summary(qm, path) -> dict:
    return {"file": str(path), "stage": qm.stage, "target": qm.target.name, "accuracies": qm.accuracies,
            "timings": qm.timings, "ptq": qm.ptq, "notes": list(qm.notes), "bits": {k: list(v) for k, v in qm.bits.items()}}


def _eval_set(args, qm, role: str = "evaluation"):
    """--eval-data when given, else the evaluation set the quantized file records."""
    from infoq_deploy.data.plan import load_one, load_ref

    pre = qm.model.preprocess
    if args.eval_data is not None:
        return load_one(args.eval_data, pre, limit=args.eval_size, seed=args.seed)
    ref = qm.data.get("evaluation")
    if ref is None:
        raise UserError(f"{args.quantized} records no evaluation data; pass --eval-data (labelled, held out)")
    return load_ref(ref, pre, role), ref


def cmd_quantize(args) -> int:
    from infoq_deploy.allocate.ilp import load_allocation
    from infoq_deploy.data.plan import plan_datasets
    from infoq_deploy.quantize.file import ModelSource, save_quantized

    doc = load_allocation(args.allocation)
    target = stages.load_target(args.target or doc["target"])
    model = _load(args)
    default = args.model == stages.DEFAULT_MODEL and args.data is None
    plan = plan_datasets(model.preprocess, data=stages.DEFAULT_DATA if default else args.data,
                         eval_data=args.eval_data or (stages.DEFAULT_EVAL_DATA if default else None),
                         labels=args.labels, calib_size=args.calib_size, eval_size=args.eval_size, seed=args.seed)
    source = ModelSource.of(args.model, args.weights, args.input_shape, args.data_root)
    qm = stages.quantize(model, target, doc, plan, source, allocation_name=args.allocation, ptq=_ptq(args),
                         progress=not args.json, device=devices.resolve(args.device))
    save_quantized(args.output, qm)
    if args.json:
        print(dumps(_quantized_summary(qm, args.output)), end="")
    else:
        _print_allocation(qm.allocation)  # its costs recomputed from the model built
        _print_accuracies(qm.accuracies)
        for note in qm.notes:
            print(f"note: {note}")
        print(f"wrote {args.output}")
    return 0


def cmd_finetune(args) -> int:
    from infoq_deploy.data.plan import load_one, load_ref
    from infoq_deploy.quantize.file import load_quantized, save_quantized
    from infoq_deploy.quantize.finetune import FinetuneConfig

    if args.epochs < 1:
        raise UserError(f"--epochs is {args.epochs}; fine-tune for at least one epoch")
    qm = load_quantized(args.quantized)
    pre = qm.model.preprocess
    if args.train_data is not None:
        train, train_ref = load_one(args.train_data, pre, limit=args.train_size, seed=args.seed)
    else:
        train_ref = qm.data.get("train") or qm.data["calibration"]
        train = load_ref(train_ref, pre, "training")
    evaluation, eval_ref = _eval_set(args, qm)
    cfg = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    if args.lr is not None:
        cfg.lr = args.lr
    ckpt_dir = _checkpoint_dir(args)
    stages.finetune_quantized(qm, train, evaluation, cfg, ckpt_dir, resume=args.resume, progress=not args.json,
                              train_ref=train_ref, eval_ref=eval_ref, device=devices.resolve(args.device))
    if not distributed.world().main:  # under torchrun every rank ends with the same model; rank 0 writes it
        return 0
    save_quantized(args.output, qm)
    if args.json:
        print(dumps(_quantized_summary(qm, args.output)), end="")
    else:
        ft = qm.finetune
        print(f"fine-tuned {ft['epochs_run']} epochs; best epoch {ft['best_epoch']} (checkpoints in {ckpt_dir})")
        _print_accuracies(qm.accuracies)
        print(f"wrote {args.output}")
    return 0


def cmd_export(args) -> int:
    from infoq_deploy.quantize.file import load_quantized

    qm = load_quantized(args.quantized)
    fmt = args.format or qm.target.export
    seconds = stages.export_quantized(qm, args.output, fmt)
    if args.json:
        print(dumps({"file": str(args.output), "format": fmt, "stage": qm.stage, "seconds": seconds}), end="")
        return 0
    print(f"wrote {args.output} ({fmt}, {qm.stage} model, {seconds:.1f} s); check it with "
          f"`infoq-deploy verify {args.output} {args.quantized}`")
    return 0


def cmd_verify(args) -> int:
    from infoq_deploy.quantize.file import load_quantized
    from infoq_deploy.verify.consumer import ConsumerResult

    qm = load_quantized(args.quantized)
    evaluation, eval_ref = _eval_set(args, qm)
    fmt = args.format or qm.target.export
    consumers = stages.consumers_for(fmt, args.backend)
    doc = stages.verify_quantized(args.onnx, qm, evaluation, verify_size=args.verify_size, seed=args.seed,
                                  fmt=fmt, eval_ref=eval_ref, consumers=consumers, consumer_size=args.consumer_size)
    if args.output:
        write_json(args.output, doc)
    r = doc["result"]
    if args.json:
        print(dumps(doc), end="")
    else:
        print(f"{args.onnx} ({r['fmt']}) against {args.quantized} on {r['n_inputs']} samples of {evaluation.source}:")
        print(f"  top-1 agreement {_agreement(r)} (need >= {_pct(0.995)}); exported accuracy "
              f"{_pct(r['accuracy'])}, Brevitas {_pct(r['reference_accuracy'])}")
        print(f"  logits: mean |diff| {r['mean_abs_diff']:.4g} (tolerance {r['tolerance']:.4g}), max {r['max_abs_diff']:.4g}")
        if r.get("rounding_noise") is not None:
            most = f", max {r['rounding_max']:.4g}" if r.get("rounding_max") is not None else ""
            print(f"  the model itself, run in float64: mean |diff| {r['rounding_noise']:.4g}{most} (float rounding "
                  f"alone); quantization error {r['quant_error']:.4g}")
        if r.get("reference_check"):
            c = r["reference_check"]
            same = "identical" if c["identical"] else f"max |diff| {c['max_abs_diff']:.4g}"
            print(f"  run by {r['runner']}; {c['backend']} on the first {c['n_inputs']}: {same} ({c['seconds']:.1f} s)")
        in_graph = {k: tuple(v) for k, v in r["bits_in_graph"].items()}
        carried = sum(in_graph.get(name) == pair for name, pair in qm.bits.items())
        print(f"  bits: {carried}/{len(qm.bits)} layers carry their allocated (w_bits, a_bits) in the graph")
        if r.get("ort_float") is not None:
            print(f"  ONNX Runtime: {ort_fusion.summary(r['ort_float'], r.get('ort_integer_ops') or {})}")
        for m in r["mismatches"]:
            print(f"  mismatch: {m}")
        for c in doc["consumers"]:
            print(f"  consumer {ConsumerResult(**{k: v for k, v in c.items() if k != 'ok'}).line()}")
        if args.output:
            print(f"wrote {args.output}")
    if not r["ok"]:
        print(f"infoq-deploy: error: {args.onnx} failed verification against {args.quantized}; "
              "re-export it from this model, or see the mismatches above", file=sys.stderr)
        return 1
    return 0


def cmd_report(args) -> int:
    from infoq_deploy.quantize.file import load_quantized

    out = Path(args.output)
    verified = stages.load_verification(args.verification)
    table = load_sensitivity(args.sensitivity) if args.sensitivity else None
    qm = load_quantized(args.quantized)
    stages.report_run(out, qm, verified, sensitivity=table)
    if args.json:
        print((out / "report.json").read_text())
    else:
        print(f"wrote {out}/report.md, {out}/report.json and plots")
    return 0
