"""InfoQ profiler: mechanics, determinism, cache, SIGKILL resume, suffix runner, bad input.

The tiny CNN below has random (seeded) weights: these tests check mechanics only and
make no accuracy claims. When the bundled Fashion-MNIST CNN and its data are installed,
one test also profiles it end to end on a small subset.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from infoq_deploy.core.errors import UserError
from infoq_deploy.core.quantizer import QuantSpec
from infoq_deploy.importing.fold_bn import FoldBatchNorm
from infoq_deploy.importing.layers import build_layer_table
from infoq_deploy.importing.model import ImportedModel, Preprocess
from infoq_deploy.profile.mse import calibrate_act_ranges
from infoq_deploy.profile.suffix_runner import Perturb, SuffixRunner, split_batches

SHAPE = (1, 12, 12)
CLASSES = 4


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: one intra-op thread is several times faster than two on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Tiny(nn.Module):
    """Conv+BN, a residual add, a depthwise-separable pair, global pooling, a classifier."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x):
        x = self.relu(self.b1(self.c1(x)))
        x = self.relu(x + self.c3(F.relu(self.c2(x))))
        x = F.relu(self.pw(F.relu(self.dw(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def tiny_model(poison: str | None = None) -> ImportedModel:
    torch.manual_seed(0)
    net = Tiny()
    with torch.no_grad():
        net.b1.running_mean.uniform_(-0.1, 0.1)
        net.b1.running_var.uniform_(0.5, 1.5)
    net.eval()
    with torch.no_grad():
        # centre and spread the random logits so the predictions use every class
        logits = net(tiny_data().x)
        net.fc.weight.mul_(3.0 / logits.std(0).mean())
        net.fc.bias.sub_(net(tiny_data().x).mean(0))
        if poison is not None:
            getattr(net, poison).weight.fill_(3e38)
    gm = torch.fx.symbolic_trace(net)
    h = hashlib.sha256()
    for k, v in net.state_dict().items():
        h.update(k.encode() + v.numpy().tobytes())
    return ImportedModel(
        spec="test:tiny",
        graph=gm,
        layers=build_layer_table(gm, SHAPE),
        preprocess=Preprocess(SHAPE, (0.0,), (1.0,), num_classes=CLASSES),
        fingerprint=h.hexdigest(),
    )


@dataclass
class FakeData:
    x: torch.Tensor
    y: torch.Tensor | None
    classes: list | None = None
    source: str = "test data"
    sha256: str = ""

    def __post_init__(self):
        if not self.sha256:
            h = hashlib.sha256(self.x.numpy().tobytes())
            if self.y is not None:
                h.update(self.y.numpy().tobytes())
            self.sha256 = h.hexdigest()


def tiny_data(n: int = 160, labels: bool = False) -> FakeData:
    """Smooth random images (blobs), so pooling-based embeddings carry signal."""
    g = torch.Generator().manual_seed(1)
    coarse = torch.randn(n, 1, 3, 3, generator=g)
    x = F.interpolate(coarse, size=SHAPE[1:], mode="bilinear", align_corners=False)
    x = x + 0.1 * torch.randn(n, *SHAPE, generator=g)
    y = torch.arange(n) % CLASSES if labels else None
    return FakeData(x=x.float(), y=y)


@dataclass
class Bits:
    bits: list


@dataclass
class FakeTarget:
    """What the profiler reads from a target (name, bits, quant_spec)."""

    name: str = "test-target"
    weights: Bits = field(default_factory=lambda: Bits([2, 4, 8]))
    activations: Bits = field(default_factory=lambda: Bits([3, 8, 32]))
    spec: QuantSpec = field(default_factory=lambda: QuantSpec(weight_per_channel=True, weight_po2=True, act_po2=True))

    def quant_spec(self) -> QuantSpec:
        return self.spec


def run_profile(cache_dir, **kw):
    from infoq_deploy.profile.infoq import profile_infoq

    kw.setdefault("n_proj", 8)
    model = kw.pop("model", None) or tiny_model()
    data = kw.pop("data", None) or tiny_data()
    target = kw.pop("target", None) or FakeTarget()
    return profile_infoq(model, target, data, cache_dir=cache_dir, progress=False, **kw)


def scores(table) -> dict:
    return {"w": table.weights, "a": table.activations}


# ------------------------------------------------------------------ suffix runner


def test_suffix_runner_matches_full_forward_at_every_cut():
    model = tiny_model()
    gm = FoldBatchNorm().apply(model.graph)
    layers = build_layer_table(gm, SHAPE)
    x = tiny_data(70).x
    with torch.no_grad():
        ref = gm(x)
    runner = SuffixRunner(gm, layers, base_bits=32)
    frontier, at = runner.start(split_batches(x, 25)), 0
    assert any(len(runner.frontier_names(runner.cut(l.name))) > 1 for l in layers), "no residual cut exercised"
    for layer in layers:
        cut = runner.cut(layer.name)
        frontier, at = runner.advance(frontier, at, cut), cut
        out = runner.run(frontier, cut, {runner.result_node: None})[runner.result_node]
        assert (out - ref).abs().max().item() < 1e-5, layer.name

    # quantized: a suffix from any cut equals the full quantized run, perturbed or not
    spec = QuantSpec(weight_po2=True, act_po2=True)
    q = SuffixRunner(gm, layers, spec, calibrate_act_ranges(gm, layers, x, spec), 8)
    start = q.start(split_batches(x, 25))
    frontier, at = start, 0
    for layer in layers:
        cut = q.cut(layer.name)
        frontier, at = q.advance(frontier, at, cut), cut
        for p in (None, Perturb(layer.name, "w", 2), Perturb(layer.name, "a", 3)):
            full = q.run(start, 0, {q.result_node: None}, p)[q.result_node]
            part = q.run(frontier, cut, {q.result_node: None}, p)[q.result_node]
            assert (full - part).abs().max().item() < 1e-5, (layer.name, p)
    # the frontier was not mutated by the runs (in-place ReLU switched off)
    again = q.run(q.start(split_batches(x, 25)), 0, {q.result_node: None})[q.result_node]
    assert torch.equal(again, q.run(start, 0, {q.result_node: None})[q.result_node])


def test_two_perturbations_together_are_both_layers_at_once():
    """A pairwise run (InfoQ --pairwise) quantizes two layers in one pass: the same as a runner
    whose baseline already holds the first layer at that width, perturbed at the second."""
    model = tiny_model()
    gm = FoldBatchNorm().apply(model.graph)
    layers = build_layer_table(gm, SHAPE)
    x = tiny_data(70).x
    spec = QuantSpec(weight_po2=True, act_po2=True)
    ranges = calibrate_act_ranges(gm, layers, x, spec)
    q = SuffixRunner(gm, layers, spec, ranges, 8)
    start = q.start(split_batches(x, 25))
    first, second = Perturb("c2", "w", 2), Perturb("pw", "a", 3)
    cut = q.cut("c2")
    joint = q.run(q.advance(start, 0, cut), cut, {q.result_node: None}, (first, second))[q.result_node]
    ref = SuffixRunner(gm, layers, spec, ranges, 8)
    ref._w_base["c2"] = ref._qweight("c2", 2)
    expected = ref.run(ref.start(split_batches(x, 25)), 0, {ref.result_node: None}, second)[ref.result_node]
    assert torch.equal(joint, expected)
    for alone in (first, second):
        assert not torch.equal(joint, q.run(start, 0, {q.result_node: None}, alone)[q.result_node])


# ------------------------------------------------------------------ the table


def test_table_complete_finite_and_zero_at_8_bits(tmp_path):
    table = run_profile(tmp_path / "cache", plots_dir=tmp_path / "plots")
    names = [layer.name for layer in table.layers]
    assert names == ["c1", "c2", "c3", "dw", "pw", "fc"]
    for name in names:
        assert sorted(table.weights[name]) == [2, 4, 8]
        assert sorted(table.activations[name]) == [3, 8, 32]
        assert table.weights[name][8] == 0.0 and table.activations[name][8] == 0.0
        assert table.activations[name][32] == 0.0
        for v in [*table.weights[name].values(), *table.activations[name].values()]:
            assert np.isfinite(v) and v >= 0.0
    assert any(table.weights[n][2] > 0 for n in names)
    meta = table.meta
    assert meta["method"] == "infoq"
    assert meta["labels"] == "predictions"
    s = meta["settings"]
    assert (s["n_proj"], s["k"], s["seed"], s["calib_size"], s["baseline_bits"]) == (8, 3, 0, 160, 8)
    assert s["encoder"]["name"] == "pool-pca" and s["use_inverse_bits"] is True
    assert meta["observers"] and all(o["kind"] in ("XL", "LY") for o in meta["observers"])
    assert set(meta["timings"]) >= {"total_s", "forward_s", "estimator_s"}
    assert "correlation_fallback" in meta and meta["model_fingerprint"] and meta["data_hash"]
    assert {c["role"] for c in meta["candidates"]} == {"layer", "global-pool"}
    for png in ("sensitivity.png", "observers.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    # the saved table loads back as the same scores
    from infoq_deploy.profile.table import load_sensitivity

    table.save(tmp_path / "t.json")
    back = load_sensitivity(tmp_path / "t.json")
    assert scores(back) == scores(table)


def test_deterministic_and_inverse_bits_ablation(tmp_path):
    a = run_profile(tmp_path / "a", data=tiny_data(labels=True))
    b = run_profile(tmp_path / "b", data=tiny_data(labels=True))
    assert scores(a) == scores(b)
    assert a.meta["observers"] == b.meta["observers"] and a.meta["labels"] == "true"
    c = run_profile(tmp_path / "c", data=tiny_data(labels=True), use_inverse_bits=False)
    for name, d in a.weights.items():
        for bits, v in d.items():
            assert v == pytest.approx(c.weights[name][bits] / bits if bits < 8 else 0.0, rel=1e-12, abs=0)


def test_cache_hit_is_fast(tmp_path):
    from infoq_deploy.profile.infoq import profile_infoq

    model, data, target = tiny_model(), tiny_data(), FakeTarget()
    first = run_profile(tmp_path, model=model, data=data, target=target)
    t = time.perf_counter()
    second = profile_infoq(model, target, data, n_proj=8, cache_dir=tmp_path, progress=False)
    assert time.perf_counter() - t < 0.5
    assert second.meta["cache_hit"] is True and scores(second) == scores(first)
    assert not list(tmp_path.glob("*.partial.json"))
    # any setting change is another key
    third = run_profile(tmp_path, seed=1)
    assert third.meta["cache_key"] != first.meta["cache_key"]


_CHILD = r"""
import sys, time
import torch
torch.set_num_threads(1)  # as the parent's tests run
sys.path.insert(0, {tests!r})
import test_profile_infoq as t
from infoq_deploy.profile import cache as profile_cache

orig = profile_cache.ProfileCache.save_partial
def slow_save(self, state):
    orig(self, state)
    if state.get("sweep"):
        time.sleep(30)  # the parent kills us here, mid-sweep
profile_cache.ProfileCache.save_partial = slow_save
t.run_profile({cache!r})
print("finished", flush=True)
"""


def test_sigkill_mid_sweep_resumes_to_the_same_table(tmp_path):
    cache = tmp_path / "killed"
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(tests=str(Path(__file__).parent), cache=str(cache)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial = None
    deadline = time.time() + 90
    try:
        while time.time() < deadline:
            found = list(cache.glob("*.partial.json"))
            if found:
                try:
                    state = json.loads(found[0].read_text())
                except ValueError:
                    state = {}
                if state.get("sweep"):
                    partial = state
                    break
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert partial is not None, proc.stderr.read().decode()[-2000:]
    assert proc.returncode == -signal.SIGKILL
    assert not list(cache.glob("*[0-9a-f].json")), "the table must not exist before the sweep ends"
    n_done = len(partial["sweep"])
    assert 0 < n_done < 6

    resumed = run_profile(cache)
    fresh = run_profile(tmp_path / "fresh")
    assert resumed.meta["resumed"] is True and fresh.meta["resumed"] is False
    assert scores(resumed) == scores(fresh)
    assert resumed.meta["observers"] == fresh.meta["observers"]
    assert resumed.meta["baseline"] == fresh.meta["baseline"]


# ------------------------------------------------------------------ bad input


def _one_sentence(exc: UserError) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg
    return msg


def test_bad_input_errors(tmp_path):
    with pytest.raises(UserError) as e:
        run_profile(tmp_path, data=tiny_data(10))
    assert "at least 20" in _one_sentence(e.value) and "got 10" in str(e.value)

    with pytest.raises(UserError) as e:
        run_profile(tmp_path, data=FakeData(x=torch.zeros(0, *SHAPE), y=None))
    assert "no images" in _one_sentence(e.value)

    d = tiny_data()
    d.y = torch.arange(len(d.x)) % 7
    with pytest.raises(UserError) as e:
        run_profile(tmp_path, data=d)
    assert "classes" in _one_sentence(e.value)

    with pytest.raises(UserError) as e:
        run_profile(tmp_path, data=FakeData(x=torch.zeros(40, 1, 10, 10), y=None))
    assert "(1, 12, 12)" in _one_sentence(e.value)

    bad = tiny_data()
    bad.x[3, 0, 2, 2] = float("nan")
    with pytest.raises(UserError) as e:
        run_profile(tmp_path, data=FakeData(x=bad.x, y=None))
    assert "NaN" in _one_sentence(e.value)

    with pytest.raises(UserError) as e:
        run_profile(tmp_path, model=tiny_model(poison="c2"))
    assert "layer c2" in _one_sentence(e.value)

    wrong = tiny_model()
    wrong.preprocess = Preprocess((2, 12, 12), (0.0, 0.0), (1.0, 1.0), num_classes=CLASSES)
    with pytest.raises(UserError):
        run_profile(tmp_path, model=wrong, data=FakeData(x=torch.zeros(40, 2, 12, 12), y=None))
    assert not list(tmp_path.glob("*.json")), "no table may be written for bad input"


# ------------------------------------------------------------------ bundled model


def _fashion():
    try:
        from infoq_deploy.core.targets import load_target
        from infoq_deploy.data.load import load_data
        from infoq_deploy.importing.sources import load_model

        model = load_model("zoo:fashion-cnn")
        data = load_data("builtin:fashion-mnist", model.preprocess, limit=200, seed=0)
        target = load_target("fpga-int")
    except (ImportError, UserError) as exc:
        pytest.skip(f"bundled Fashion-MNIST CNN or its data not available: {exc}")
    # the target's real quantizer, fewer bit-widths (time)
    return model, data, FakeTarget("fpga-int", Bits([2, 4, 8]), Bits([3, 8]), target.quant_spec())


def test_fashion_cnn_end_to_end(tmp_path):
    model, data, target = _fashion()
    table = run_profile(tmp_path, model=model, data=data, target=target)
    assert [l.name for l in table.layers] == list(table.weights) == list(table.activations)
    assert len(table.layers) == 7
    for name in table.weights:
        assert sorted(table.weights[name]) == [2, 4, 8] and sorted(table.activations[name]) == [3, 8]
        assert table.weights[name][8] == 0.0 and table.activations[name][8] == 0.0
        assert all(np.isfinite(v) and v >= 0 for v in [*table.weights[name].values(), *table.activations[name].values()])
    assert table.meta["observers"] and table.meta["labels"] == "true"


# ------------------------------------------------------------------ encoders


def test_default_embedding_is_deterministic_pca():
    from infoq_deploy.profile.embedding import embed

    x = tiny_data(100).x
    a, b = embed(x), embed(x.clone())
    assert a.values.shape == (100, 64) and np.array_equal(a.values, b.values)
    assert a.info["name"] == "pool-pca" and a.info["pool"] == [8, 8]
    # principal components: uncorrelated, variance non-increasing
    cov = np.cov(a.values.T)
    assert np.allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-8 * cov.max())
    assert np.all(np.diff(np.diag(cov)) <= 1e-9 * cov.max())


def test_pluggable_encoders(tmp_path):
    from infoq_deploy.profile.embedding import embed, encoder_identity

    x = tiny_data(40).x
    src = tmp_path / "enc.py"
    src.write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten())\n"
    )
    e = embed(x, f"{src}:build")
    ref = F.adaptive_avg_pool2d(x, 4).flatten(1).double().numpy()
    assert e.info["kind"] == "torch" and np.allclose(e.values, ref, atol=1e-6)
    assert "file_sha256" in encoder_identity(f"{src}:build")

    onnx_path = tmp_path / "enc.onnx"
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten()), (x[:2],), str(onnx_path),
                dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}},
            )
    except Exception as exc:  # the exporter is optional tooling here
        pytest.skip(f"torch.onnx.export unavailable: {exc}")
    e = embed(x, str(onnx_path))
    assert e.info["kind"] == "onnx" and np.allclose(e.values, ref, atol=1e-5)

    with pytest.raises(UserError):
        embed(x, str(tmp_path / "missing.onnx"))


