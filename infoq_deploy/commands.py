"""What each CLI command does, from parsed arguments to files and printed output."""

from __future__ import annotations

import json
import re
from pathlib import Path

from . import stages
from .allocate import allocation_to_json
from .atomic import write_json
from .data import load_data
from .errors import UserError
from .inspect_report import format_layer_table, inspect_json
from .model_sources import load_model
from .sensitivity import load_sensitivity
from .targets import list_targets, load_target


def _load(args):
    return load_model(args.model, weights=args.weights, input_shape=args.input_shape, data_root=args.data_root)


def cmd_inspect(args) -> int:
    model = _load(args)
    if args.json:
        print(json.dumps(inspect_json(model), indent=2))
    else:
        print(format_layer_table(model))
    return 0


def _profile(args, model, target, plots_dir=None):
    data = None
    if args.data is not None:
        data = load_data(args.data, model.preprocess, limit=args.calib_size, seed=args.seed, labels=args.labels)
    method = args.method or "infoq"
    if method == "mse":
        return stages.profile_mse(model, target, data, seed=args.seed)
    from .profile_infoq import profile_infoq  # the InfoQ profiler

    if data is None:
        raise UserError("the InfoQ profiler needs calibration data; pass --data (an image folder, .npz/.pt or builtin:NAME)")
    return profile_infoq(model, target, data, seed=args.seed, n_proj=args.n_proj, k=args.k, encoder=args.encoder,
                         use_inverse_bits=not args.no_inverse_bits, plots_dir=plots_dir)


def cmd_profile(args) -> int:
    model = _load(args)
    target = load_target(args.target)
    out = Path(args.output)
    plots_dir = out.with_name(out.stem + "_plots")
    table = _profile(args, model, target, plots_dir=plots_dir)
    table.save(out)
    print(f"wrote {out}: {len(table.layers)} layers, method {table.meta.get('method')}")
    if table.meta.get("method") == "infoq":
        print(f"plots: {plots_dir}/sensitivity.png, {plots_dir}/observers.png")
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
    target = load_target(args.target)
    alloc = stages.allocate_table(table, target, args.budget, alpha=args.alpha)
    doc = allocation_to_json(alloc, target, table.meta)
    write_json(args.output, doc)
    if args.json:
        print(json.dumps(doc, indent=2))
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
    targets = list_targets()
    if args.json:
        print(json.dumps([_target_json(t) for t in targets], indent=2))
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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", Path(text).stem if text.endswith(".onnx") else text).strip("-").lower()


def _run_config(args, *, budgets: list[str], method: str, allocation: str | None = None):
    from .pipeline import RunConfig

    default = args.model is None
    model_spec = args.model or stages.DEFAULT_MODEL
    target_name = Path(args.target).stem if args.target.endswith(".toml") else args.target
    return RunConfig(
        model=model_spec,
        target=args.target,
        budgets=budgets,
        run_dir=Path(args.output or Path("runs") / f"{_slug(model_spec)}-{target_name}"),
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
        method=method,
        alpha=getattr(args, "alpha", 1.0),
        seed=args.seed,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        resume=args.resume,
        progress=not args.json,
        allocation=allocation,
        infoq={"n_proj": getattr(args, "n_proj", 32), "k": getattr(args, "k", 3), "encoder": getattr(args, "encoder", None),
               "use_inverse_bits": not getattr(args, "no_inverse_bits", False)},
    )


def _run_and_print(cfg, as_json: bool) -> int:
    from .pipeline import run

    summary = run(cfg)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print((Path(summary["run_dir"]) / "report.md").read_text())
        print(f"wrote {summary['run_dir']}/ (model.onnx, report.md, report.json, allocation.json, plots)")
    return 0


def cmd_run(args) -> int:
    return _run_and_print(_run_config(args, budgets=list(args.budget), method=args.method or "infoq"), args.json)


def cmd_quantize(args) -> int:
    cfg = _run_config(args, budgets=[], method="none", allocation=args.allocation)
    return _run_and_print(cfg, args.json)
