"""EfficientNet-Lite0's bias grid: how many layers' int32 biases the QCDQ export could not write
without `quantize/brevitas_model.fit_bias_grid`, how many with it, how far the raised weight
scales move the fitted channels' outputs (bound, as a fraction of the bias), and whether the
exported file then runs in ONNX Runtime as its Brevitas model computes (`verify_export`: top-1
agreement on the decisive inputs, logits within tolerance).

Cases: edge-cpu-ort with every layer integer (w7/a8) and with every other layer integer, and
mcu-int with every layer at 4-bit weights; 256 calibration images from `sample1000`, 300
`val1300` images for the check.

Reproduce: .venv/bin/python bench/bench_bias_grid.py   (writes bench/results/bias_grid_lite0.json)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from machine import machine_info  # noqa: E402

from infoq_deploy import __version__  # noqa: E402
from infoq_deploy.core.atomic import write_json  # noqa: E402
from infoq_deploy.core.targets import load_target  # noqa: E402
from infoq_deploy.data.load import load_data  # noqa: E402
from infoq_deploy.export.writer import export_model  # noqa: E402
from infoq_deploy.importing.deployable import deployable  # noqa: E402
from infoq_deploy.importing.sources import load_model  # noqa: E402
from infoq_deploy.quantize import brevitas_model as bm  # noqa: E402
from infoq_deploy.verify.check import verify_export  # noqa: E402

DATA = HERE.parent.parent / "shared" / "data"


def _moves(qmodel, before: dict) -> list[float]:
    """Per fitted channel: |change of its quantized weights| summed x largest input / |bias|."""
    out = []
    with torch.no_grad():
        for name, m in qmodel.named_modules():
            if name not in before:
                continue
            s_in, bits = bm.act_quant_params(m.input_quant)
            largest = s_in * (2 ** (bits - 1) if m.input_quant.is_signed else 2**bits - 1)
            moved = (m.quant_weight().value - before[name]).abs().reshape(m.weight.shape[0], -1).sum(1)
            changed = moved > 0
            out += (moved[changed] * largest / m.bias.detach().abs()[changed]).tolist()
    return out


def main() -> int:
    started = time.perf_counter()
    model = deployable(load_model("zoo:efficientnet-lite0", data_root=DATA))
    calib = load_data(str(DATA / "imagenet" / "sample1000"), model.preprocess, limit=256, seed=0)
    check = load_data(str(DATA / "imagenet" / "val1300"), model.preprocess, limit=300, seed=0)
    edge, mcu = load_target("edge-cpu-ort"), load_target("mcu-int")
    cases = {
        "edge-cpu-ort, every layer integer": (edge, {l.name: (7, 8) for l in model.layers}),
        "edge-cpu-ort, every other layer integer": (edge, {l.name: (7, 8) if l.order % 2 == 0 else (32, 32)
                                                           for l in model.layers}),
        "mcu-int, every layer 4-bit": (mcu, {l.name: (4, 8) for l in model.layers}),
    }
    rows = {}
    fit = bm.fit_bias_grid
    for label, (target, bits) in cases.items():
        qmodel = bm.build_quant_model(model.graph, model.layers, bits, target.quant_spec(),
                                      pool_inputs=target.activations.pool_inputs)
        bm.fit_bias_grid = lambda q: []  # calibrate as before the fit existed
        try:
            bm.calibrate(qmodel, calib.x)
        finally:
            bm.fit_bias_grid = fit
        over_before = sorted(n for n, (steps, _) in bm.bias_steps(qmodel).items() if steps > bm.BIAS_GRID_STEPS)
        weights = {n: m.quant_weight().value.detach().clone() for n, m in qmodel.named_modules()
                   if isinstance(m, bm.QuantWeightBiasInputOutputLayer) and m.weight_quant.is_quant_enabled}
        fitted = fit(qmodel)
        moves = _moves(qmodel, {n: weights[n] for n in fitted})
        over_after = sorted(n for n, (steps, _) in bm.bias_steps(qmodel).items() if steps > bm.BIAS_GRID_STEPS)
        row = {"layers_over_grid_without_fit": over_before, "layers_fitted": fitted,
               "channels_moved": len(moves), "largest_move_of_bias": max(moves, default=0.0),
               "layers_over_grid_with_fit": over_after}
        if not over_after:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "m.onnx"
                export_model(qmodel, calib.x[:1], target.export, path)
                result = verify_export(path, target.export, qmodel, check.x, check.y, allocation=bits)
                row["onnxruntime_vs_brevitas"] = {k: result.to_json()[k] for k in
                                                  ("ok", "agreement", "agreement_all", "mean_abs_diff", "tolerance")}
        rows[label] = row
        print(label, {k: (len(v) if isinstance(v, list) else v) for k, v in row.items()}, flush=True)
    write_json(HERE / "results" / "bias_grid_lite0.json", {
        "benchmark": "EfficientNet-Lite0's int32 bias grid in the QCDQ export, with and without fit_bias_grid",
        "command": "python bench/bench_bias_grid.py", "tool_version": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
        "grid_steps": bm.BIAS_GRID_STEPS, "fit_error_bound": bm.BIAS_FIT_ERROR,
        "calibration": {"source": calib.source, "n": len(calib.x)}, "check": {"source": check.source, "n": len(check.x)},
        "results": rows, "wall_seconds": round(time.perf_counter() - started, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
