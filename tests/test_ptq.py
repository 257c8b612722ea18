"""Post-training quantization choices (--ptq minmax|mse|gptq, --bias-correction).

The reference rule is tested on its own; the algorithms on the bundled Fashion-MNIST CNN
(trained weights, committed data), where their claims are about real errors."""

from __future__ import annotations

import copy

import dataclasses
import json

import onnx
import pytest
import torch

from infoq_deploy import stages
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.quantizer import QuantSpec, RangeObserver, act_range, quantize_weight, weight_threshold
from infoq_deploy.profile.mse import calibrate_act_ranges
from infoq_deploy.quantize.brevitas_model import act_quant_params
from infoq_deploy.quantize.file import ModelSource, load_quantized, save_quantized
from infoq_deploy.quantize.ptq import PtqConfig


@pytest.fixture(scope="module")
def fashion():
    model = stages.load_model(stages.DEFAULT_MODEL)
    plan = stages.plan_datasets(model.preprocess, data=stages.DEFAULT_DATA, eval_data=stages.DEFAULT_EVAL_DATA)
    return model, plan


def _docs(model, plan, rule: str, budget: str = "3bit") -> tuple:
    target = stages.load_target("fpga-int").with_scale_rule(rule)
    table = stages.profile(model, target, plan.calibration, "mse")
    return target, table, stages.allocation_document(table, target, [budget])


@pytest.fixture(scope="module")
def quantized(fashion):
    """The same 3-bit allocation quantized by each algorithm, without evaluation."""
    model, plan = fashion
    plan = dataclasses.replace(plan, evaluation=None)
    out = {}
    for rule, cfgs in (("minmax", [PtqConfig("minmax", False), PtqConfig("gptq", False), PtqConfig("gptq", True)]),
                       ("mse", [PtqConfig("mse", False), PtqConfig("mse", True)])):
        target, _, doc = _docs(model, plan, rule)
        for cfg in cfgs:
            out[cfg] = stages.quantize(model, target, doc, plan, ModelSource.of(stages.DEFAULT_MODEL), ptq=cfg)
    return out


def _logit_error(qm, fashion) -> float:
    """Mean squared logit error against the float model on the evaluation set."""
    model, plan = fashion
    x = plan.evaluation.x
    with torch.no_grad():
        return float(((qm.qmodel.eval()(x) - stages.deployable(model).graph(x)) ** 2).mean())


# ------------------------------------------------------------------ the reference rule


@pytest.mark.parametrize("po2", [False, True], ids=["float-scale", "po2"])
def test_mse_thresholds_never_lose_to_minmax_and_win_at_low_bits(fashion, po2):
    model, _ = fashion
    weights = [m.weight.detach() for m in stages.deployable(model).graph.modules() if hasattr(m, "weight")
               and m.weight is not None and m.weight.dim() > 1]
    won = 0
    for w in weights:
        for bits in (2, 3, 4, 8):
            errs = {}
            for rule in ("minmax", "mse"):
                q = quantize_weight(w, bits, QuantSpec(weight_po2=po2, scale_rule=rule))
                errs[rule] = ((q - w) ** 2).reshape(w.shape[0], -1).sum(dim=1)
            assert torch.all(errs["mse"] <= errs["minmax"] * (1 + 1e-6))
            won += int(bits <= 4 and float(errs["mse"].sum()) < 0.95 * float(errs["minmax"].sum()))
    assert won >= len(weights)  # at least one low bit-width per layer gains over 5%


def test_po2_mse_threshold_is_a_power_of_two_at_or_below_minmax():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3)
    lower = 0
    for bits in (2, 3, 4):
        qmax = 2 ** (bits - 1) - 1
        above = torch.exp2(torch.ceil(torch.log2(weight_threshold(w, bits, QuantSpec(weight_po2=True)).flatten() / qmax)))
        scale = weight_threshold(w, bits, QuantSpec(weight_po2=True, scale_rule="mse")).flatten() / qmax
        assert torch.equal(torch.exp2(torch.round(torch.log2(scale))), scale)
        assert torch.all(scale <= above)
        lower += int((scale < above).sum())
    assert lower > 0  # not always the power of two above the max


