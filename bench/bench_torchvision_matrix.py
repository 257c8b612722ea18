"""The coverage matrix (issue #14): torchvision classification architectures x every shipped
target, each cell one `infoq-deploy` command as a user types it, recorded with its outcome:
the run (budget used, bits carried, verification by the target's consumer, stage times) or
the one-sentence refusal; a traceback or a timeout is a failure of ours.

Weights: no registry package here ships torchvision's ImageNet weights, so each model is
torchvision's own random initialisation (seed 0) with its BatchNorm statistics re-estimated
on 32 calibration images (a forward pass in train mode, no gradient): without that, a random
network's activations shrink layer after layer (ShuffleNet's classifier input nears zero)
and the run measures that, not the tool. A Linear layer torchvision initialises to zero (ViT's
classifier) is drawn from N(0, 0.01^2) instead, else every logit is its bias. Accuracies of such models mean nothing and are not
reported; what a cell shows is whether each stage takes the architecture and whether the file
runs in the consumer as the quantized model does.

Per cell (`--budget` per target: 5bit on fpga-int and mcu-int, 4x on edge-cpu-ort, whose
integer layers are all 7-bit): `--method mse` (the cheap proxy; the profile is not the object
here), 16 calibration images from ../shared/data/imagenet/sample1000, 16 evaluation images
from val1300, the target's default consumer (fpga-int: hls4ml's C simulation, which refuses
most ImageNet graphs before profiling, naming the layer and operator; mcu-int and edge-cpu-ort:
ONNX Runtime), and a fourth column, fpga-int with `--backend qonnx`: the same file checked by
qonnx's semantics alone (run whole in ONNX Runtime, qonnx's executor on a sample), which says
whether the file is right where hls4ml cannot take it. A budget refused because the pinned 8-bit first/last layers alone exceed it is
run again with `--no-pin`, as that refusal says, and both are recorded.

InfoQ column: `infoq-deploy profile --method infoq` per architecture on edge-cpu-ort (its
choices are w7/a8 or float, the cheapest sweep) with 40 labelled CIFAR-10 test images (4 per
class; InfoQ's label term needs k+1 = 4 images in at least two classes, which ImageNet's
one-image-per-class sample1000 never has), resized by the model's own preprocessing.

Reproduce: .venv/bin/python bench/bench_torchvision_matrix.py   (writes bench/results/torchvision_matrix.json;
--archs / --columns run a subset and merge it into the file)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from machine import machine_info  # bench/machine.py (the script's folder is on sys.path)

from infoq_deploy import __version__
from infoq_deploy.core.atomic import write_json
from infoq_deploy.data.load import load_data
from infoq_deploy.importing.sources import IMAGENET

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "torchvision_matrix.json"
INFOQ_OUT = HERE / "results" / "torchvision_matrix_infoq.json"  # the InfoQ column's runs (committed separately)
EXE = str(Path(sys.executable).with_name("infoq-deploy"))
ARCHS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf",
         "shufflenet_v2_x0_5", "squeezenet1_1", "densenet121", "convnext_tiny", "vit_b_16"]
BUDGETS = {"fpga-int": "5bit", "mcu-int": "5bit", "edge-cpu-ort": "4x"}
# column -> (target, extra arguments): each target with its default consumer, and fpga-int's file
# checked by qonnx's executor alone where hls4ml refuses the graph (is the file right, whoever takes it)
COLUMNS = {"fpga-int": ("fpga-int", []), "fpga-int+qonnx": ("fpga-int", ["--backend", "qonnx"]),
           "mcu-int": ("mcu-int", []), "edge-cpu-ort": ("edge-cpu-ort", [])}
TIMEOUT = 1800
VERIFY_KEYS = ("ok", "runner", "agreement", "agreement_all", "top1_judged_on", "ties", "n_inputs", "mean_abs_diff",
               "max_abs_diff", "tolerance", "rounding_noise", "rounding_max", "reference_check", "mismatches",
               "consumers", "ort_float")


def weights(arch: str, calib: Path, folder: Path) -> Path:
    """torchvision's random initialisation (seed 0), BatchNorm statistics re-estimated on 32 images."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None)
    for m in model.modules():  # ViT's classifier starts at zero: every logit would be its bias
        if isinstance(m, torch.nn.Linear) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.01)
    x = load_data(calib, IMAGENET, limit=32, seed=0).x
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches seen
    model.train()
    with torch.no_grad():
        for start in range(0, len(x), 8):
            model(x[start:start + 8])
    path = folder / f"{arch}.pt"
    torch.save(model.state_dict(), path)
    return path


