"""Run an exported graph over many inputs on a back end, in batches of a chosen size.

Brevitas's export bakes its example's batch size into the graph. The file as written runs
the first inputs; a copy re-batched to ``size`` runs the rest only if it reproduces them,
else the file runs batch by batch.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

from infoq_deploy.backends import registry


def chunks(x: np.ndarray, size: int):
    """(batch of ``size``, zero-padded at the end; how many of its inputs are real)."""
    for start in range(0, x.shape[0], size):
        part = x[start : start + size]
        pad = size - part.shape[0]
        if pad:  # the graph has a fixed batch size: pad the last chunk, drop the padding after
            part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), dtype=part.dtype)])
        yield part, size - pad


def batch_size(model: onnx.ModelProto) -> int:
    return model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or 1


def rebatch(model: onnx.ModelProto, size: int) -> onnx.ModelProto:
    """A copy of ``model`` for batches of ``size``.

    Like qonnx's ChangeBatchSize, but it only rewrites Reshape shapes that start with the
    exported batch size: ChangeBatchSize also rewrites ``-1`` (e.g. F.pad's pads reshape).
    """
    old = batch_size(model)
    model = copy.deepcopy(model)
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = size
    del model.graph.value_info[:]
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            shape = numpy_helper.to_array(inits[node.input[1]]).copy()
            if shape.size and shape[0] == old:
                shape[0] = size
                inits[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))
    return model


def _execute(model: onnx.ModelProto, x: np.ndarray, size: int, backend: str) -> np.ndarray:
    run = registry.get(backend).session(model)
    return np.concatenate([run(part)[:n] for part, n in chunks(x, size)])


def run_batched(model: onnx.ModelProto, x: np.ndarray, size: int, backend: str) -> np.ndarray:
    """Outputs of ``model`` on ``x`` run by ``backend``, ``size`` inputs per call where the graph allows."""
    exported = batch_size(model)
    first = _execute(model, x[:exported], exported, backend)
    if len(x) <= exported:
        return first
    if size > exported:
        try:
            out = _execute(rebatch(model, size), x, size, backend)
        except Exception:  # an op other than Reshape bakes the batch size in
            out = None
        if out is not None and np.allclose(out[:exported], first, rtol=1e-4, atol=1e-6):
            return out
    return np.concatenate([first, _execute(model, x[exported:], exported, backend)])
