"""Write a calibrated Brevitas model in a registered format (export/registry.py), atomically.

Every format goes through Brevitas's TorchScript-based ONNX export (``dynamo=False``): it
writes one self-contained file (the dynamo path writes weights to a side ``.data`` file,
which an atomic single-file write cannot cover) and keeps integer weights in QCDQ.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

from infoq_deploy.core.atomic import atomic_path
from infoq_deploy.core.errors import UserError
from infoq_deploy.export import registry
from infoq_deploy.quantize.brevitas_model import clear_act_caches, is_calibrated


def check_format(fmt: str) -> None:
    registry.get(fmt)


def check_exportable(qmodel: nn.Module, fmt: str) -> None:
    """Raise UserError when ``qmodel`` cannot be written in ``fmt``."""
    module = registry.get(fmt)
    if not is_calibrated(qmodel):
        raise UserError("the quantized model has not been calibrated; run calibrate(qmodel, x) before exporting")
    module.check(qmodel)


def export_model(qmodel: nn.Module, example: torch.Tensor, fmt: str, path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> None:
    """Write ``qmodel`` traced on ``example`` (its batch size is baked in) to ``path`` atomically,
    with ``metadata`` as the file's metadata_props (what made it, e.g. the PTQ algorithm)."""
    check_exportable(qmodel, fmt)
    module = registry.get(fmt)
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings():
            # the tracer's and Brevitas's export warnings are about tracing internals, not the model
            warnings.simplefilter("ignore")
            module.write(qmodel, example, tmp)
            if metadata:
                _set_metadata(tmp, metadata)
    finally:
        clear_act_caches(qmodel)  # else scale() keeps answering the exported value after training


def _set_metadata(path, metadata: dict[str, str]) -> None:
    import onnx

    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    props.update(metadata)
    del model.metadata_props[:]
    for key, value in sorted(props.items()):
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
