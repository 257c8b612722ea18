"""Three of qonnx's graph helpers in linear time, for the span of a ``with linear_time():`` block:
``ModelWrapper.check_all_tensor_shapes_specified``, ``SortGraph`` and ``GiveUniqueParameterTensors``.

Why: qonnx runs all three over and over. The shape check runs whenever it wraps a model
(``ModelWrapper.__init__``, so in every ``InferShapes``) and before every ``execute_onnx``;
the other two run after every transformation (``ModelWrapper.cleanup``). Each looks tensors
or nodes up by scanning the whole graph once per tensor or node, so their cost grows with
the square of the graph's size. In a py-spy profile of DenseNet-121's QONNX export the three
held most of the time, and the pipeline exports twice (the preflight's trial and the real
one). `bench/bench_export_speed.py` times both versions on the same model and checks that
they write the same file.

Same answers, same side effects, same order: each function below says what it keeps of
qonnx's. The originals (or whatever was there) are put back on leaving the block, also on an
exception; not thread-safe (it swaps class attributes).
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from itertools import chain

from onnx import numpy_helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.general import GiveUniqueParameterTensors, SortGraph
from toposort import toposort_flatten


def check_all_tensor_shapes_specified(self, fix_missing_init_shape: bool = False) -> bool:
    """qonnx's answer: every node input and output has a ValueInfo (or is an initializer); a
    tensor with two ValueInfos fails qonnx's assertion; an initializer without one gets it
    through qonnx's own ``get_tensor_shape`` when asked to fix it (rare: its cost does not matter)."""
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


def sort_graph(self, model):
    """qonnx's SortGraph: the same dependency sets (a node's producers are the first nodes
    writing its inputs; a node with none is kept when it reads an initializer or a graph input,
    and dropped otherwise) sorted by the same ``toposort_flatten``, so the same order."""
    graph = model.graph
    if len(graph.node) == 1:
        return (model, False)
    node_list = list(graph.node)
    producer: dict[str, int] = {}
    for index, node in enumerate(node_list):
        for name in node.output:
            producer.setdefault(name, index)
    sources = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    dependencies = {}
    for index, node in enumerate(node_list):
        before = {producer[name] for name in node.input if name in producer}
        if before:
            dependencies[index] = before
        elif any(name in sources for name in node.input):
            dependencies[index] = set()
    order = toposort_flatten(dependencies)
    del graph.node[:]
    graph.node.extend(node_list[index] for index in order)
    return (model, False)


def give_unique_parameter_tensors(self, model):
    """qonnx's GiveUniqueParameterTensors: an initializer read a second time is copied under a
    new name (qonnx's ``make_new_valueinfo_name``, with the first's datatype annotation) for that
    input; first reads keep theirs."""
    graph = model.graph
    initializers = {}
    for t in graph.initializer:
        initializers.setdefault(t.name, t)  # qonnx's lookup finds the first of a name
    seen = set()
    for node in graph.node:
        for index, name in enumerate(list(node.input)):
            if name not in initializers:
                continue
            if name not in seen:
                seen.add(name)
                continue
            new_name = model.make_new_valueinfo_name()
            model.set_initializer(new_name, numpy_helper.to_array(initializers[name]))
            model.set_tensor_datatype(new_name, model.get_tensor_datatype(name))
            node.input[index] = new_name
    return (model, False)


_REPLACEMENTS = ((ModelWrapper, "check_all_tensor_shapes_specified", check_all_tensor_shapes_specified),
                 (SortGraph, "apply", sort_graph),
                 (GiveUniqueParameterTensors, "apply", give_unique_parameter_tensors))


@contextmanager
def linear_time():
    """qonnx's three helpers replaced by the functions above inside the block (blocks may nest)."""
    previous = [getattr(cls, name) for cls, name, _ in _REPLACEMENTS]
    for cls, name, fn in _REPLACEMENTS:
        setattr(cls, name, fn)
    try:
        yield
    finally:
        for (cls, name, _), fn in zip(_REPLACEMENTS, previous):
            setattr(cls, name, fn)
