"""The pipeline's stages as plain functions: the Python API behind the CLI.

Each stage takes the previous stage's object (or file) and returns its own, so a build
pipeline can call any of them alone::

    from infoq_deploy import stages
    model = stages.load_model("zoo:cifar10-resnet20")
    target = stages.load_target("fpga-int")
    data = stages.load_data("../shared/data/cifar10/train.tar.gz", model.preprocess, limit=1000)
    table = stages.profile_infoq(model, target, data)        # or stages.profile_mse(...)
    allocation = stages.allocate_table(table, target, ["3.5bit"])
    # quantize + fine-tune + export + verify + report: infoq_deploy.pipeline.run(RunConfig(...))
"""

from __future__ import annotations

import time

from . import __version__
from .allocate import Allocation, allocate
from .budgets import parse_budget
from .data import Dataset, load_data
from .errors import UserError
from .fold_bn import FoldBatchNorm
from .layers import build_layer_table
from .model_sources import ImportedModel, load_model
from .profile_mse import activation_scores, weight_scores
from .sensitivity import SensitivityTable
from .targets import Target, load_target


def profile_infoq(model: ImportedModel, target: Target, data: Dataset, **settings) -> SensitivityTable:
    """The InfoQ profiler (see `profile_infoq.profile_infoq` for the settings)."""
    from .profile_infoq import profile_infoq as run

    return run(model, target, data, **settings)

DEFAULT_MODEL = "zoo:fashion-cnn"
DEFAULT_DATA = "builtin:fashion-mnist"  # 1,000 training images, committed
DEFAULT_EVAL_DATA = "builtin:fashion-mnist:eval"  # 1,000 test images, committed


def deployable(model: ImportedModel) -> ImportedModel:
    """The graph as deployed: BatchNorm folded, layer table recomputed (folded biases count)."""
    gm = FoldBatchNorm().apply(model.graph)
    return ImportedModel(
        spec=model.spec,
        graph=gm,
        layers=build_layer_table(gm, model.preprocess.input_shape),
        preprocess=model.preprocess,
        fingerprint=model.fingerprint,
    )


def profile_mse(model: ImportedModel, target: Target, data: Dataset | None, seed: int = 0) -> SensitivityTable:
    """Weight (and, with data, activation) quantization error as the sensitivity proxy."""
    deployed = deployable(model)
    spec = target.quant_spec()
    start = time.perf_counter()
    s_w = weight_scores(deployed.graph, deployed.layers, list(target.weights.bits), spec)
    a_bits = list(target.activations.bits)
    if data is not None:
        s_a = activation_scores(deployed.graph, deployed.layers, a_bits, spec, data.x)
    elif len(a_bits) == 1:
        s_a = {layer.name: {a_bits[0]: 0.0} for layer in deployed.layers}
    else:
        raise UserError(
            f"target {target.name} chooses activation bits among {a_bits}, which needs calibration data; pass --data"
        )
    meta = {
        "method": "mse",
        "tool_version": __version__,
        "settings": {"quant_spec": vars(spec) if hasattr(spec, "__dict__") else str(spec)},
        "model_fingerprint": model.fingerprint,
        "data_hash": None if data is None else data.sha256,
        "data_source": None if data is None else data.source,
        "calib_size": 0 if data is None else len(data.x),
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 3),
    }
    return SensitivityTable(
        model=model.spec, target=target.name, layers=deployed.layers, weights=s_w, activations=s_a, meta=meta
    )


def allocate_table(table: SensitivityTable, target: Target, budget_texts: list[str], alpha: float = 1.0) -> Allocation:
    if not budget_texts:
        raise UserError("no budget given; pass at least one --budget, e.g. --budget 4.5MB or --budget 3.5bit")
    budgets = [parse_budget(text) for text in budget_texts]
    return allocate(table.layers, table.weights, table.activations, target, budgets, alpha=alpha)


__all__ = [
    "DEFAULT_DATA", "DEFAULT_EVAL_DATA", "DEFAULT_MODEL", "allocate_table", "deployable", "load_data",
    "load_model", "load_target", "profile_infoq", "profile_mse",
]