def test_activation_mse_threshold_clips_an_outlier_and_is_batch_independent():
    torch.manual_seed(0)
    x = torch.relu(torch.randn(20000))
    x[5] = 60.0
    spec = QuantSpec(scale_rule="mse")
    whole = act_range(x, spec)
    obs = RangeObserver(spec)
    for chunk in x.split(3000):
        obs.observe(chunk)
    obs.start_histogram()
    for chunk in x.split(7000):
        obs.observe(chunk)
    assert obs.result() == whole
    assert whole.absmax == 60.0 and not whole.signed
    assert whole.threshold(4, spec) < 30.0  # clipping the one outlier beats 16 levels over [0, 60]
    assert whole.threshold(16, spec) > whole.threshold(4, spec)
    assert whole.threshold(4, QuantSpec()) == 60.0  # minmax reads the max


def test_profiler_and_brevitas_choose_the_same_activation_thresholds(fashion, quantized):
    model, plan = fashion
    qm = quantized[PtqConfig("mse", False)]
    spec = qm.qmodel.meta["infoq_spec"]
    assert spec.scale_rule == "mse"
    deployed = stages.deployable(model)
    ranges = calibrate_act_ranges(deployed.graph, deployed.layers, plan.calibration.x, spec)
    from infoq_deploy.core.quantizer import act_scale

    checked = 0
    for layer in deployed.layers:
        proxy = qm.qmodel.get_submodule(layer.name).input_quant
        if not proxy.is_quant_enabled:
            continue
        scale, bits = act_quant_params(proxy)
        assert float(scale) == act_scale(ranges[layer.name], bits, spec), layer.name
        checked += 1
    assert checked == len(deployed.layers)


# ------------------------------------------------------------------ the algorithms


def test_gptq_lowers_the_output_error_and_keeps_scales_and_bits(fashion, quantized):
    rtn, gptq = quantized[PtqConfig("minmax", False)], quantized[PtqConfig("gptq", False)]
    assert gptq.bits == rtn.bits
    changed = 0
    for layer in stages.deployable(fashion[0]).layers:
        a, b = rtn.qmodel.get_submodule(layer.name), gptq.qmodel.get_submodule(layer.name)
        assert torch.equal(a.quant_weight().scale, b.quant_weight().scale), layer.name
        changed += int(not torch.equal(a.quant_weight().int(), b.quant_weight().int()))
    assert changed >= 5
    assert _logit_error(gptq, fashion) < 0.8 * _logit_error(rtn, fashion)
    assert set(gptq.timings) >= {"gptq", "calibrate", "quantize"}


def test_gptq_walk_rounds_exactly_as_brevitas_loop(fashion, quantized):
    """`gptq.apply` walks the graph once instead of running Brevitas's documented loop (the
    calibration set through the model once per layer): the same integer weights, bit for bit."""
    from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer

    from infoq_deploy.quantize import gptq

    model, plan = fashion
    rtn = quantized[PtqConfig("minmax", False)]
    walked, looped = copy.deepcopy(rtn.qmodel), copy.deepcopy(rtn.qmodel)
    x = plan.calibration.x
    gptq.apply(walked, x, batch_size=100)
    gptq.apply(looped, x, batch_size=100, walk=False)
    compared = 0
    for name, a in walked.named_modules():
        if isinstance(a, QuantWeightBiasInputOutputLayer) and a.weight_quant.is_quant_enabled:
            b = looped.get_submodule(name)
            assert torch.equal(a.quant_weight().int(), b.quant_weight().int()), name
            compared += 1
    assert compared == len(stages.deployable(model).layers)
    # and GPTQ did round: the weights are not round-to-nearest's
    assert any(not torch.equal(a.quant_weight().int(), rtn.qmodel.get_submodule(n).quant_weight().int())
               for n, a in walked.named_modules() if isinstance(a, QuantWeightBiasInputOutputLayer))


