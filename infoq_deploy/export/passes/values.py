"""The value of a constant tensor: an initializer, or a Quant node of initializers (computed as qonnx does)."""

from __future__ import annotations

import numpy as np
from qonnx.custom_op.general.quant import quant


def constant_value(model, tensor: str) -> np.ndarray | None:
    value = model.get_initializer(tensor)
    if value is not None:
        return value
    producer = model.find_producer(tensor)
    if producer is None or producer.op_type != "Quant":
        return None
    params = [model.get_initializer(i) for i in producer.input]
    if any(p is None for p in params):
        return None
    attrs = {a.name: a for a in producer.attribute}
    signed = attrs["signed"].i if "signed" in attrs else 1
    narrow = attrs["narrow"].i if "narrow" in attrs else 0
    mode = attrs["rounding_mode"].s.decode() if "rounding_mode" in attrs else "ROUND"
    return np.asarray(quant(*params, signed=signed, narrow=narrow, rounding_mode=mode), dtype=np.float32)
