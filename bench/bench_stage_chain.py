"""Issue-4 evidence: the pipeline stage by stage, each subcommand on the previous one's file.

Runs, as a user types them, on the bundled Fashion-MNIST CNN and its committed data
(1,000 training images for calibration and fine-tuning, 1,000 test images held out):

  infoq-deploy profile zoo:fashion-cnn --target fpga-int --data builtin:fashion-mnist -o s.json
  infoq-deploy allocate s.json --target fpga-int --budget 3bit -o a.json
  infoq-deploy quantize zoo:fashion-cnn a.json --ptq minmax --no-bias-correction -o q.pt
  infoq-deploy finetune q.pt --epochs 2 --lr 1e-3 -o f.pt
  infoq-deploy export f.pt -o model.onnx
  infoq-deploy verify model.onnx f.pt -o verify.json
  infoq-deploy report f.pt verify.json --sensitivity s.json -o report
  infoq-deploy verify model.onnx q.pt        (a wrong pairing: must fail with exit 1)

Records each command's exit code and wall time, the report's accuracies, the verification
of the right pairing and of the wrong one. Writes bench/results/stage_chain_fashion-cnn.json
(the README's stage-by-stage transcript quotes it).

Reproduce: .venv/bin/python bench/bench_stage_chain.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_info  # bench/machine.py (the script's folder is on sys.path)

from infoq_deploy import __version__
from infoq_deploy.core.atomic import write_json

HERE = Path(__file__).resolve().parent
EXE = str(Path(sys.executable).with_name("infoq-deploy"))
STEPS = [
    ("profile", ["profile", "zoo:fashion-cnn", "--target", "fpga-int", "--data", "builtin:fashion-mnist", "-o", "s.json"]),
    ("allocate", ["allocate", "s.json", "--target", "fpga-int", "--budget", "3bit", "-o", "a.json"]),
    ("quantize", ["quantize", "zoo:fashion-cnn", "a.json", "--ptq", "minmax", "--no-bias-correction", "-o", "q.pt"]),
    ("finetune", ["finetune", "q.pt", "--epochs", "2", "--lr", "1e-3", "-o", "f.pt"]),
    ("export", ["export", "f.pt", "-o", "model.onnx"]),
    ("verify", ["verify", "model.onnx", "f.pt", "-o", "verify.json"]),
    ("report", ["report", "f.pt", "verify.json", "--sensitivity", "s.json", "-o", "report"]),
    ("verify_wrong_pair", ["verify", "model.onnx", "q.pt", "-o", "verify_wrong.json"]),
    # the default quantizer on the same allocation, for the post-training figure fine-tuning is compared with
    ("quantize_default_ptq", ["quantize", "zoo:fashion-cnn", "a.json", "--json", "-o", "q_default.pt"]),
]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        # a private profiling cache, so the profile stage really runs
        env = dict(os.environ, INFOQ_DEPLOY_CACHE=str(Path(tmp) / "cache"))
        steps = {}
        for name, argv in STEPS:
            t0 = time.perf_counter()
            out = subprocess.run([EXE, *argv], cwd=tmp, env=env, capture_output=True, text=True)
            steps[name] = {"command": "infoq-deploy " + " ".join(argv), "exit": out.returncode,
                           "wall_seconds": round(time.perf_counter() - t0, 2)}
            if "--json" in argv and out.returncode == 0:
                steps[name]["output"] = json.loads(out.stdout)
            print(name, out.returncode, flush=True)
            expected = 1 if name == "verify_wrong_pair" else 0
            if out.returncode != expected:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
        report = json.loads((Path(tmp) / "report" / "report.json").read_text())
        right = json.loads((Path(tmp) / "verify.json").read_text())["result"]
        wrong = json.loads((Path(tmp) / "verify_wrong.json").read_text())["result"]
        alloc = json.loads((Path(tmp) / "a.json").read_text())
    keys = ("agreement", "agreement_all", "top1_judged_on", "ties", "accuracy", "reference_accuracy", "mean_abs_diff",
            "tolerance", "mismatches", "ok")
    result = {
        "benchmark": "infoq-deploy stage subcommands chained on the bundled Fashion-MNIST CNN, target fpga-int",
        "command": "python bench/bench_stage_chain.py",
        "tool_version": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "data": {"calibration_and_finetuning": "builtin:fashion-mnist (1,000 committed training images)",
                 "evaluation": "builtin:fashion-mnist:eval (1,000 committed test images)"},
        "steps": steps,
        "bits": [(d["name"], d["w_bits"], d["a_bits"]) for d in alloc["layers"]],
        "cost": alloc["cost"],
        "accuracies": report["accuracies"],
        "default_ptq": {k: steps["quantize_default_ptq"]["output"].get(k) for k in ("ptq", "accuracies")},
        "finetune_history": report["finetune"]["history"],
        "verify": {k: right[k] for k in keys},
        "verify_wrong_pair": {k: wrong[k] for k in keys},
    }
    write_json(HERE / "results" / "stage_chain_fashion-cnn.json", result)
    print(json.dumps(result["accuracies"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
