"""QONNX / QCDQ export of a mixed-precision model, and verification of the exported file."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
import torch.fx
from onnx import numpy_helper
from test_brevitas_model import INPUT_SHAPE, MIXED, inputs, make_tiny
from torch import nn

import infoq_deploy.export.to_qonnx as export_mod
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.quantizer import QuantSpec
from infoq_deploy.export.writer import export_model
from infoq_deploy.importing.layers import build_layer_table
from infoq_deploy.quantize.brevitas_model import build_quant_model, calibrate
from infoq_deploy.verify.check import MIN_AGREEMENT, verify_export

FORMATS = ["qonnx", "qcdq"]
N_VERIFY = 300


@pytest.fixture(scope="module")
def tiny():
    gm, layers = make_tiny()
    qmodel = build_quant_model(gm, layers, MIXED, QuantSpec())
    calibrate(qmodel, inputs(200, 10), batch_size=64)
    return gm, layers, qmodel


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    _, _, qmodel = tiny
    out = tmp_path_factory.mktemp("export")
    paths = {}
    for fmt in FORMATS:
        paths[fmt] = out / f"tiny.{fmt}.onnx"
        export_model(qmodel, inputs(1, 11), fmt, paths[fmt])
    return paths


@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_file_verifies(tiny, exported, fmt):
    gm, _, qmodel = tiny
    x = inputs(N_VERIFY, 12)
    with torch.no_grad():
        labels = gm(x).argmax(dim=1)  # float model's predictions stand in for labels
    result = verify_export(exported[fmt], fmt, qmodel, x, labels, allocation=MIXED)
    assert result.n_inputs == N_VERIFY
    assert result.bits_in_graph == MIXED
    assert result.mismatches == []
    assert result.agreement >= MIN_AGREEMENT
    assert result.mean_abs_diff <= result.tolerance
    assert result.quant_error > 0
    assert result.ok
    # top-1 of exported and Brevitas differ on at most the disagreeing inputs
    assert abs(result.accuracy - result.reference_accuracy) <= 1 - result.agreement + 1e-12


def _producer(model: onnx.ModelProto) -> dict:
    return {out: n for n in model.graph.node for out in n.output}


def _value(model: onnx.ModelProto, name: str) -> np.ndarray:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    raise AssertionError(f"{name} is not an initializer")


@pytest.mark.parametrize("fmt", FORMATS)
def test_one_quantizer_per_tensor_in_graph(exported, fmt):
    """The add reads x through the very quantizer node the dw conv reads (one quantizer per
    tensor); its other input and both concatenated inputs come from one join quantizer each."""
    model = onnx.load(str(exported[fmt]))
    producer = _producer(model)
    quant_op = "Quant" if fmt == "qonnx" else "DequantizeLinear"
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    joins = {n.op_type: n for n in model.graph.node  # not the bias Add of the float classifier's MatMul
             if n.op_type in ("Add", "Concat") and all(i in producer for i in n.input)}
    assert sorted(joins) == ["Add", "Concat"]
    for op, node in joins.items():
        srcs = [producer[i] for i in node.input]
        assert [s.op_type for s in srcs] == [quant_op] * len(srcs), node.name
        shared = [s for s in srcs if any(c.op_type == "Conv" for c in consumers[s.output[0]])]
        if op == "Add":
            assert len(shared) == 1  # x: the dw conv's input quantizer, not a second one
            tensor = shared[0].input[0]
            if fmt == "qcdq":
                tensor = producer[producer[tensor].input[0]].input[0]  # DequantizeLinear <- Clip <- QuantizeLinear
            assert [c.op_type for c in consumers[tensor]].count(shared[0].op_type if fmt == "qonnx" else "QuantizeLinear") == 1
        else:
            assert shared == []
            scales = [_value(model, s.input[1]) for s in srcs]
            assert all(np.array_equal(scales[0], s) for s in scales[1:]), node.name
            if fmt == "qonnx":
                assert len({int(_value(model, s.input[3])) for s in srcs}) == 1  # same bit width too


def test_verify_detects_a_model_that_differs_from_the_file(tiny, exported):
    _, _, qmodel = tiny
    rescaled = copy.deepcopy(qmodel)
    with torch.no_grad():
        proxy = rescaled.get_submodule("conv_b").input_quant
        proxy.fused_activation_quant_proxy.tensor_quant.scaling_impl.value.mul_(3)
    result = verify_export(exported["qcdq"], "qcdq", rescaled, inputs(50, 13), allocation=MIXED)
    assert any("conv_b" in m and "scale" in m for m in result.mismatches)
    assert not result.ok

    shifted = copy.deepcopy(qmodel)
    with torch.no_grad():
        shifted.get_submodule("fc").bias.add_(0.05)  # a float layer: no scale or bit-width changes
    result = verify_export(exported["qonnx"], "qonnx", shifted, inputs(50, 13), allocation=MIXED)
    assert result.mismatches == []
    assert result.mean_abs_diff > result.tolerance
    assert not result.ok

    wrong = {**MIXED, "dw": (4, 4)}
    result = verify_export(exported["qcdq"], "qcdq", qmodel, inputs(20, 14), allocation=wrong)
    assert any("dw" in m for m in result.mismatches)
    assert not result.ok


def test_qcdq_rejects_more_than_8_bits_qonnx_keeps_them(tmp_path):
    gm, layers = make_tiny()
    allocation = {**MIXED, "conv_a": (12, 6)}
    qmodel = build_quant_model(gm, layers, allocation, QuantSpec())
    calibrate(qmodel, inputs(64, 15))
    with pytest.raises(UserError, match="conv_a"):
        export_model(qmodel, inputs(1, 16), "qcdq", tmp_path / "wide.onnx")
    assert not (tmp_path / "wide.onnx").exists()
    export_model(qmodel, inputs(1, 16), "qonnx", tmp_path / "wide.qonnx.onnx")
    result = verify_export(tmp_path / "wide.qonnx.onnx", "qonnx", qmodel, inputs(50, 17), allocation=allocation)
    assert result.bits_in_graph["conv_a"] == (12, 6)
    assert result.ok


class _Wide(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.fc = nn.Linear(features, 4)

    def forward(self, x):
        return self.fc(x)


def _one_layer(features: int, scale: float, tmp_path, name: str):
    """A Linear layer (biases 0.5) on inputs of magnitude ``scale``, 8-bit, calibrated; (qmodel, x, path)."""
    torch.manual_seed(0)
    model = _Wide(features).eval()
    with torch.no_grad():
        model.fc.bias.fill_(0.5)
    gm = torch.fx.symbolic_trace(model)
    layers = build_layer_table(gm, (features,))
    qmodel = build_quant_model(gm, layers, {"fc": (8, 8)}, QuantSpec())
    x = torch.randn(64, features, generator=torch.Generator().manual_seed(1)) * scale
    calibrate(qmodel, x)
    return qmodel, x, tmp_path / name


def test_qcdq_refuses_a_bias_its_int32_export_cannot_hold_exactly(tmp_path):
    """Inputs near zero (an untrained model's, say) make the bias grid (input scale x weight scale)
    so fine that the bias is more than 2^20 steps: Brevitas's float32 export would stop in a
    traceback ('QuantTensor not valid'). In a layer this wide (4,096 inputs of 1e-3) raising the
    weight scale would move the output by more than 2^-5 of the bias
    (quantize/brevitas_model.fit_bias_grid), so the layer is refused in one sentence naming it,
    and no file."""
    qmodel, x, path = _one_layer(4096, 1e-3, tmp_path, "wide.onnx")
    with pytest.raises(UserError, match="layer fc's bias is .* steps of its 32-bit grid"):
        export_model(qmodel, x[:1], "qcdq", path)
    assert list(tmp_path.iterdir()) == []


def test_a_bias_beyond_the_grid_of_a_narrow_layer_is_kept_exactly(tmp_path):
    """The same in a narrow layer (16 inputs of 1e-5), and a dead channel (weights 1e-9, bias 1: a
    BatchNorm with scale ~0 folded in, as in EfficientNet-Lite0): the weight scale of those
    channels is raised until the bias fits 2^24 steps, the file verifies, and a dead channel
    computes its bias."""
    from infoq_deploy.quantize.brevitas_model import BIAS_GRID_STEPS, bias_steps

    qmodel, x, path = _one_layer(16, 1e-5, tmp_path, "narrow.onnx")
    assert bias_steps(qmodel)["fc"][0] <= BIAS_GRID_STEPS
    export_model(qmodel, x[:1], "qcdq", path)
    assert verify_export(path, "qcdq", qmodel, x, allocation={"fc": (8, 8)}).ok

    torch.manual_seed(0)
    model = _Wide(16).eval()
    with torch.no_grad():
        model.fc.weight[2] *= 1e-9
        model.fc.bias[2] = 1.0
    gm = torch.fx.symbolic_trace(model)
    qmodel = build_quant_model(gm, build_layer_table(gm, (16,)), {"fc": (8, 8)}, QuantSpec())
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    calibrate(qmodel, x)
    export_model(qmodel, x[:1], "qcdq", tmp_path / "dead.onnx")
    assert verify_export(tmp_path / "dead.onnx", "qcdq", qmodel, x, allocation={"fc": (8, 8)}).ok
    with torch.no_grad():
        assert torch.allclose(qmodel(x)[:, 2], torch.ones(64))  # its weights round to zero, its bias stays
        assert torch.allclose(qmodel(x)[:, [0, 1, 3]], model(x)[:, [0, 1, 3]], atol=0.05)


def test_bad_format_and_uncalibrated_model_raise(tiny, tmp_path):
    gm, layers, qmodel = tiny
    with pytest.raises(UserError, match="format"):
        export_model(qmodel, inputs(1, 18), "tflite", tmp_path / "m.onnx")
    fresh = build_quant_model(gm, layers, MIXED, QuantSpec())
    with pytest.raises(UserError, match="calibrat"):
        export_model(fresh, inputs(1, 18), "qonnx", tmp_path / "m.onnx")
    with pytest.raises(UserError, match="format"):
        verify_export(tmp_path / "m.onnx", "onnx", qmodel, inputs(4, 18))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_export_leaves_no_file(tiny, tmp_path, monkeypatch):
    _, _, qmodel = tiny
    dest = tmp_path / "model.onnx"

    def interrupted(model, example, export_path, **kwargs):
        with open(export_path, "wb") as f:
            f.write(b"half an onnx file")
        raise KeyboardInterrupt

    monkeypatch.setattr(export_mod, "export_qonnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(qmodel, inputs(1, 19), "qonnx", dest)
    assert list(tmp_path.iterdir()) == []

    dest.write_bytes(b"previous export")
    with pytest.raises(KeyboardInterrupt):
        export_model(qmodel, inputs(1, 19), "qonnx", dest)
    assert dest.read_bytes() == b"previous export"
    assert list(tmp_path.iterdir()) == [dest]


class PadShortcutNet(nn.Module):
    """ResNet-20's option-A shortcut: subsample + channel zero-padding (F.pad) into an add."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        shortcut = nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 2, 3))
        x = torch.relu(self.conv(x) + shortcut)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize("fmt", FORMATS)
def test_pad_shortcut_model_exports_and_verifies_in_batches(fmt, tmp_path):
    torch.manual_seed(0)
    gm = torch.fx.symbolic_trace(PadShortcutNet().eval())
    layers = build_layer_table(gm, INPUT_SHAPE)
    allocation = {"conv": (4, 5), "fc": (6, 4)}
    qmodel = build_quant_model(gm, layers, allocation, QuantSpec(weight_po2=True, act_po2=True))
    calibrate(qmodel, inputs(64, 20))
    export_model(qmodel, inputs(1, 21), fmt, tmp_path / "pad.onnx")
    result = verify_export(tmp_path / "pad.onnx", fmt, qmodel, inputs(40, 22), allocation=allocation, batch_size=16)
    assert result.bits_in_graph == allocation
    assert result.ok, result.mismatches


def test_qcdq_biases_are_already_int32(exported):
    """ONNX Runtime rewrites a float bias between DequantizeLinear'd inputs and weights to
    int32 (WeightBiasQuantization); the file must already hold the model's own int32 bias."""
    model = onnx.load(str(exported["qcdq"]))
    producer = _producer(model)
    integer_convs = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        srcs = [producer.get(i) for i in node.input[:2]]
        if all(s is not None and s.op_type == "DequantizeLinear" for s in srcs):
            bias = producer[node.input[2]]
            assert bias.op_type == "DequantizeLinear", node.name
            assert _value(model, bias.input[0]).dtype == np.int32
            integer_convs += 1
    assert integer_convs == 4


@pytest.mark.parametrize("fmt", FORMATS)
def test_layers_are_matched_by_identity_not_position(tmp_path, fmt):
    """torchvision's ResNet: the ONNX exporter orders each downsample convolution apart from the
    traced graph, so pairing graph nodes with layers by position reads the wrong layer's bits."""
    from infoq_deploy.importing.deployable import deployable
    from infoq_deploy.importing.sources import load_model
    from infoq_deploy.verify.check import OnnxGraph, graph_bits, match_layers

    model = deployable(load_model("torchvision:resnet18", input_shape=(3, 32, 32)))
    choices = [(8, 8), (4, 8), (6, 4), (5, 6), (3, 8), (7, 5)] if fmt == "qonnx" else [(8, 8), (4, 8), (6, 4), (5, 8)]
    bits = {layer.name: choices[i % len(choices)] for i, layer in enumerate(model.layers)}
    qmodel = build_quant_model(model.graph, model.layers, bits, QuantSpec())
    calibrate(qmodel, torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    path = tmp_path / "r18.onnx"
    export_model(qmodel, torch.zeros(1, 3, 32, 32), fmt, path)
    graph = onnx.load(str(path))
    pairs, problems = match_layers(OnnxGraph(graph), fmt, qmodel)
    calls = [name for _, name, _ in pairs]
    assert problems == [] and sorted(calls) == sorted(bits)
    if fmt == "qonnx":  # qonnx's cleanup sorts the graph anew; the QCDQ file keeps the traced order
        traced = [layer.name for layer in sorted(model.layers, key=lambda l: l.order)]
        assert calls != traced, "the graph kept the traced order, so this test proves nothing; pick another model"
    found, problems = graph_bits(graph, fmt, qmodel)
    assert problems == [] and found == bits


def test_near_ties_are_set_aside_and_real_flips_still_count():
    """A random-weight model's logits are nearly equal: their argmax flips with float rounding,
    which says nothing about the graph. Decisive inputs still judge it."""
    from infoq_deploy.verify.check import top1_agreement

    rng = np.random.default_rng(0)
    tol = 1e-3
    tied = rng.normal(0, 1e-5, size=(50, 10))  # every top-2 margin far below 2 x tol
    flipped = tied[:, ::-1].copy()  # argmax moves on nearly every input
    agreement, judged_on, ties = top1_agreement(tied, flipped, tol)
    assert agreement is None and judged_on == 0 and ties > 40

    clear = np.zeros((50, 10))
    clear[np.arange(50), rng.integers(0, 10, 50)] = 1.0  # margin 1 >> 2 x tol
    out = clear.copy()
    out[:5] = np.roll(out[:5], 1, axis=1)  # five real disagreements
    agreement, judged_on, ties = top1_agreement(clear, out, tol)
    assert judged_on == 50 and ties == 0 and agreement == pytest.approx(0.9)

    both = np.concatenate([tied, clear])
    agreement, judged_on, ties = top1_agreement(both, np.concatenate([flipped, clear]), tol)
    assert agreement == 1.0 and judged_on == 50 and ties > 40


def test_tolerance_allows_what_float_rounding_alone_does_to_the_model(tiny, exported):
    """The model run in float64 differs from itself in float32 by the boundary flips two runtimes
    make; the tolerance allows twice that, measured on a copy (the model stays float32)."""
    _, _, qmodel = tiny
    x = inputs(100, 23)
    result = verify_export(exported["qcdq"], "qcdq", qmodel, x, allocation=MIXED)
    assert result.rounding_noise is not None
    assert 0 <= result.rounding_noise < result.quant_error
    assert result.rounding_noise <= result.rounding_max
    assert result.tolerance >= 2 * result.rounding_noise
    assert result.tolerance >= 0.5 * result.quant_error
    assert all(p.dtype == torch.float32 for p in qmodel.parameters())
    assert result.ok


def test_rounding_noise_is_zero_on_a_model_float32_computes_exactly():
    """Integer-valued weights and inputs: float32 and float64 agree exactly, so nothing is allowed for it."""
    from infoq_deploy.verify.check import _rounding_noise

    model = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(12.0).reshape(3, 4))
        model[0].bias.zero_()
    x = torch.arange(8.0).reshape(2, 4)
    with torch.no_grad():
        ref = model(x).numpy()
    assert _rounding_noise(model, x, ref, 2) == (0.0, 0.0)
    shifted = ref.copy()
    shifted[0, 0] += 3.0
    assert _rounding_noise(model, x, shifted, 2) == pytest.approx((0.5, 3.0))


def test_a_flip_within_what_rounding_moved_one_logit_is_set_aside_and_beyond_it_counts():
    """Boundary flips move single inputs far more than the mean (a random EfficientNet-B0: most
    inputs bit-identical, one moved past its top-2 margin; bench/bench_boundary_flip.py): a flip
    within twice the largest single-logit move float rounding made is not judged; past it, it is."""
    from infoq_deploy.verify.check import top1_agreement

    ref = np.zeros((20, 10))
    ref[:, 0], ref[:, 1] = 1.0, 0.7  # top-2 margin 0.3 on every input
    out = ref.copy()
    out[0, 1] = 1.2  # one input flips
    tol = 0.07  # what the mean allows: 0.3 > 2 x 0.07, so the flip counts
    assert top1_agreement(ref, out, tol) == (pytest.approx(0.95), 20, 0)
    assert top1_agreement(ref, out, tol, spread=0.27) == (None, 0, 1)  # rounding moved a logit by 0.27
    assert top1_agreement(ref, out, tol, spread=0.1) == (pytest.approx(0.95), 20, 0)  # 0.3 > 2 x 0.1