# ------------------------------------------------------------------ --noise-floor


def test_noise_floor_scores_the_baseline_width_by_its_null_run(tmp_path):
    from infoq_deploy.profile.infoq import NULL_BITS, notes

    plain = run_profile(tmp_path / "plain", data=tiny_data(labels=True))
    floor = run_profile(tmp_path / "floor", data=tiny_data(labels=True), noise_floor=True)
    assert floor.meta["cache_key"] != plain.meta["cache_key"]  # a plain table is never served for it
    assert floor.meta["settings"]["noise_floor"] == {"null_bits": NULL_BITS}
    assert plain.meta["settings"]["noise_floor"] is None and "noise_floor" not in plain.meta
    nulls = floor.meta["noise_floor"]
    for what, table, base in (("w", floor.weights, plain.weights), ("a", floor.activations, plain.activations)):
        for name, d in table.items():
            # the narrower widths are the plain profile's, exactly: the null run disturbs nothing
            assert {b: v for b, v in d.items() if b < 8} == {b: v for b, v in base[name].items() if b < 8}
            assert d[8] == nulls[name][what] / 8 and np.isfinite(d[8]) and d[8] >= 0
            assert d.get(32, 0.0) == 0.0  # float is no change at all
    # the estimators answer even a change as small as the baseline's own rounding
    assert any(nulls[name]["w"] > 0 for name in nulls)
    assert any("noise-floor" in line for line in notes(floor))


