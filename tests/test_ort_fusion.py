"""The edge-cpu-ort QCDQ export as ONNX Runtime runs it: every integer-allocated layer and every
quantized add becomes an integer kernel in the graph ORT itself optimizes (backends/ort_fusion.py),
and the rewrites that make it so (export/passes/pad_into_conv.py, activations_as_uint8.py) are exact."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from infoq_deploy.backends.ort_fusion import fusion, quantized_adds
from infoq_deploy.core.targets import load_target
from infoq_deploy.data.load import load_data
from infoq_deploy.export import to_qcdq
from infoq_deploy.export.graph import OnnxGraph
from infoq_deploy.export.passes.merge_duplicates import MergeDuplicateNodes
from infoq_deploy.export.writer import export_model
from infoq_deploy.importing.deployable import deployable
from infoq_deploy.importing.fold_bn import FoldBatchNorm
from infoq_deploy.importing.layers import build_layer_table
from infoq_deploy.importing.sources import load_model
from infoq_deploy.quantize.brevitas_model import build_quant_model, calibrate
from infoq_deploy.verify.check import match_layers, verify_export

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TARGET = load_target("edge-cpu-ort")
INTEGER = TARGET.choices()[0]  # (7, 8): the target's integer layer


class _MBConv(nn.Module):
    """EfficientNet-Lite's pattern: stride-2 'same' padding by F.pad before a depthwise conv,
    ReLU6, a 1x1 projection without activation, and two residual blocks (the first add is
    read by the second block, the second by the head: both integer adds), then a head conv whose output only the average
    pool reads."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.expand = nn.Conv2d(c, 2 * c, 1)
        self.down = nn.Conv2d(2 * c, 2 * c, 3, stride=2, groups=2 * c)
        self.project = nn.Conv2d(2 * c, c, 1)
        self.expand2 = nn.Conv2d(c, 2 * c, 1)
        self.dw = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.project2 = nn.Conv2d(2 * c, c, 1)
        self.expand3 = nn.Conv2d(c, 2 * c, 1)
        self.dw3 = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.project3 = nn.Conv2d(2 * c, c, 1)
        self.head = nn.Conv2d(c, 4 * c, 1)
        self.fc = nn.Linear(4 * c, 10)

    def forward(self, x):
        x = F.relu6(self.stem(x))
        x = F.relu6(self.expand(x))
        x = self.project(F.relu6(self.down(F.pad(x, (0, 1, 0, 1)))))
        x = x + self.project2(F.relu6(self.dw(F.relu6(self.expand2(x)))))
        x = x + self.project3(F.relu6(self.dw3(F.relu6(self.expand3(x)))))
        x = F.relu6(self.head(x))  # read by the classifier only through the average pool
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _integer_nodes(path, qmodel) -> list[str]:
    model = onnx.load(str(path))
    pairs, problems = match_layers(OnnxGraph(model), "qcdq", qmodel)
    assert not problems, problems
    return [node.name for node, _, _ in pairs] + quantized_adds(model)


def _quantized_mbconv(tmp_path, pool_inputs=TARGET.activations.pool_inputs):
    torch.manual_seed(0)
    gm = FoldBatchNorm().apply(torch.fx.symbolic_trace(_MBConv().eval()))
    layers = build_layer_table(gm, (3, 16, 16))
    allocation = {layer.name: INTEGER for layer in layers}
    qmodel = build_quant_model(gm, layers, allocation, TARGET.quant_spec(), pool_inputs=pool_inputs)
    x = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    calibrate(qmodel, x)
    path = tmp_path / "mbconv.onnx"
    export_model(qmodel, x[:1], "qcdq", path)
    return qmodel, allocation, x, path


def test_mbconv_block_runs_as_integer_kernels_and_the_rewrites_are_exact(tmp_path):
    qmodel, allocation, x, path = _quantized_mbconv(tmp_path)
    model = onnx.load(str(path))
    assert "Pad" not in {n.op_type for n in model.graph.node}  # folded into the depthwise conv's pads
    result = fusion(model, _integer_nodes(path, qmodel))
    assert result.float_nodes == {}, result.float_nodes
    assert result.integer_ops.get("QLinearConv") == 11 and result.integer_ops.get("QLinearAdd") == 2, result.integer_ops
    ours = verify_export(path, "qcdq", qmodel, x, allocation=allocation)
    assert ours.ok and ours.mean_abs_diff < ours.tolerance, (ours.mismatches, ours.mean_abs_diff, ours.tolerance)
    assert ours.ort_float == {}


