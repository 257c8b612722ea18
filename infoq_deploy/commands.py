"""What each CLI command does, from parsed arguments to files and printed output."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from . import __version__, stages
from .allocate import allocation_to_json
from .atomic import write_json
from .data import load_data
from .errors import UserError
from .inspect_report import format_layer_table, inspect_json
from .model_sources import load_model
from .sensitivity import load_sensitivity
from .targets import list_targets, load_target

RUN_FILE = "run.json"


def _load(args):
    return load_model(args.model, weights=args.weights, input_shape=args.input_shape, data_root=args.data_root)


def cmd_inspect(args) -> int:
    model = _load(args)
    if args.json:
        print(json.dumps(inspect_json(model), indent=2))
    else:
        print(format_layer_table(model))
    return 0


def _profile(args, model, target):
    data = None
    if args.data is not None:
        data = load_data(args.data, model.preprocess, limit=args.calib_size, seed=args.seed, labels=args.labels)
    method = args.method or "mse"
    if method == "mse":
        return stages.profile_mse(model, target, data, seed=args.seed)
    from .profile_infoq import profile_infoq  # the InfoQ profiler

    if data is None:
        raise UserError("the InfoQ profiler needs calibration data; pass --data (an image folder, .npz/.pt or builtin:NAME)")
    return profile_infoq(model, target, data, seed=args.seed)


def cmd_profile(args) -> int:
    model = _load(args)
    target = load_target(args.target)
    table = _profile(args, model, target)
    table.save(args.output)
    print(f"wrote {args.output}: {len(table.layers)} layers, method {table.meta.get('method')}")
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


def _claim_run_dir(run_dir: Path, inputs: dict) -> None:
    """A run directory holds one run: refuse one that holds another run's files."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} exists and is not a directory; pick another -o RUN_DIR")
    marker = run_dir / RUN_FILE
    if marker.is_file():
        previous = json.loads(marker.read_text()).get("inputs")
        if previous != inputs:
            raise UserError(
                f"{run_dir} already holds another run (different model, data, target or budget); "
                "pick a new -o RUN_DIR or delete that one"
            )
    elif any(run_dir.iterdir()):
        raise UserError(f"{run_dir} is not empty and holds no infoq-deploy run; pick a new -o RUN_DIR")


def cmd_run(args) -> int:
    model_spec = args.model or stages.DEFAULT_MODEL
    data_spec = args.data or (stages.DEFAULT_DATA if args.model is None else None)
    target = load_target(args.target)
    inputs = {
        "model": model_spec,
        "weights": args.weights,
        "data": data_spec,
        "target": target.name,
        "budgets": args.budget,
        "alpha": args.alpha,
        "method": args.method or "mse",
        "seed": args.seed,
        "calib_size": args.calib_size,
    }
    run_dir = Path(args.output or Path("runs") / f"{_slug(model_spec)}-{target.name}")
    _claim_run_dir(run_dir, inputs)
    # Validate every budget before the expensive stages run.
    from .budgets import parse_budget

    for text in args.budget:
        parse_budget(text)

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model = load_model(model_spec, weights=args.weights, input_shape=args.input_shape, data_root=args.data_root)
    timings["import"] = time.perf_counter() - t0

    args.data = data_spec
    t0 = time.perf_counter()
    table = _profile(args, model, target)
    timings["profile"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    alloc = stages.allocate_table(table, target, args.budget, alpha=args.alpha)
    timings["allocate"] = time.perf_counter() - t0
    alloc_doc = allocation_to_json(alloc, target, table.meta)

    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / RUN_FILE, {"tool_version": __version__, "inputs": inputs, "status": "running"})
    table.save(run_dir / "sensitivity.json")
    write_json(run_dir / "allocation.json", alloc_doc)
    summary = {
        "tool_version": __version__,
        "inputs": inputs,
        "model": {"spec": model.spec, "layers": len(table.layers)},
        "stages_done": ["import", "profile", "allocate"],
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "allocation": {"cost": alloc_doc["cost"], "budgets": alloc_doc["budgets"]},
    }
    write_json(run_dir / "report.json", summary)
    write_json(run_dir / RUN_FILE, {"tool_version": __version__, "inputs": inputs, "status": "complete"})
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_allocation(alloc_doc)
        print(f"stage timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
        print(f"wrote {run_dir}/ (sensitivity.json, allocation.json, report.json)")
    return 0