def run(argv: list[str], cwd: Path, env: dict) -> tuple[int, float, str]:
    start = time.perf_counter()
    try:
        done = subprocess.run([EXE, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        code, err = done.returncode, done.stderr
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        code = "timeout"
    lines = [l for l in err.replace("\r", "\n").splitlines() if l.strip()]
    traceback = any(l.startswith("Traceback") for l in lines)
    last = lines[-1] if lines else ""
    return code, round(time.perf_counter() - start, 1), ("traceback: " + last) if traceback else last


def cell(arch: str, column: str, wfile: Path, data: Path, tmp: Path, env: dict, shown: str) -> dict:
    target, extra = COLUMNS[column]
    out = tmp / f"{arch}-{column}"
    argv = [f"torchvision:{arch}", "--weights", str(wfile), "--target", target, "--budget", BUDGETS[target], *extra,
            "--method", "mse", "--data", str(data / "imagenet" / "sample1000"), "--calib-size", "16",
            "--eval-data", str(data / "imagenet" / "val1300"), "--eval-size", "16", "-o", out.name, "--json"]
    code, wall, last = run(argv, tmp, env)
    result = {"command": _shown(argv, data, wfile, shown), "exit": code, "wall_seconds": wall}
    if code == 2 and "--no-pin" in last:
        result["refused"] = last
        argv = [a if a != out.name else f"{out.name}-no-pin" for a in argv] + ["--no-pin"]
        out = out.with_name(f"{out.name}-no-pin")
        code, wall, last = run(argv, tmp, env)
        result["rerun"] = {"command": _shown(argv, data, wfile, shown), "exit": code, "wall_seconds": wall}
        target_doc = result["rerun"]
    else:
        target_doc = result
    report = out / "report.json"
    if code == 0 and report.is_file():
        doc = json.loads(report.read_text())
        alloc, verify = doc["allocation"], doc["verify"] or {}
        cost = alloc["cost"]
        wanted = {l["name"]: [l["w_bits"], l["a_bits"]] for l in alloc["layers"]}
        target_doc.update(
            outcome="verified" if verify.get("ok") else "verification failed",
            budget={k: alloc["budgets"][0][k] for k in ("text", "metric", "limit", "used")},
            avg_weight_bits=cost["avg_weight_bits"], compression=cost["compression"], layers=len(wanted),
            layers_carrying_their_bits=sum(verify.get("bits_in_graph", {}).get(n) == b for n, b in wanted.items()),
            verify={k: verify.get(k) for k in VERIFY_KEYS if k in verify}, timings=doc["timings"])
    else:
        target_doc.update(outcome="timeout" if code == "timeout" else
                          "traceback" if last.startswith("traceback") else
                          "verification failed" if "failed verification" in last else "refused", message=last)
    return result


def infoq_cell(arch: str, wfile: Path, data: Path, tmp: Path, env: dict, shown: str) -> dict:
    argv = ["profile", f"torchvision:{arch}", "--weights", str(wfile), "--target", "edge-cpu-ort", "--method", "infoq",
            "--data", str(data / "cifar10" / "test"), "--calib-size", "40", "-o", f"{arch}-infoq.json"]
    code, wall, last = run(argv, tmp, env)
    result = {"command": _shown(argv, data, wfile, shown), "exit": code, "wall_seconds": wall}
    table = tmp / f"{arch}-infoq.json"
    if code == 0 and table.is_file():
        doc = json.loads(table.read_text())
        meta = doc.get("meta", {})
        result.update(outcome="profiled", layers=len(doc.get("layers", doc.get("weights", {}))),
                      observers=meta.get("observers"), labels=meta.get("labels"))
    else:
        result.update(outcome="timeout" if code == "timeout" else
                      "traceback" if last.startswith("traceback") else "refused", message=last)
    return result


def _shown(argv: list[str], data: Path, wfile: Path, shown: str) -> str:
    text = "infoq-deploy " + " ".join(argv)
    return text.replace(str(data), "../shared/data").replace(str(wfile), shown)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--columns", default=",".join(COLUMNS), help=f"of {', '.join(COLUMNS)}")
    ap.add_argument("--no-infoq", action="store_true", help="skip the InfoQ profile column")
    ap.add_argument("--out", default=str(OUT), help=f"result file, merged into when it exists (default {OUT})")
    ap.add_argument("--table", action="store_true", help="print the README's markdown table from the result files and stop")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(Path(args.out).read_text()), json.loads(INFOQ_OUT.read_text())["infoq"]), end="")
        return 0
    data = Path(args.data_root)
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.is_file() else {"cells": {}, "infoq": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = dict(os.environ, INFOQ_DEPLOY_CACHE=str(tmp / "cache"))
        archs = args.archs.split(",")
        wfiles = {arch: weights(arch, data / "imagenet" / "sample1000", tmp) for arch in archs}
        for arch in archs:  # every pipeline cell first, the slower InfoQ column after
            for column in filter(None, args.columns.split(",")):
                doc["cells"].setdefault(arch, {})[column] = c = cell(arch, column, wfiles[arch], data, tmp, env,
                                                                     f"{arch}-bn32.pt")
                print(f"{arch} {column}: {c.get('rerun', c)['outcome']} ({c['wall_seconds']} s)", flush=True)
                _write(doc, out)
        for arch in [] if args.no_infoq else archs:
            doc["infoq"][arch] = c = infoq_cell(arch, wfiles[arch], data, tmp, env, f"{arch}-bn32.pt")
            print(f"{arch} infoq: {c['outcome']} ({c['wall_seconds']} s)", flush=True)
            _write(doc, out)
    return 0


def _cell_text(c: dict) -> str:
    r = c.get("rerun", c)
    pin = " (`--no-pin`)" if "rerun" in c else ""
    if r.get("outcome") == "verified":
        v = r["verify"]
        agreement = "not judged" if v.get("agreement") is None else f"{100 * v['agreement']:.0f}% of {v.get('top1_judged_on')}"
        ref = v.get("reference_check")
        extra = "" if not ref else f"; qonnx on {ref['n_inputs']}: " + (
            "identical" if ref["identical"] else f"max diff {ref['max_abs_diff']:.2g}")
        return (f"verified{pin}: {r['avg_weight_bits']:.2f} b/w, {r['layers_carrying_their_bits']}/{r['layers']} layers, "
                f"top-1 {agreement}{extra}; {r['wall_seconds']:.0f} s")
    message = r.get("message", "")
    if r.get("outcome") == "timeout":
        return f"timeout: stopped at {r['wall_seconds']:.0f} s (the bench's limit per cell)"
    hls = re.search(r"cannot take (.*?) \(node [^:]*: (.*?)\)(?: \(and (\d+) more)?", message)
    if hls:
        more = f", +{hls.group(3)} more" if hls.group(3) else ""
        return f"refused by hls4ml before profiling: {hls.group(1)} ({hls.group(2).split(';')[0]}{more})"
    return f"{r.get('outcome')}{pin}: {message.replace('infoq-deploy: error: ', '')[:160]}"


def table(doc: dict, infoq: dict) -> str:
    """The README's matrix: one row per architecture, a cell per column, then the InfoQ column."""
    lines = ["| architecture | " + " | ".join(COLUMNS) + " | InfoQ profile |", "|---" * (len(COLUMNS) + 2) + "|"]
    for arch in ARCHS:
        cells = doc["cells"].get(arch, {})
        c = infoq.get(arch)
        profile = "not run" if c is None else (
            f"profiled, {c['wall_seconds']:.0f} s" if c["outcome"] == "profiled"
            else f"{c['outcome']}: {c.get('message', '').replace('infoq-deploy: error: ', '')[:140]}")
        lines.append(f"| {arch} | " + " | ".join(_cell_text(cells[k]) if k in cells else "not run" for k in COLUMNS)
                     + f" | {profile} |")
    return "\n".join(lines) + "\n"


def _write(doc: dict, out: Path) -> None:
    doc.update({
        "benchmark": "torchvision classification architectures x shipped targets through the whole pipeline "
                     "(random weights, BatchNorm re-estimated), verified by each target's consumer",
        "command": "python bench/bench_torchvision_matrix.py" + "".join(
            f" {a}" for a in sys.argv[1:]),
        "budgets": BUDGETS,
        "columns": {k: " ".join(["--target", t, *e]) for k, (t, e) in COLUMNS.items()},
        "weights": f"torchvision random init (seed 0; zero-initialised Linear weights drawn from N(0, 0.01^2)), "
                   f"BatchNorm statistics re-estimated on 32 sample1000 images, saved as ARCH-bn32.pt; "
                   f"torchvision {torchvision.__version__}",
        "tool_version": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
    })
    write_json(out, doc)


if __name__ == "__main__":
    raise SystemExit(main())
