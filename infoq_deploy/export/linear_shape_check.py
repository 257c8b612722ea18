"""qonnx's ``ModelWrapper.check_all_tensor_shapes_specified`` in linear time, for the span of a
``with linear_shape_check():`` block.

Why: qonnx runs that check whenever it wraps a model (``ModelWrapper.__init__``, so in every
``InferShapes``) and before every ``execute_onnx`` call, and it looks each tensor up by
rebuilding the list of all ValueInfo names: tensors x ValueInfos. On DenseNet-121's QONNX
graph that was a third of the export (py-spy), and the export ran twice per pipeline (the
preflight's trial and the real one); `bench/bench_export_speed.py` measures both versions on
the same model and checks that they write the same file.

Same answer, same side effects: a tensor named by more than one ValueInfo fails the same
assertion; an initializer without a ValueInfo gets one through qonnx's own
``get_tensor_shape`` when asked to fix it (rare, so its cost does not matter). The original
method (or whatever was there) is put back on leaving the block, also on an exception.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from itertools import chain

from qonnx.core.modelwrapper import ModelWrapper

def check_all_tensor_shapes_specified(self, fix_missing_init_shape: bool = False) -> bool:
    """What qonnx's method returns and does (see the module docstring), one dict lookup per tensor."""
    graph = self._model_proto.graph
    described = Counter(v.name for v in chain(graph.input, graph.output, graph.value_info))
    initializers = {t.name for t in graph.initializer}
    ret = True
    for node in graph.node:
        for name in chain((i for i in node.input if i != ""), node.output):
            seen = described.get(name, 0)
            assert seen <= 1, "Multiple ValueInfoProto found for " + name
            if seen:
                continue
            if name not in initializers:
                ret = False
            elif fix_missing_init_shape:
                self.get_tensor_shape(name, fix_missing_init_shape=True)  # qonnx adds the ValueInfo
                described[name] = 1
    return ret


@contextmanager
def linear_shape_check():
    """Use the linear check inside the block (not thread-safe: it swaps a class attribute)."""
    previous = ModelWrapper.check_all_tensor_shapes_specified  # blocks may nest
    ModelWrapper.check_all_tensor_shapes_specified = check_all_tensor_shapes_specified
    try:
        yield
    finally:
        ModelWrapper.check_all_tensor_shapes_specified = previous
