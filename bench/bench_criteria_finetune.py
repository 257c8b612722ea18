"""The criteria's allocations at the tightest sizes, after the same short fine-tuning.

Reads the allocations `bench_criteria.py` committed (each method's weight bits per layer at
each budget), rebuilds each through `stages.quantize` with the same default post-training
quantizer (GPTQ + bias correction) on the same calibration draw, checks that the post-training
top-1 reproduces the committed one, then fine-tunes every allocation the same way (LSQ,
`stages.finetune_quantized`, the pipeline's code: same training images, epochs, batch, learning
rates and seed), the best epoch chosen on a validation split of the training archive disjoint
from the fine-tuning images, and measures top-1 on the same test images.

Reproduce: .venv/bin/python bench/bench_criteria_finetune.py   (CIFAR-10 ResNet-20, budgets 2.5 and 3)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import machine_info  # bench/machine.py

from infoq_deploy import __version__, stages
from infoq_deploy.allocate.ilp import recost
from infoq_deploy.core.atomic import write_json
from infoq_deploy.core.evaluate import accuracy
from infoq_deploy.data.load import load_data, split
from infoq_deploy.quantize.file import ModelSource
from infoq_deploy.quantize.finetune import FinetuneConfig
from infoq_deploy.quantize.ptq import PtqConfig

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="criteria_cifar10-resnet20.json,criteria_cifar10-resnet20_clado-psd.json",
                    help="bench/results files of bench_criteria.py; a later file's rows replace an earlier one's")
    ap.add_argument("--methods", default="infoq,hawq,clado,mse,uniform")
    ap.add_argument("--budgets", default="2.5,3", help="average weight bits (uniform: its rows at or below them)")
    ap.add_argument("--train-size", type=int, default=5000)
    ap.add_argument("--val-size", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--ptq-only", action="store_true",
                    help="rebuild and evaluate the post-training models only (checks that they reproduce)")
    ap.add_argument("--out", default=str(HERE / "results" / "criteria_finetune_cifar10-resnet20.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()

    docs = [json.loads((HERE / "results" / name).read_text()) for name in args.results.split(",")]
    first = docs[0]
    rows: dict[tuple[str, float], dict] = {}
    for doc in docs:
        for r in doc["results"]:
            rows[(r["method"], r["budget"])] = r
    budgets = [float(b) for b in args.budgets.split(",")]
    methods = args.methods.split(",")
    picked = [r for (m, b), r in sorted(rows.items(), key=lambda kv: (methods.index(kv[0][0]) if kv[0][0] in methods
                                                                         else 99, kv[0][1]))
              if m in methods and (b in budgets or (m == "uniform" and b <= max(budgets) and b == int(b)))]

    model = stages.load_model(first["model"], data_root=str(DATA))
    cmd = first["command"].split()
    opt = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}
    plan = stages.plan_datasets(model.preprocess, data=opt["--data"], eval_data=opt["--eval-data"],
                                calib_size=int(opt["--calib-size"]), seed=int(opt["--seed"]))
    no_eval = dataclasses.replace(plan, evaluation=None)
    test = plan.evaluation
    pool = load_data(opt["--data"], model.preprocess, limit=args.train_size + args.val_size, seed=args.seed + 1)
    train, val = split(pool, args.train_size, seed=args.seed)
    widths = [int(w) for w in first["weight_widths"]]  # what every method chose from (fpga-int's own by default)
    t = stages.load_target("fpga-int")
    target = dataclasses.replace(t, weights=dataclasses.replace(t.weights, bits=tuple(widths)),
                                 activations=dataclasses.replace(t.activations, bits=(8,)))
    layers = stages.deployable(model).layers
    template = stages.allocation_document(stages.profile(model, target, None, "mse"), target, ["8bit"])
    cfg = FinetuneConfig(epochs=args.epochs, seed=args.seed)

    out_rows = []
    for r in picked:
        doc = json.loads(json.dumps(template))
        for entry, w in zip(doc["layers"], r["w_bits"], strict=True):
            entry["w_bits"], entry["a_bits"] = w, 8
        doc = recost(doc, layers, target)
        t0 = time.perf_counter()
        qm = stages.quantize(model, target, doc, no_eval, ModelSource.of(first["model"]), ptq=PtqConfig(chosen=False))
        ptq_top1 = accuracy(qm.qmodel, test.x, test.y)
        t1 = time.perf_counter()
        row = {"method": r["method"], "budget": r["budget"], "avg_weight_bits": r["avg_weight_bits"],
               "w_bits": r["w_bits"], "ptq_top1_committed": r["top1"], "ptq_top1": ptq_top1,
               "quantize_seconds": round(t1 - t0, 1)}
        if not args.ptq_only:
            with tempfile.TemporaryDirectory() as ck:
                stages.finetune_quantized(qm, train, val, dataclasses.replace(cfg), ck, progress=False)
            row.update(finetuned_top1=accuracy(qm.qmodel, test.x, test.y), best_epoch=qm.finetune["best_epoch"],
                       val_history=[h["eval_acc"] for h in qm.finetune["history"]],
                       finetune_seconds=round(time.perf_counter() - t1, 1))
        out_rows.append(row)
        print(f"{r['method']} {r['budget']}: ptq {ptq_top1:.4f} (committed {r['top1']:.4f})"
              + ("" if args.ptq_only else f" -> fine-tuned {row['finetuned_top1']:.4f}"), flush=True)

    write_json(Path(args.out), {
        "benchmark": "the criteria's allocations after the same short LSQ fine-tuning, weights only (a8), fpga-int "
                     "quantizer, GPTQ + bias correction before fine-tuning",
        "command": f"{Path(sys.executable).name} bench/bench_criteria_finetune.py --results {args.results} "
                   f"--methods {args.methods} --budgets {args.budgets} --train-size {args.train_size} "
                   f"--val-size {args.val_size} --epochs {args.epochs} --seed {args.seed}"
                   + (f" --threads {args.threads}" if args.threads else "") + (" --ptq-only" if args.ptq_only else ""),
        "torch_threads": torch.get_num_threads(),
        "tool_version": __version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
        "model": first["model"], "weight_widths": widths,
        "calibration": {"source": plan.calibration.source, "n": len(plan.calibration), "sha256": plan.calibration.sha256},
        "fine_tuning": {"source": pool.source, "train": len(train), "validation": len(val), "epochs": args.epochs,
                        "settings": dataclasses.asdict(cfg),
                        "note": "best epoch (0 = the post-training model) chosen on the validation images"},
        "evaluation": {"source": test.source, "n": len(test)},
        "results": out_rows, "wall_seconds": round(time.perf_counter() - started, 1),
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
