"""The run report: report.json (machine-readable) + report.md (for people) + PNG plots.

``report.json`` is written last and an older one is removed first: its presence marks a
run directory whose report is complete and current.

Cost references, used when no budget names a metric: size against the float32 model
(the "12x" compression convention), BitOps against 8-bit weights and activations,
average weight bits against 32. Latency has no reference the report can compute
without the target's table; pass ``model_info["reference_cost"] = {"latency_ms": ...}``
(e.g. ``allocate.ilp.model_costs(layers, [(8, 8)] * n, target)``) to get one.
"""

from __future__ import annotations

import dataclasses
import math
import platform
from pathlib import Path

from infoq_deploy import __version__
from infoq_deploy.allocate.costs import BYTES_PER_MB, fp32_size_bytes
from infoq_deploy.backends import ort_fusion
from infoq_deploy.core.atomic import write_json, write_text
from infoq_deploy.importing.layers import Layer
from infoq_deploy.profile.table import SensitivityTable
from infoq_deploy.report.plots import (
    ACCURACY_LABELS,
    FLOAT_BITS,
    plot_accuracy,
    plot_bits_per_layer,
    plot_cost_vs_budget,
    plot_sensitivity_heatmap,
)
from infoq_deploy.verify.consumer import ConsumerResult

FORMAT = "infoq-deploy/report/1"
PLOTS = ("bits_per_layer.png", "sensitivity_heatmap.png", "cost_vs_budget.png", "accuracy.png")

# metric -> (cost key in the allocation, title)
_METRICS = {
    "size": ("size_bytes", "model size"),
    "bitops": ("bitops", "BitOps"),
    "latency": ("latency_ms", "latency"),
    "wbits": ("avg_weight_bits", "average weight bits"),
    "luts": ("luts", "LUTs (FINN estimate)"),
    "brams": ("brams", "BRAM_18K (FINN estimate)"),
    "cycles": ("cycles", "cycles per frame (FINN estimate)"),
}


# ---------------------------------------------------------------- formatting

def fmt_metric(metric: str, value: float | None) -> str:
    if value is None:
        return "—"
    if metric == "size":  # MB (2^20) as the MPQ literature; small models read better in KB
        if value >= 0.1 * BYTES_PER_MB:
            return f"{value / BYTES_PER_MB:.4g} MB"
        return f"{value / 1024:.4g} KB" if value >= 1024 else f"{value:.4g} B"
    if metric == "bitops":
        for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
            if abs(value) >= scale:
                return f"{value / scale:.4g} {prefix}BOPs"
        return f"{value:.4g} BOPs"
    if metric == "latency":
        return f"{value:.4g} ms"
    if metric == "wbits":
        return f"{value:.3g} bit"
    if metric in ("luts", "brams", "cycles"):
        return f"{value:,.0f} " + {"luts": "LUT", "brams": "BRAM", "cycles": "cycles"}[metric]
    return f"{value:.4g}"


def fmt_acc(value: float | None) -> str:
    return "—" if value is None else f"{100.0 * value:.2f}%"


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k} {_fmt(v)}" for k, v in _given(value).items())
    return str(value)


