"""FINN's threshold rounding, made to round ties to even as the QONNX file says.

FINN turns each activation ``Quant`` into a MultiThreshold counting thresholds at k + 0.5
with ``>=``, whatever the Quant's ``rounding_mode``: a value exactly half-way between two
levels goes up. The file (and qonnx, hls4ml, Brevitas) rounds it to the even level. On
power-of-two scales such ties are common and the difference carries through the network
(docs/upstream/README.md, "FINN rounds ties up").

This is FINN's own ``RoundAndClipThresholds`` (the last pass of ``StreamlinePlus``, where
the thresholds reach the integer accumulator domain) with one step in front of its ceiling:
a threshold that lies exactly on an integer there is a tie, and where half-to-even sends that
tie to the level below, the threshold moves to the next integer, so the tie no longer counts
and no other integer changes side. Where a threshold node reads floats (the image), the
threshold moves to the next float32 up instead: ``>=`` becomes ``>``.

Only this step knows ties: after FINN's ceiling every threshold is an integer, ties or not,
so it must run before it, once per threshold tensor; the tensors it has already written are
recognised by content (streamlining renames them between passes).
"""

from __future__ import annotations

import numpy as np
from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds
from qonnx.custom_op.registry import getCustomOp

# streamlining's float32 arithmetic leaves an integer threshold off by about 1e-7 relative
_TIE_TOLERANCE = 4 * float(np.finfo(np.float32).eps)


def half_to_even(thresholds: np.ndarray, out_bias: float, integer_input: bool) -> np.ndarray:
    """``thresholds`` (channels x levels - 1) of a MultiThreshold whose output level is the
    count of thresholds passed plus ``out_bias``, moved so that ties round to even."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    # the tie at threshold t lies between levels t + out_bias and the one above: half to even
    # sends it down when the lower level is even
    down = (np.arange(thresholds.shape[-1]) + int(round(out_bias))) % 2 == 0
    if integer_input:
        nearest = np.round(thresholds)
        tie = np.abs(thresholds - nearest) <= _TIE_TOLERANCE * np.maximum(1.0, np.abs(nearest))
        return np.where(tie, np.where(down, nearest + 1, nearest), thresholds)
    stored = thresholds.astype(np.float32)
    return np.where(down, np.nextafter(stored, np.float32(np.inf)), stored).astype(np.float64)


class RoundThresholdsHalfToEven(RoundAndClipThresholds):
    """``RoundAndClipThresholds`` with ties sent to the even level first (module docstring)."""

    def __init__(self):
        super().__init__()
        self._written: set[bytes] = set()

    def apply(self, model):
        before = {n.input[1]: model.get_initializer(n.input[1]) for n in model.get_nodes_by_op_type("MultiThreshold")}
        for node in model.get_nodes_by_op_type("MultiThreshold"):
            thresholds = before[node.input[1]]
            op = getCustomOp(node)
            out_bias = op.get_nodeattr("out_bias")
            # levels are count + out_bias only with out_scale 1 (FINN's conversion keeps the scale in a Mul)
            if (thresholds is None or thresholds.astype(np.float32).tobytes() in self._written
                    or op.get_nodeattr("out_scale") != 1.0 or out_bias != round(out_bias)):
                continue
            integer_input = model.get_tensor_datatype(node.input[0]).is_integer()
            model.set_initializer(node.input[1], half_to_even(thresholds, out_bias, integer_input).astype(np.float32))
        modified = True
        while modified:  # FINN's pass stops after each node it changes
            model, modified = super().apply(model)
        changed = False
        for node in model.get_nodes_by_op_type("MultiThreshold"):
            after = model.get_initializer(node.input[1])
            if after is not None:
                self._written.add(after.astype(np.float32).tobytes())
                old = before.get(node.input[1])
                changed |= old is None or not np.array_equal(old, after)
        return model, changed
