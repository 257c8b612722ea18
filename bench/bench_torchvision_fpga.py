"""torchvision models through the whole pipeline on fpga-int: the README's ResNet-18 example and the
random-weight EfficientNet-B0 whose near-tied logits used to fail verification (issue #14).

Each case is one `infoq-deploy` command, as a user types it: seeded random weights (no
registry package here ships torchvision's ImageNet weights, so accuracies mean nothing), the
`--method mse` proxy, 16 calibration images from ../shared/data/imagenet/sample1000 and 16
evaluation images from val1300. Recorded: exit code and wall time, budget use, size against
float, and the verification. Verification here is qonnx's executor against the Brevitas
model (``--backend qonnx``): hls4ml's io_stream flow cannot take ResNet-18's 3x3 stem pool at
stride 2, which the pipeline's preflight would otherwise refuse, and FINN at 224x224 takes
longer than this benchmark spends.

Reproduce: .venv/bin/python bench/bench_torchvision_fpga.py   (writes bench/results/torchvision_fpga-int.json)
"""

from __future__ import annotations

import argparse
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
CASES = [("resnet18", "4.5MB"), ("efficientnet_b0", "4bit")]
VERIFY_KEYS = ("ok", "agreement", "agreement_all", "top1_judged_on", "ties", "n_inputs", "mean_abs_diff",
               "max_abs_diff", "tolerance", "quant_error", "mismatches")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "data"))
    imagenet = Path(ap.parse_args().data_root) / "imagenet"
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, INFOQ_DEPLOY_CACHE=str(Path(tmp) / "cache"))
        for arch, budget in CASES:
            argv = [f"torchvision:{arch}", "--target", "fpga-int", "--budget", budget, "--method", "mse",
                    "--data", str(imagenet / "sample1000"), "--calib-size", "16",
                    "--eval-data", str(imagenet / "val1300"), "--eval-size", "16", "--backend", "qonnx",
                    "-o", arch, "--json"]
            start = time.perf_counter()
            done = subprocess.run([EXE, *argv], cwd=tmp, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - start
            case = {"command": "infoq-deploy " + " ".join(argv).replace(str(imagenet), "../shared/data/imagenet"),
                    "exit": done.returncode, "wall_seconds": round(wall, 1)}
            report = Path(tmp) / arch / "report.json"
            if report.is_file():
                doc = json.loads(report.read_text())
                alloc, verify = doc["allocation"], doc["verify"]
                cost = alloc["cost"]
                wanted = {l["name"]: [l["w_bits"], l["a_bits"]] for l in alloc["layers"]}
                case.update(
                    budget={k: alloc["budgets"][0][k] for k in ("text", "metric", "limit", "used")},
                    size_bytes=cost["size_bytes"], float_size_bytes=cost["size_bytes"] * cost["compression"],
                    compression=cost["compression"], avg_weight_bits=cost["avg_weight_bits"],
                    layers=len(wanted),
                    layers_carrying_their_bits=sum(verify["bits_in_graph"].get(n) == b for n, b in wanted.items()),
                    verify={k: verify.get(k) for k in VERIFY_KEYS}, timings=doc["timings"])
            else:
                case["stderr_tail"] = done.stderr.strip().splitlines()[-1:] if done.stderr else []
            cases.append(case)
            print(f"{arch}: exit {done.returncode}, {wall:.0f} s")
    write_json(HERE / "results" / "torchvision_fpga-int.json", {
        "benchmark": "torchvision architectures (random weights) through the pipeline on fpga-int, verified with "
                     "qonnx's executor",
        "command": "python bench/bench_torchvision_fpga.py",
        "tool_version": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "cases": cases,
    })
    return 0 if all(c["exit"] == 0 for c in cases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