def _cell(text) -> str:
    return _fmt(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _jsonable(obj):
    """Plain JSON values: dataclasses, Paths, tuples and non-finite floats made safe."""
    if isinstance(obj, Layer):
        return obj.to_json()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item"):  # numpy / torch scalars
        return _jsonable(obj.item())
    return str(obj)


# ---------------------------------------------------------------- content

def _layers(model_info: dict, sensitivity: SensitivityTable | None) -> list[Layer]:
    if sensitivity is not None and sensitivity.layers:
        return sorted(sensitivity.layers, key=lambda l: l.order)
    rows = model_info.get("layers") or []
    return sorted((r if isinstance(r, Layer) else Layer.from_json(r) for r in rows), key=lambda l: l.order)


def layer_rows(allocation: dict, layers: list[Layer], sensitivity: SensitivityTable | None) -> list[dict]:
    """One row per allocated layer: its table facts, bits, and its scores at those bits."""
    by_name = {l.name: l for l in layers}
    rows = []
    for i, entry in enumerate(allocation["layers"]):
        name, w, a = entry["name"], int(entry["w_bits"]), int(entry["a_bits"])
        layer = by_name.get(name)
        s_w = s_a = None
        if sensitivity is not None:
            s_w = sensitivity.weights.get(name, {}).get(w)
            s_a = sensitivity.activations.get(name, {}).get(a)
        rows.append({
            "index": i, "name": name,
            "kind": layer.kind if layer else None,
            "params": layer.params if layer else None,
            "macs": layer.macs if layer else None,
            "w_bits": w, "a_bits": a, "w_score": s_w, "a_score": s_a,
        })
    return rows


def cost_panels(allocation: dict, layers: list[Layer], reference_cost: dict | None = None) -> list[dict]:
    """Per metric of the target (and of any budget): cost / budget, or cost / reference."""
    cost = allocation.get("cost", {})
    reference_cost = reference_cost or {}
    metrics = [m for m, (key, _) in _METRICS.items() if key in cost and m != "wbits"]
    for b in allocation.get("budgets", []):
        if b["metric"] not in metrics:
            metrics.append(b["metric"])
    panels = []
    for metric in metrics:
        key, title = _METRICS.get(metric, (metric, metric))
        used = cost.get(key)
        budgets = [b for b in allocation.get("budgets", []) if b["metric"] == metric]
        bars = []
        for b in budgets:
            frac = b["used"] / b["limit"] if b["limit"] else None
            bars.append({"label": f"budget {b['text']}", "kind": "budget", "fraction": frac,
                         "used": b["used"], "limit": b["limit"],
                         "text": f"{fmt_metric(metric, b['used'])}\nof {fmt_metric(metric, b['limit'])}"})
        if not budgets:
            ref, ref_label = _reference(metric, layers, reference_cost, cost)
            frac = used / ref if (used is not None and ref) else None
            text = fmt_metric(metric, used) + (f"\nof {fmt_metric(metric, ref)}" if ref else "\n(no reference)")
            bars.append({"label": ref_label, "kind": "reference", "fraction": frac, "used": used, "limit": ref,
                         "text": text})
        panels.append({"metric": metric, "title": title, "bars": bars})
    return panels


_REFERENCE_LABELS = {"luts": "vs widest bits", "brams": "vs widest bits"}


def _reference(metric: str, layers: list[Layer], reference_cost: dict, cost: dict | None = None) -> tuple[float | None, str]:
    key = _METRICS.get(metric, (metric, ""))[0]
    if key in reference_cost:
        return float(reference_cost[key]), _REFERENCE_LABELS.get(metric, "vs reference")
    if metric == "cycles" and (cost or {}).get("fold_cycles_per_frame"):
        return float(cost["fold_cycles_per_frame"]), "vs folding target"
    if not layers:
        return None, "no reference"
    if metric == "size":
        return fp32_size_bytes(layers), "vs float32"
    if metric == "bitops":
        return float(sum(l.macs * 8 * 8 for l in layers)), "vs 8/8-bit"
    if metric == "wbits":
        return float(FLOAT_BITS), "vs float32"
    return None, "no reference"


def _check_accuracies(accuracies: dict) -> None:
    for k, v in accuracies.items():
        if k not in ACCURACY_LABELS:
            raise ValueError(f"unknown accuracy key {k!r}; expected one of {', '.join(ACCURACY_LABELS)}")
        if v is not None and not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
            raise ValueError(f"accuracy {k}={v!r} is not a fraction in [0, 1]")


# ---------------------------------------------------------------- markdown

def _given(d: dict) -> dict:
    """The entries that were set: a report lists what happened, not rows of dashes."""
    return {k: v for k, v in d.items() if v is not None and v != "" and v != [] and v != {}}


def _model_name(doc: dict) -> str | None:
    inputs = doc["inputs"]
    given = inputs.get("quantized_model")
    return inputs.get("model") or (given.get("spec") if isinstance(given, dict) else None) or doc["model"].get("spec")


def pin_line(alloc: dict) -> str | None:
    """Which layers were held at fixed bits, and who said so (the target, or --pin/--no-pin)."""
    pins, layers = alloc.get("pins"), alloc.get("layers") or []
    if not pins or not layers:
        return None
    held = [f"{layers[i]['name']} ({where} layer) at w{p[0]}/a{p[1]}"
            for where, i, p in (("first", 0, pins.get("first")), ("last", -1, pins.get("last"))) if p]
    by = f"by target {alloc.get('target')}" + ("" if pins.get("from") == "target" else f" with {pins.get('from')}")
    if not held:
        return f"none ({by})"
    why = f": {pins['why']}" if pins.get("why") else ""
    return f"{', '.join(held)}, {by}{why}"


def summary_rows(doc: dict) -> list[list[str]]:
    """The answer first: what was built, what it costs against each budget, how accurate it is, verified or not."""
    alloc, verify = doc["allocation"], doc["verify"] or {}
    target = alloc.get("target") or doc["inputs"].get("target")
    rows = [["model", _model_name(doc)], ["target", target + (f", exported as {verify['fmt']}" if verify.get("fmt") else "")]]
    for b in alloc.get("budgets", []):
        metric, title = b["metric"], _METRICS.get(b["metric"], (None, b["metric"]))[1]
        met = b["used"] <= b["limit"] * (1 + 1e-9)
        share = f" ({100.0 * b['used'] / b['limit']:.1f}%)" if b["limit"] else ""
        rows.append([f"budget {b['text']} ({title})", f"{fmt_metric(metric, b['used'])} used of "
                     f"{fmt_metric(metric, b['limit'])}{share}: {'met' if met else 'EXCEEDED'}"])
    pins = pin_line(alloc)
    if pins:
        rows.append(["pinned", pins])
    cost = alloc.get("cost", {})
    if cost.get("size_bytes") is not None and cost.get("compression"):
        size = cost["size_bytes"]
        line = (f"{fmt_metric('size', size)}, {cost['compression']:.3g}x smaller than float "
                f"({fmt_metric('size', size * cost['compression'])})")
        if cost.get("avg_weight_bits") is not None:
            line += f"; {cost['avg_weight_bits']:.3g} bits per weight on average"
        rows.append(["size", line])
    if cost.get("luts") is not None:
        rows.append(["FPGA (FINN estimators)", f"{cost['luts']:,.0f} LUTs, {cost.get('brams', 0):,.0f} BRAM_18K, "
                     f"{cost.get('cycles', 0):,.0f} cycles per frame at the folding for "
                     f"{cost.get('fold_cycles_per_frame', 0):,.0f}; the layers' hardware only, not the rest of the graph"])
    ptq = doc["model"].get("ptq")
    if ptq:
        skipped = ptq.get("rounded_to_nearest") or []
        rows.append(["post-training quantizer", ptq["algorithm"] + (" + bias correction" if ptq["bias_correction"] else "")
                     + f", {ptq['scale_rule']} thresholds"
                     + (f"; {len(skipped)} layers rounded to nearest, too few calibration samples for GPTQ "
                        f"({', '.join(skipped)})" if skipped else "")])
    acc = [f"{label} {fmt_acc(doc['accuracies'][k])}" for k, label in ACCURACY_LABELS.items()
           if doc["accuracies"].get(k) is not None]
    if acc:
        rows.append(["top-1", ", ".join(acc)])
    if verify:
        verdict = "passed" if verify.get("ok") else "FAILED"
        detail = []
        if isinstance(verify.get("agreement"), float):
            judged_on = verify.get("top1_judged_on", verify.get("n_inputs"))
            on = f" on {judged_on:,} sample{'s' if judged_on != 1 else ''}" if judged_on else ""
            if verify.get("ties"):
                on += f" ({verify['ties']} near-tie flips set aside)"
            detail.append(f"top-1 agreement {fmt_acc(verify['agreement'])}{on}")
        elif "agreement" in verify and verify["agreement"] is None:
            detail.append("top-1 not judged (every input a near-tie; the logit check decides)")
        if isinstance(verify.get("bits_in_graph"), dict):
            wanted, wrong = _bits_not_carried(verify["bits_in_graph"], alloc)
            detail.append(f"{len(wanted) - len(wrong)}/{len(wanted)} layers carry their bits")
        if verify.get("mismatches"):
            detail.append(f"{len(verify['mismatches'])} mismatches (see Verification)")
        rows.append(["verification", verdict + (": " + ", ".join(detail) if detail else "")])
        if verify.get("ort_float") is not None:
            rows.append(["ONNX Runtime", ort_fusion.summary(verify["ort_float"], verify.get("ort_integer_ops") or {})])
        for consumer in verify.get("consumers") or []:
            rows.append(["consumer", consumer_line(consumer)])
    else:
        rows.append(["verification", "not run"])
    return rows


def consumer_line(consumer: dict) -> str:
    """One consumer flow's check (verify/consumer.py), as a sentence."""
    return ConsumerResult(**{k: v for k, v in consumer.items() if k in ConsumerResult.__dataclass_fields__}).line()


def _environment() -> dict:
    """What a rerun must match to reproduce this one bit for bit: matrix products sum in an
    order that depends on the number of threads, and at the lowest widths GPTQ's rounding turns
    that into different weights (README, "Criterion against criterion on ResNet-56")."""
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def render_markdown(doc: dict) -> str:
    alloc = doc["allocation"]
    lines = ["# infoq-deploy run report", ""]
    lines += [f"- **{k}**: {v}" for k, v in summary_rows(doc)]
    lines.append("")

    lines += ["## What ran", ""]
    lines += [f"- **{k}**: {_fmt(v)}" for k, v in _given(doc["inputs"]).items()] or ["- (no inputs recorded)"]
    lines += [f"- **tool version**: {doc['tool_version']}"]
    if env := doc.get("environment"):
        lines.append(f"- **environment**: Python {env['python']}, torch {env['torch']} on {env['torch_threads']} "
                     "thread(s); on the CPU a rerun with the same inputs, seed and thread count gives the same "
                     "result bit for bit")
    lines.append("")

    lines += ["## Model", ""]
    model = {k: v for k, v in _given(doc["model"]).items() if k not in ("layers", "reference_cost")}
    lines += [f"- **{k}**: {_fmt(v)}" for k, v in model.items()]
    lines += [f"- **quantizable layers**: {len(doc['layers'])}"]
    sens = doc.get("sensitivity_meta")
    if sens:
        lines += [f"- **sensitivity**: method {_fmt(sens.get('method'))}"
                  + "".join(f", {k} {_fmt(sens[k])}" for k in ("seed", "calib_size", "data_source", "seconds")
                            if k in sens)]
    lines.append("")

    lines += ["## Target, budgets and costs", "",
              f"- **target**: {alloc.get('target')}",
              f"- **alpha** (activation weight in the objective): {_fmt(alloc.get('alpha'))}",
              f"- **objective** (sum S_w + alpha * S_a): {_fmt(alloc.get('objective'))}",
              f"- **solver**: {_fmt((alloc.get('solver') or {}).get('name'))}, "
              f"status {_fmt((alloc.get('solver') or {}).get('status'))}", ""]
    rows = []
    for panel in doc["cost_panels"]:
        for bar in panel["bars"]:
            frac = "—" if bar["fraction"] is None else f"{100.0 * bar['fraction']:.1f}%"
            ok = "" if bar["kind"] != "budget" or bar["fraction"] is None else ("met" if bar["fraction"] <= 1 + 1e-9 else "EXCEEDED")
            rows.append([panel["title"], bar["label"], fmt_metric(panel["metric"], bar["used"]),
                         fmt_metric(panel["metric"], bar["limit"]), frac, ok])
    lines += _table(["metric", "against", "cost", "budget / reference", "fraction", "status"], rows)
    lines += ["", "All costs of the allocation:", ""]
    lines += _table(["cost", "value"], [[k, v] for k, v in alloc.get("cost", {}).items()])
    lines.append("")

    lines += ["## Per-layer allocation", ""]
    lines += _table(
        ["#", "layer", "kind", "params", "MACs", "w_bits", "a_bits", "weight score", "activation score"],
        [[r["index"], r["name"], r["kind"], r["params"], r["macs"],
          "float" if r["w_bits"] >= FLOAT_BITS else r["w_bits"], "float" if r["a_bits"] >= FLOAT_BITS else r["a_bits"],
          None if r["w_score"] is None else f"{r['w_score']:.4g}",
          None if r["a_score"] is None else f"{r['a_score']:.4g}"] for r in doc["layers"]],
    )
    lines += ["", "Scores are the sensitivity table's costs at the chosen bits (lower is better).", ""]

    lines += ["## Accuracy (top-1)", ""]
    acc = doc["accuracies"]
    if any(v is not None for v in acc.values()):
        base = acc.get("float")
        rows = []
        for k, label in ACCURACY_LABELS.items():
            v = acc.get(k)
            delta = None if v is None or base is None or k == "float" else f"{100.0 * (v - base):+.2f} pt"
            rows.append([label, fmt_acc(v) if v is not None else "not measured", delta])
        lines += _table(["model", "top-1", "vs float"], rows)
    else:
        lines.append("No accuracy was measured.")
    lines.append("")

    lines += ["## Verification", ""]
    verify = doc["verify"]
    if verify:
        lines += _verify_lines(verify, alloc)
    else:
        lines.append("Not run.")
    lines.append("")

    lines += ["## Fine-tuning", ""]
    ft = doc["finetune"]
    if ft:
        lines += [f"- **{k}**: {_fmt(ft[k])}" for k in ("epochs_run", "best_epoch", "resumed_from", "checkpoint", "note")
                  if k in ft and ft[k] not in ("", None)]
        for k in ("start_accuracy", "best_accuracy"):
            if ft.get(k) is not None:
                lines.append(f"- **{k}** (eval set): {fmt_acc(ft[k])}")
        if ft.get("history"):
            lines += ["", *_table(["epoch", "lr", "loss", "train acc", "eval acc", "seconds"],
                                  [[h.get("epoch"), h.get("lr"), h.get("loss"), fmt_acc(h.get("train_acc")),
                                    fmt_acc(h.get("eval_acc")), h.get("seconds")] for h in ft["history"]])]
    else:
        lines.append("Not run.")
    lines.append("")

    lines += ["## Stage timings", ""]
    timings = doc["timings"]
    lines += _table(["stage", "seconds"], [[k, f"{v:.2f}"] for k, v in timings.items()]
                    + [["total", f"{sum(timings.values()):.2f}"]])
    lines.append("")

    lines += ["## Notes", ""]
    lines += [f"- {n}" for n in doc["notes"]] or ["- none"]
    lines.append("")

    lines += ["## Plots", ""]
    for name in doc["plots"]:
        lines += [f"![{name[:-4]}]({name})", ""]
    for name, why in doc["plots_skipped"].items():
        lines.append(f"- {name} not drawn: {why}")
    return "\n".join(lines).rstrip() + "\n"


def _bits_not_carried(in_graph: dict, alloc: dict) -> tuple[dict, list[str]]:
    """The allocated (w_bits, a_bits) per layer, and a line for each layer the graph carries otherwise."""
    wanted = {l["name"]: [l["w_bits"], l["a_bits"]] for l in alloc["layers"]}
    wrong = [f"{n}: graph {_fmt(in_graph.get(n))}, allocated {_fmt(b)}" for n, b in wanted.items()
             if list(in_graph.get(n) or []) != b]
    return wanted, wrong


def _verify_lines(verify: dict, alloc: dict) -> list[str]:
    """verify.VerifyResult.to_json(), or any flat dict; graph bits are checked against the allocation."""
    lines = []
    for k, v in verify.items():
        if k == "consumers" and isinstance(v, list):
            lines += [f"- **consumer**: {consumer_line(c)}" for c in v if isinstance(c, dict)]
        elif k == "bits_in_graph" and isinstance(v, dict):
            wanted, wrong = _bits_not_carried(v, alloc)
            lines.append(f"- **bits check**: {len(wanted) - len(wrong)}/{len(wanted)} layers carry the allocated "
                         "(w_bits, a_bits) in the exported graph")
            lines += [f"  - {w}" for w in wrong]
        elif k == "agreement" and isinstance(v, float):
            lines.append(f"- **agreement** (top-1, exported vs Brevitas, decisive inputs): {fmt_acc(v)}")
        elif k == "agreement" and v is None:
            lines.append("- **agreement**: not judged: on every input the top two logits are within the logit "
                         "tolerance of each other, so the logit check decides")
        elif k == "agreement_all" and isinstance(v, (int, float)):
            lines.append(f"- **agreement on all inputs** (near-ties included): {fmt_acc(float(v))}")
        elif isinstance(v, dict):
            lines.append(f"- **{k}**: " + ", ".join(f"{kk} {_fmt(vv)}" for kk, vv in v.items()))
        elif isinstance(v, list):
            lines += [f"- **{k}**: {'none' if not v else ''}"] + [f"  - {_fmt(item)}" for item in v]
        else:
            lines.append(f"- **{k}**: {_fmt(v)}")
    return lines


# ---------------------------------------------------------------- entry point

def write_report(run_dir: Path, *, inputs: dict, model_info: dict, allocation: dict,
                 sensitivity: SensitivityTable | None, accuracies: dict, verify: dict | None,
                 timings: dict[str, float], finetune: dict | None, notes: list[str]) -> None:
    """Write the plots, report.md and, last, report.json into ``run_dir``."""
    _check_accuracies(accuracies)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").unlink(missing_ok=True)  # no stale "finished" marker while we write

    layers = _layers(model_info, sensitivity)
    rows = layer_rows(allocation, layers, sensitivity)
    panels = cost_panels(allocation, layers, model_info.get("reference_cost"))
    names = [r["name"] for r in rows]
    chosen = [(r["w_bits"], r["a_bits"]) for r in rows]

    plots, skipped = [], {}
    plot_bits_per_layer(run_dir / "bits_per_layer.png", names, [w for w, _ in chosen], [a for _, a in chosen])
    plots.append("bits_per_layer.png")
    if sensitivity is not None:
        plot_sensitivity_heatmap(run_dir / "sensitivity_heatmap.png", names, sensitivity.weights,
                                 sensitivity.activations, chosen)
        plots.append("sensitivity_heatmap.png")
    else:
        skipped["sensitivity_heatmap.png"] = "no sensitivity table was given"
    if panels:
        plot_cost_vs_budget(run_dir / "cost_vs_budget.png", panels)
        plots.append("cost_vs_budget.png")
    else:
        skipped["cost_vs_budget.png"] = "the allocation has no costs"
    if any(v is not None for v in accuracies.values()):
        plot_accuracy(run_dir / "accuracy.png", accuracies)
        plots.append("accuracy.png")
    else:
        skipped["accuracy.png"] = "no accuracy was measured"
    for name in skipped:  # a plot left from an earlier run would contradict this report
        (run_dir / name).unlink(missing_ok=True)

    doc = _jsonable({
        "format": FORMAT,
        "tool_version": __version__,
        "environment": _environment(),
        "inputs": inputs,
        "model": model_info,
        "allocation": allocation,
        "layers": rows,
        "cost_panels": panels,
        "sensitivity_meta": None if sensitivity is None else sensitivity.meta,
        "sensitivity": None if sensitivity is None else sensitivity.to_json(),
        "accuracies": {k: accuracies.get(k) for k in ACCURACY_LABELS},
        "verify": verify,
        "timings": {k: float(v) for k, v in timings.items()},
        "finetune": finetune,
        "notes": list(notes),
        "plots": plots,
        "plots_skipped": skipped,
    })
    write_text(run_dir / "report.md", render_markdown(doc))
    write_json(run_dir / "report.json", doc)