def test_noise_floor_is_infoqs_setting_only():
    from infoq_deploy.profile import registry

    with pytest.raises(UserError, match="--noise-floor is a setting of --method infoq, not of mse"):
        registry.run("mse", tiny_model(), FakeTarget(), tiny_data(), noise_floor=True)


# ------------------------------------------------------------------ --label-term logits


def test_label_term_logits_needs_no_images_per_class(tmp_path):
    """ImageNet calibration sets hold one or a few images per class: the Ross estimator's
    label term cannot be estimated, the KSG one against the float logits can."""
    from infoq_deploy.profile.infoq import notes

    data = tiny_data(labels=True)
    y = torch.zeros(len(data.x), dtype=torch.long)
    y[-(CLASSES - 1):] = torch.arange(1, CLASSES)  # one image in each other class: one class at k + 1
    one_each = FakeData(x=data.x, y=y)
    with pytest.raises(UserError, match="--label-term logits"):
        run_profile(tmp_path / "labels", data=one_each)
    table = run_profile(tmp_path / "logits", data=one_each, label_term="logits")
    assert table.meta["settings"]["label_term"] == "logits"
    # about 16 images per cluster, no more clusters than the model has classes
    assert table.meta["settings"]["logit_clusters"] == min(CLASSES, len(data.x) // 16)
    assert "clusters of the float model's logits" in table.meta["settings"]["estimators"]["LY"]
    assert any("--label-term logits" in line for line in notes(table))
    for d in (*table.weights.values(), *table.activations.values()):
        assert all(np.isfinite(v) and v >= 0 for v in d.values())

    plain = run_profile(tmp_path / "plain", data=data)
    logits = run_profile(tmp_path / "plain_logits", data=data, label_term="logits")
    assert logits.meta["cache_key"] != plain.meta["cache_key"]  # never served the other's table
    base_p, base_l = plain.meta["baseline"]["smi"], logits.meta["baseline"]["smi"]
    # the input term is the same estimate on the same directions; only the label term changes
    assert {o: v["XL"] for o, v in base_p.items()} == {o: v["XL"] for o, v in base_l.items()}
    assert {o: v["LY"] for o, v in base_p.items()} != {o: v["LY"] for o, v in base_l.items()}
    # these labels are arbitrary (image i in class i mod 4), the clusters group what the model computed
    last = list(base_l)[-1]
    assert base_l[last]["LY"] > base_p[last]["LY"]


def test_label_term_is_infoqs_setting_only(tmp_path):
    from infoq_deploy.profile import registry

    with pytest.raises(UserError, match="--label-term is a setting of --method infoq, not of mse"):
        registry.run("mse", tiny_model(), FakeTarget(), tiny_data(), label_term="logits")
    with pytest.raises(UserError, match="label_term must be one of labels, logits"):
        run_profile(tmp_path, label_term="probabilities")


# ------------------------------------------------------------------ --shrink


def test_shrink_takes_standard_errors_off_each_dsmi(tmp_path, monkeypatch):
    from infoq_deploy.profile import infoq
    from infoq_deploy.profile.infoq import notes

    data = tiny_data(labels=True)
    plain = run_profile(tmp_path / "plain", data=data, noise_floor=True)
    shrunk = run_profile(tmp_path / "shrunk", data=data, noise_floor=True, shrink=True)
    assert shrunk.meta["cache_key"] != plain.meta["cache_key"]
    assert shrunk.meta["settings"]["shrink"] == {"standard_errors": infoq.SHRINK_SE}
    assert plain.meta["settings"]["shrink"] is None
    assert any("--shrink" in line for line in notes(shrunk))
    for what in ("weights", "activations"):
        for name, d in getattr(shrunk, what).items():
            for b, v in d.items():  # never more than the plain score, never negative
                assert 0 <= v <= getattr(plain, what)[name][b] + 1e-12
    # some of every run is taken for noise (on real models, how much of which width: bench_noise_floor.py)
    assert sum(map(sum, (d.values() for d in shrunk.weights.values()))) < sum(
        map(sum, (d.values() for d in plain.weights.values())))

    # no standard error taken off: the plain scores (the same differences, summed in another order)
    monkeypatch.setattr(infoq, "SHRINK_SE", 0.0)
    zero = run_profile(tmp_path / "zero", data=data, noise_floor=True, shrink=True)
    for what in ("weights", "activations"):
        for name, d in getattr(zero, what).items():
            assert d == pytest.approx(getattr(plain, what)[name], rel=1e-9, abs=1e-12)


def test_shrink_is_infoqs_setting_only():
    from infoq_deploy.profile import registry

    with pytest.raises(UserError, match="--shrink is a setting of --method infoq, not of hawq"):
        registry.run("hawq", tiny_model(), FakeTarget(), tiny_data(), shrink=True)
