"""Issue-4 evidence: the whole pipeline on CIFAR-10 ResNet-20 for target fpga-int.

Two runs of `infoq_deploy.pipeline.run` (the code behind `infoq-deploy MODEL ...`):
  A. weights at 3 bits on average, given as a size budget in MB (activations stay at 8:
     a size budget gives them no reason to shrink);
  B. mixed weight and activation bits under a BitOps budget equal to uniform w4/a4.
Calibration: 1,000 images from the CIFAR-10 training archive; fine-tuning: --train-size
images from the same archive for --epochs epochs; accuracy of float / post-training /
fine-tuned models on the 10,000 test images; the exported QONNX file is run (qonnx
execution) on --verify-size test images, which gives the exported accuracy.
Writes bench/results/pipeline_<model>.json and keeps each run's report and plots in
bench/results/pipeline_<model>_{A,B}/.

Reproduce: .venv/bin/python bench/bench_pipeline_cifar.py --epochs 1 --train-size 5000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from machine import machine_info  # bench/machine.py (the script's folder is on sys.path)

from infoq_deploy import __version__
from infoq_deploy.allocate.costs import model_cost
from infoq_deploy.core.atomic import write_json
from infoq_deploy.core.targets import load_target
from infoq_deploy.importing.sources import load_model
from infoq_deploy.pipeline import RunConfig, run
from infoq_deploy.stages import deployable

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="zoo:cifar10-resnet20")
    ap.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-size", type=int, default=5000)
    ap.add_argument("--verify-size", type=int, default=2000)
    ap.add_argument("--cases", default="A,B")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()

    root = Path(args.data_root)
    slug = args.model.split(":")[-1]
    target = load_target("fpga-int")
    layers = deployable(load_model(args.model, data_root=root)).layers
    size_3bit = model_cost("size", layers, [(3, 8)] * len(layers), target)
    bitops_w4a4 = model_cost("bitops", layers, [(4, 4)] * len(layers), target)
    cases = {
        "A": {"budget": f"{size_3bit / 2**20:.6f}MB", "what": "size budget = every layer's weights at 3 bits (biases 32-bit), activations free"},
        "B": {"budget": f"{bitops_w4a4 / 1e9:.6f}GBOPs", "what": "BitOps budget = every layer at w4/a4"},
    }
    results = {}
    for name in args.cases.split(","):
        run_dir = Path(args.out) / f"pipeline_{slug}_{name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = RunConfig(
            model=args.model, target="fpga-int", budgets=[cases[name]["budget"]], run_dir=run_dir,
            data_root=str(root), data=str(root / "cifar10" / "train.tar.gz"), calib_size=1000,
            eval_data=str(root / "cifar10" / "test"), train_data=str(root / "cifar10" / "train.tar.gz"),
            train_size=args.train_size, epochs=args.epochs, verify_size=args.verify_size, progress=False,
        )
        t0 = time.perf_counter()
        summary = run(cfg)
        report = json.loads((run_dir / "report.json").read_text())
        results[name] = {
            **cases[name],
            "wall_seconds": time.perf_counter() - t0,
            "accuracies": summary["accuracies"],
            "timings_s": summary["timings"],
            "cost": summary["cost"],
            "verify": report.get("verify"),
            "finetune": report.get("finetune"),
            "bits": [(d["name"], d["w_bits"], d["a_bits"]) for d in json.loads((run_dir / "allocation.json").read_text())["layers"]],
        }
        for big in ("model.onnx", "checkpoints", "quantized.pt", "finetuned.pt"):  # keep reports and plots, not weights
            p = run_dir / big
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        print(name, json.dumps(results[name]["accuracies"]), flush=True)
    write_json(Path(args.out) / f"pipeline_{slug}.json", {
        "benchmark": "infoq-deploy pipeline on CIFAR-10 ResNet-20, target fpga-int",
        "command": f"python bench/bench_pipeline_cifar.py --model {args.model} --epochs {args.epochs} --train-size {args.train_size} --verify-size {args.verify_size}",
        "tool_version": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "settings": {"calibration": "1000 images from cifar10/train.tar.gz (seed 0, class-balanced)",
                     "fine_tuning": f"{args.train_size} images from cifar10/train.tar.gz, {args.epochs} epoch(s)",
                     "evaluation": "cifar10/test, 10,000 images", "verified_on": args.verify_size},
        "results": results,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