def _layer_mean_shift(qm, fashion) -> float:
    """Mean over integer layers of |per-channel output mean, quantized layer minus float layer|,
    each fed the float model's own input to it on the calibration set (what Brevitas corrects)."""
    model, plan = fashion
    deployed = stages.deployable(model)
    seen = {}
    handles = [deployed.graph.get_submodule(l.name).register_forward_hook(
        lambda m, a, out, n=l.name: seen.__setitem__(n, (a[0].detach().clone(), out.detach().clone())))  # ReLUs work in place
        for l in deployed.layers]
    with torch.no_grad():
        deployed.graph(plan.calibration.x)
    for h in handles:
        h.remove()
    shifts = []
    with torch.no_grad():
        for name, (x, ref) in seen.items():
            q = qm.qmodel.get_submodule(name).eval()(x)
            dims = [d for d in range(ref.dim()) if d != 1] if ref.dim() > 2 else [0]
            shifts.append(float((q - ref).mean(dim=dims).abs().mean()))
    return sum(shifts) / len(shifts)


def test_bias_correction_removes_each_layers_mean_shift(fashion, quantized):
    plain, corrected = quantized[PtqConfig("mse", False)], quantized[PtqConfig("mse", True)]
    assert _layer_mean_shift(corrected, fashion) < 0.1 * _layer_mean_shift(plain, fashion)
    assert "bias_correction" in corrected.timings


@pytest.mark.parametrize("cfg", [PtqConfig("minmax", False), PtqConfig("mse", True), PtqConfig("gptq", True)],
                         ids=lambda c: c.describe().replace(" ", ""))
def test_each_choice_exports_verifies_and_says_what_made_it(fashion, quantized, cfg, tmp_path):
    _, plan = fashion
    qm = quantized[cfg]
    path = tmp_path / "m.onnx"
    stages.export_quantized(qm, path)
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert json.loads(props["infoq_deploy.ptq"]) == cfg.to_json()
    verified = stages.verify_quantized(path, qm, plan.evaluation, verify_size=200, consumers=())
    assert verified["result"]["ok"], verified["result"]
    save_quantized(tmp_path / "q.pt", qm)
    again = load_quantized(tmp_path / "q.pt")
    assert again.ptq == cfg.to_json() and again.state_sha256() == qm.state_sha256()
    assert again.target.scale_rule == cfg.scale_rule


def test_a_table_is_refused_for_another_threshold_rule(fashion):
    model, plan = fashion
    target, table, doc = _docs(model, plan, "minmax", "4bit")
    assert table.meta["scale_rule"] == "minmax" and doc["sensitivity"]["scale_rule"] == "minmax"
    with pytest.raises(UserError, match="profiled with minmax thresholds, but the --ptq given deploys mse"):
        stages.allocate_table(table, target.with_scale_rule("mse"), ["4bit"])
    with pytest.raises(UserError, match="profiled with minmax thresholds"):
        stages.quantize(model, target, doc, plan, ModelSource.of(stages.DEFAULT_MODEL), ptq=PtqConfig("mse", False))


