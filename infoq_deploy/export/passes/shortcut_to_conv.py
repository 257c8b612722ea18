"""Write an option-A ResNet shortcut (strided slicing, then zero channels padded on) as a 1x1 Conv.

``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))`` exports as Slice, Slice, Pad; hls4ml 1.3
has no Slice, and FINN none in hardware. It is exactly a 1x1 convolution with stride 2 and
fixed 0/1 weights (output channel p + c copies input channel c): one product by 1 per
output, no rounding anywhere. The weights are quantized with scale 1 (2-bit narrow: the
integers 0 and 1 themselves), so both flows see an integer layer they take.
"""

from __future__ import annotations

import numpy as np
from onnx import helper
from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_shapes import InferShapes

QONNX_DOMAIN = "qonnx.custom_op.general"
_INT_MAX = np.iinfo(np.int64).max


def _slice_step(model, node, shape) -> tuple[int, int] | None:
    """(axis, step) of a Slice that keeps every step-th element from 0 to the end of one spatial axis."""
    if len(node.input) < 5:
        return None
    starts, ends, axes, steps = (model.get_initializer(i) for i in node.input[1:5])
    if any(v is None for v in (starts, ends, axes, steps)) or axes.size != 1:
        return None
    axis = int(axes.reshape(-1)[0]) % len(shape)
    if axis not in (2, 3) or int(starts.reshape(-1)[0]) != 0 or int(ends.reshape(-1)[0]) < shape[axis]:
        return None
    step = int(steps.reshape(-1)[0])
    return (axis, step) if step >= 1 else None


def _channel_pad(model, node, rank: int) -> tuple[int, int] | None:
    """(before, after) of a constant-zero Pad that pads the channel axis only."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    mode = attrs.get("mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        return None
    pads = model.get_initializer(node.input[1]) if len(node.input) > 1 else None
    value = model.get_initializer(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if pads is None or (value is not None and np.any(value != 0)):
        return None
    pads = pads.reshape(-1).tolist()
    before, after = pads[:rank], pads[rank:]
    if any(before[i] or after[i] for i in range(rank) if i != 1):
        return None
    return before[1], after[1]


class ShortcutToConv(Transformation):
    def apply(self, model):
        graph = model.graph
        for node in graph.node:
            if node.op_type != "Slice":
                continue
            source = node.input[0]
            shape = model.get_tensor_shape(source)
            if shape is None or len(shape) != 4:
                continue
            strides, chain, current = [1, 1], [], node
            while current is not None and current.op_type == "Slice":
                step = _slice_step(model, current, shape)
                users = model.find_consumers(current.output[0]) or []
                if step is None or len(users) != 1 and current is not node:
                    break
                strides[step[0] - 2] *= step[1]
                chain.append(current)
                current = users[0] if len(users) == 1 else None
            if not chain or strides == [1, 1]:
                continue
            pad = (0, 0)
            if current is not None and current.op_type == "Pad":
                found = _channel_pad(model, current, 4)
                if found is not None:
                    pad = found
                    chain.append(current)
            channels = shape[1]
            weight = np.zeros((pad[0] + channels + pad[1], channels, 1, 1), dtype=np.float32)
            weight[np.arange(channels) + pad[0], np.arange(channels), 0, 0] = 1.0
            ones, scale, zero, bits, wq = (model.make_new_valueinfo_name() for _ in range(5))
            model.set_initializer(ones, weight)
            for name, value in ((scale, 1.0), (zero, 0.0), (bits, 2.0)):
                model.set_initializer(name, np.asarray(value, dtype=np.float32))
            last = chain[-1]
            new = [
                helper.make_node("Quant", [ones, scale, zero, bits], [wq], domain=QONNX_DOMAIN, name=f"{node.name}_sel",
                                 signed=1, narrow=1, rounding_mode="ROUND"),
                helper.make_node("Conv", [source, wq], [last.output[0]], name=f"{node.name}_shortcut",
                                 kernel_shape=[1, 1], strides=strides, pads=[0, 0, 0, 0], dilations=[1, 1], group=1),
            ]
            index = list(graph.node).index(node)
            for old in chain:
                graph.node.remove(old)
            for k, n in enumerate(new):
                graph.node.insert(index + k, n)
            return model.transform(InferShapes()), True
        return model, False
