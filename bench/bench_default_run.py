"""The README's transcripts of the default command, recorded: the whole pipeline on the bundled
model (`infoq-deploy --target fpga-int --budget 4bit`) and the unmeetable-budget error.

Records each command's exit code, its report summary (the first lines of report.md) and the
numbers behind it from report.json, and the error line of `allocate --budget 0.005MB`. The run
is deterministic, so a re-run reproduces the file apart from times.

Reproduce: .venv/bin/python bench/bench_default_run.py   (writes bench/results/default_run.json)
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


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, INFOQ_DEPLOY_CACHE=str(Path(tmp) / "cache"))
        run = subprocess.run([EXE, "--target", "fpga-int", "--budget", "4bit", "-o", "runs/demo"], cwd=tmp, env=env,
                             capture_output=True, text=True)
        md = (Path(tmp) / "runs" / "demo" / "report.md").read_text()
        doc = json.loads((Path(tmp) / "runs" / "demo" / "report.json").read_text())
        summary = [line for line in md.split("\n## ")[0].splitlines() if line.startswith("- **")]
        error = subprocess.run([EXE, "allocate", "runs/demo/sensitivity.json", "--target", "fpga-int", "--budget",
                                "0.005MB", "-o", "a.json"], cwd=tmp, env=env, capture_output=True, text=True)
    verify = doc["verify"]
    write_json(HERE / "results" / "default_run.json", {
        "benchmark": "the default command on the bundled Fashion-MNIST CNN (README transcript)",
        "command": "python bench/bench_default_run.py",
        "tool_version": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "run": {"command": "infoq-deploy --target fpga-int --budget 4bit -o runs/demo", "exit": run.returncode,
                "summary": summary, "cost": doc["allocation"]["cost"], "accuracies": doc["accuracies"],
                "verify": {k: verify.get(k) for k in ("ok", "agreement", "agreement_all", "top1_judged_on", "ties",
                                                      "n_inputs", "mean_abs_diff", "tolerance")}},
        "unmeetable_budget": {"command": "infoq-deploy allocate sensitivity.json --target fpga-int --budget 0.005MB",
                              "exit": error.returncode, "stderr": error.stderr.strip().splitlines()[-1]},
    })
    print("\n".join(summary))
    return 0 if run.returncode == 0 and error.returncode == 2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