def test_the_default_rounds_to_nearest_only_the_layers_gptq_is_short_of_samples_for(fashion):
    """Left at its default, --ptq runs GPTQ on the layers the calibration set covers and rounds
    the others to nearest (the same minmax thresholds the table was profiled for), and says so;
    an explicit gptq is refused."""
    model, plan = fashion
    target, _, doc = _docs(model, plan, "minmax")
    source = ModelSource.of(stages.DEFAULT_MODEL)

    def subset(n):
        calib = dataclasses.replace(plan.calibration, x=plan.calibration.x[:n], y=plan.calibration.y[:n])
        return dataclasses.replace(plan, calibration=calib, evaluation=None)

    short = subset(32)  # fc has 64 inputs per output, one Hessian row per sample; the convs are covered
    qm = stages.quantize(model, target, doc, short, source, ptq=PtqConfig(chosen=False))
    assert qm.ptq == {**PtqConfig("gptq", True).to_json(), "rounded_to_nearest": ["fc"]}
    assert any("GPTQ (the default --ptq) needs at least 64 calibration samples" in n
               and "left 1 rounded to nearest (fc)" in n for n in qm.notes), qm.notes
    rtn = stages.quantize(model, target, doc, short, source, ptq=PtqConfig("minmax", True))
    full_gptq = stages.quantize(model, target, doc, short, source, ptq=PtqConfig("gptq", True, gptq_skip=("fc",)))
    assert full_gptq.state_sha256() == qm.state_sha256()
    fc = lambda m: m.qmodel.get_submodule("fc").quant_weight().int()  # noqa: E731
    assert torch.equal(fc(qm), fc(rtn)), "the skipped layer is rounded to nearest"
    conv = next(l.name for l in qm.model.layers if l.kind == "conv")
    w = lambda m: m.qmodel.get_submodule(conv).quant_weight().int()  # noqa: E731
    assert not torch.equal(w(qm), w(rtn)), "the covered layers are rounded by GPTQ"
    with pytest.raises(UserError, match="--ptq gptq needs at least 64 calibration samples"):
        stages.quantize(model, target, doc, short, source, ptq=PtqConfig("gptq", True))

    full = stages.quantize(model, target, doc, dataclasses.replace(plan, evaluation=None), source,
                           ptq=PtqConfig(chosen=False))
    assert full.ptq == PtqConfig("gptq", True).to_json() and not any("GPTQ" in n for n in full.notes)


