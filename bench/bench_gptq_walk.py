"""GPTQ's cost: one walk of the graph (`quantize/gptq.py`) against Brevitas's documented loop
(the calibration set through the model once per layer), on the same calibrated model; and the
walk with our running Hessian for convolutions (one im2col, one scaling copy) against the walk
with Brevitas's (unfoldNd per group, stacked, scaled, copied).

All round with Brevitas's own GPTQ update; they differ in how each layer's input is produced
and how its Hessian is accumulated. The run checks that all give the same integer weights and
logits, and times each in the same process, one after the other (the walk with Brevitas's
Hessian, the walk with ours, Brevitas's loop; the calibration pass before them runs the same
kernels first), on a copy of the same calibrated model. Model: ImageNet EfficientNet-Lite0 (50 layers), mcu-int with every layer
at 4-bit weights per channel and 8-bit activations, calibration images from
`../shared/data/imagenet/sample1000` (seeded, class-stratified).

Reproduce: .venv/bin/python bench/bench_gptq_walk.py --calib-size 64 --threads 1
           (writes bench/results/gptq_walk_lite0.json)
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from brevitas.graph.gptq import GPTQ
from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from machine import machine_info  # noqa: E402

from infoq_deploy import __version__  # noqa: E402
from infoq_deploy.core.atomic import write_json  # noqa: E402
from infoq_deploy.core.targets import load_target  # noqa: E402
from infoq_deploy.data.load import load_data  # noqa: E402
from infoq_deploy.importing.deployable import deployable  # noqa: E402
from infoq_deploy.importing.sources import load_model  # noqa: E402
from infoq_deploy.quantize import gptq  # noqa: E402
from infoq_deploy.quantize.brevitas_model import build_quant_model, calibrate  # noqa: E402

DATA = HERE.parent.parent / "shared" / "data"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results" / "gptq_walk_lite0.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = deployable(load_model("zoo:efficientnet-lite0", data_root=DATA))
    target = load_target("mcu-int")
    calib = load_data(str(DATA / "imagenet" / "sample1000"), model.preprocess, limit=args.calib_size, seed=0)
    n = len(model.layers)
    bits = {l.name: (4, 8) for l in model.layers}
    qmodel = build_quant_model(model.graph, model.layers, bits, target.quant_spec())
    calibrate(qmodel, calib.x)
    skip = {model.layers[-1].name}  # the classifier: 1,280 columns, more than the images' Hessian rows
    walked, brevitas_hessian, looped = copy.deepcopy(qmodel), copy.deepcopy(qmodel), copy.deepcopy(qmodel)

    ours = gptq._GPTQ.compute_iterative_covariance
    gptq._GPTQ.compute_iterative_covariance = GPTQ.compute_iterative_covariance  # Brevitas's, as before
    try:
        t0 = time.perf_counter()
        gptq.apply(brevitas_hessian, calib.x, skip=skip)
        brevitas_hessian_s = time.perf_counter() - t0
    finally:
        gptq._GPTQ.compute_iterative_covariance = ours
    t0 = time.perf_counter()
    gptq.apply(walked, calib.x, skip=skip)
    walk_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    gptq.apply(looped, calib.x, skip=skip, walk=False)  # Brevitas's loop, as gptq.apply ran it before the walk
    loop_s = time.perf_counter() - t0

    def agreement(other: torch.nn.Module) -> tuple[str, float]:
        same = total = 0
        for name, a in walked.named_modules():
            if isinstance(a, QuantWeightBiasInputOutputLayer) and a.weight_quant.is_quant_enabled:
                ia, ib = a.quant_weight().int(), other.get_submodule(name).quant_weight().int()
                same, total = same + int((ia == ib).sum()), total + ia.numel()
        with torch.no_grad():
            return f"{same}/{total}", float((walked(calib.x[:32]) - other(calib.x[:32])).abs().max())

    same_loop, diff_loop = agreement(looped)
    same_hessian, diff_hessian = agreement(brevitas_hessian)
    result = {
        "benchmark": "GPTQ on EfficientNet-Lite0: one walk of the graph against Brevitas's loop (one calibration "
                     "pass per layer), same Brevitas GPTQ, same calibrated model",
        "command": " ".join(["python bench/bench_gptq_walk.py", *sys.argv[1:]]),
        "tool_version": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "torch_threads": args.threads,
        "model": "zoo:efficientnet-lite0",
        "target": "mcu-int, every layer 4-bit weights (per channel) and 8-bit activations",
        "calibration": {"source": str(DATA / "imagenet" / "sample1000"), "n": args.calib_size, "seed": 0},
        "layers_rounded_by_gptq": n - len(skip),
        "walk_seconds": round(walk_s, 1),
        "walk_with_brevitas_hessian_seconds": round(brevitas_hessian_s, 1),
        "brevitas_loop_seconds": round(loop_s, 1),
        "speedup_over_loop": round(loop_s / walk_s, 2),
        "speedup_over_brevitas_hessian": round(brevitas_hessian_s / walk_s, 2),
        "identical_integer_weights": {"loop": same_loop, "brevitas_hessian": same_hessian},
        "max_abs_logit_diff": {"loop": diff_loop, "brevitas_hessian": diff_hessian},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(Path(args.out), result)
    print({k: result[k] for k in ("walk_seconds", "walk_with_brevitas_hessian_seconds", "brevitas_loop_seconds",
                                  "identical_integer_weights", "max_abs_logit_diff")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