def test_the_check_names_the_layers_ort_leaves_in_float(tmp_path, monkeypatch):
    """Without the two rewrites (Brevitas's export as it comes), ORT leaves the padded block's
    expand conv and the residual block in float: the check must see it."""
    monkeypatch.setattr(to_qcdq, "PASSES", (MergeDuplicateNodes,))
    qmodel, allocation, x, path = _quantized_mbconv(tmp_path, pool_inputs=False)
    result = fusion(onnx.load(str(path)), _integer_nodes(path, qmodel))
    assert "/expand/Conv" in result.float_nodes and any("Add" in n for n in result.float_nodes), result.float_nodes
    assert "/head/Conv" in result.float_nodes  # no quantizer reads its output
    assert verify_export(path, "qcdq", qmodel, x[:8], allocation=allocation).ort_float


@pytest.mark.realdata
def test_resnet20_every_integer_layer_is_an_integer_kernel(tmp_path):
    if not (DATA / "cifar10-resnet").exists():
        pytest.fail(f"real data missing: {DATA / 'cifar10-resnet'}; these tests need the shared data folder")
    model = deployable(load_model("zoo:cifar10-resnet20", data_root=DATA))
    allocation = {layer.name: INTEGER for layer in model.layers}
    qmodel = build_quant_model(model.graph, model.layers, allocation, TARGET.quant_spec(), pool_inputs=True)
    data = load_data(str(DATA / "cifar10" / "test"), model.preprocess, limit=64, seed=0)
    calibrate(qmodel, data.x)
    path = tmp_path / "resnet20.onnx"
    export_model(qmodel, data.x[:1], "qcdq", path)
    expected = _integer_nodes(path, qmodel)
    # every add: the option-A shortcut's (export/passes/dequantize_after_shortcut.py) and the
    # last one, before the pool (importing/pool_inputs.py) included
    assert len(quantized_adds(onnx.load(str(path)))) == 9
    result = fusion(onnx.load(str(path)), expected)
    assert result.float_nodes == {}, result.float_nodes
    assert result.integer_ops.get("QLinearConv") == 19 and result.integer_ops.get("QGemm") == 1, result.integer_ops
    assert result.integer_ops.get("QLinearAdd") == 9, result.integer_ops
    ours = verify_export(path, "qcdq", qmodel, data.x, data.y, allocation=allocation)
    assert ours.ok, (ours.mismatches, ours.agreement, ours.mean_abs_diff, ours.tolerance)


@pytest.mark.realdata
@pytest.mark.parametrize("pattern", ["every other", "first half"])
def test_the_layer_table_predicts_which_integer_layers_ort_runs_in_float(pattern, tmp_path):
    """Mixed allocations: an integer layer whose output a float layer reads (no quantizer) runs in
    float; the layer table's reader groups (importing/layers.py) say which, and ORT agrees."""
    from infoq_deploy.allocate.costs import unfused
    from infoq_deploy.verify.check import ort_fusion

    if not (DATA / "cifar10-resnet").exists():
        pytest.fail(f"real data missing: {DATA / 'cifar10-resnet'}; these tests need the shared data folder")
    model = deployable(load_model("zoo:cifar10-resnet20", data_root=DATA))
    n = len(model.layers)
    is_int = (lambda l: l.order % 2 == 0) if pattern == "every other" else (lambda l: l.order < n // 2)
    allocation = {l.name: INTEGER if is_int(l) else (32, 32) for l in model.layers}
    qmodel = build_quant_model(model.graph, model.layers, allocation, TARGET.quant_spec(), pool_inputs=True)
    calibrate(qmodel, torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    path = tmp_path / "mixed.onnx"
    export_model(qmodel, torch.zeros(1, 3, 32, 32), "qcdq", path)
    ran_float, _ = ort_fusion(onnx.load(str(path)), "qcdq", qmodel, allocation)
    predicted = unfused(model.layers, [allocation[l.name] for l in model.layers])
    assert predicted  # both patterns leave some integer layer without an output quantizer
    assert predicted == {name for name in ran_float if not name.startswith("add ")}