class _ChannelsLast(torch.nn.Module):
    """ConvNeXt's pattern: a Linear layer over a 4-D channels-last map."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.mix = torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        y = torch.relu(self.conv(x)).permute(0, 2, 3, 1)
        y = torch.relu(self.mix(y)).permute(0, 3, 1, 2)
        return self.head(y.flatten(1))


def test_gptq_and_bias_correction_take_a_linear_layer_on_a_4d_channels_last_input():
    from infoq_deploy.importing.layers import build_layer_table
    from infoq_deploy.quantize import bias_correction, gptq
    from infoq_deploy.quantize.brevitas_model import build_quant_model, calibrate

    torch.manual_seed(0)
    gm = torch.fx.symbolic_trace(_ChannelsLast().eval())
    layers = build_layer_table(gm, (3, 8, 8))
    bits = {layer.name: (3, 8) for layer in layers}
    x = torch.randn(64, 3, 8, 8)
    models = []
    for rounding in ("nearest", "gptq"):
        qmodel = build_quant_model(gm, layers, bits, QuantSpec())
        calibrate(qmodel, x)
        if rounding == "gptq":
            gptq.apply(qmodel, x)  # Brevitas alone: "shape [-1, 24] is invalid" (it sums 8 + 16)
        models.append(qmodel.eval())
    rtn, rounded = models
    before = rounded.mix.bias.detach().clone()
    bias_correction.apply(rounded, x)  # Brevitas alone: "size of tensor a (16) must match ... (8)"
    assert rounded.mix.bias.shape == before.shape and not torch.equal(rounded.mix.bias, before)
    assert not torch.equal(rtn.mix.quant_weight().int(), rounded.mix.quant_weight().int())
    with torch.no_grad():
        ref = gm(x)
        assert ((rounded(x) - ref) ** 2).mean() < ((rtn(x) - ref) ** 2).mean()


def test_gptq_walks_a_graph_that_calls_an_activation_quantizer_twice():
    """A quantizer shared by two inputs (ViT's residual adds) does not stop the one-pass walk,
    and the walk still rounds exactly as Brevitas's loop; a weight layer called twice does."""
    import brevitas.nn as qnn
    from brevitas.graph.calibrate import calibration_mode
    from torch import nn

    from infoq_deploy.quantize import gptq

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.act, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Identity(), nn.Conv2d(8, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv1(x)
            return self.conv2(self.act(y) + self.act(torch.relu(y)))

    torch.manual_seed(0)
    gm = torch.fx.symbolic_trace(Net())
    gm.conv1 = qnn.QuantConv2d(3, 8, 3, padding=1, weight_bit_width=3)
    gm.act = qnn.QuantIdentity()
    gm.conv2 = qnn.QuantConv2d(8, 4, 3, padding=1, weight_bit_width=3)
    x = torch.randn(64, 3, 8, 8)
    with torch.no_grad(), calibration_mode(gm):
        gm(x)
    assert gptq._walkable(gm)
    walked, looped = copy.deepcopy(gm), copy.deepcopy(gm)
    gptq.apply(walked, x, batch_size=16)
    gptq.apply(looped, x, batch_size=16, walk=False)
    for name in ("conv1", "conv2"):
        assert torch.equal(walked.get_submodule(name).quant_weight().int(), looped.get_submodule(name).quant_weight().int())
    assert not torch.equal(walked.conv2.quant_weight().int(), gm.conv2.quant_weight().int())  # GPTQ did round

    shared = torch.fx.symbolic_trace(Net())
    shared.graph.call_module("conv1", (next(iter(shared.graph.nodes)),))  # a second call of a weight layer
    shared.conv1 = gm.conv1
    assert not gptq._walkable(shared)


@pytest.mark.parametrize("kw", [
    dict(in_channels=8, out_channels=16, kernel_size=1),                                # 1x1: no im2col
    dict(in_channels=8, out_channels=16, kernel_size=1, stride=2),
    dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8),           # depthwise
    dict(in_channels=8, out_channels=8, kernel_size=5, stride=2, padding=2, groups=8),
    dict(in_channels=8, out_channels=12, kernel_size=3, padding=2, dilation=2, groups=4),
    dict(in_channels=8, out_channels=6, kernel_size=(3, 1), padding=(1, 0)),
])
def test_gptq_conv_hessian_is_brevitas_bit_for_bit(kw):
    """Our running Hessian for a convolution (one im2col, one scaling copy) is Brevitas's (unfoldNd
    per group, stacked, scaled, copied) bit for bit, over batches of different sizes, with the
    input's quantizer metadata kept as Brevitas keeps it."""
    import types

    import brevitas.nn as qnn
    from brevitas.graph.calibrate import calibration_mode
    from brevitas.graph.gptq import GPTQ
    from brevitas.quant import Int8ActPerTensorFloat

    from infoq_deploy.quantize import gptq

    torch.manual_seed(0)
    layer = qnn.QuantConv2d(**kw, weight_bit_width=4, input_quant=Int8ActPerTensorFloat)
    batches = [torch.randn(n, 8, 9, 11) for n in (5, 3, 7)]
    with torch.no_grad(), calibration_mode(layer):
        layer(torch.cat(batches))
    layer.eval()
    assert gptq._unfoldable(layer)
    ours, theirs = gptq._GPTQ(layer, "c", True, 1, False, 100), GPTQ(layer, "c", True, 1, False, 100)
    current = types.SimpleNamespace(layer_names=set())
    with torch.no_grad():
        for x in batches:
            ours.compute_iterative_covariance(layer, (x,), current)
            theirs.compute_iterative_covariance(layer, (x,), current)
    assert ours.nsamples == theirs.nsamples
    assert torch.equal(ours.H, theirs.H)
    assert torch.equal(ours.quant_metadata.scale, theirs.quant_metadata.scale)


def test_gptq_leaves_same_padding_to_brevitas():
    import brevitas.nn as qnn

    from infoq_deploy.quantize import gptq

    assert not gptq._unfoldable(qnn.QuantConv2d(4, 4, 3, padding="same", weight_bit_width=4))
    assert not gptq._unfoldable(qnn.QuantLinear(4, 4, bias=False, weight_bit_width=4))
