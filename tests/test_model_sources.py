"""Model import: the zoo, torchvision, file.py:factory, layer-table counts and bad input."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from infoq_deploy.models.cifar_resnet import cifar_resnet
from infoq_deploy.models.efficientnet_lite import efficientnet_lite0, same_padding

from infoq_deploy.core.errors import UserError
from infoq_deploy.importing.inventory import format_layer_table, inspect_json
from infoq_deploy.importing.sources import load_model

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"real data missing: {path} not found; these tests need the shared data folder at {DATA}")
    return path


TINY = """
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))

class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace this
            return self.conv(x)
        return -self.conv(x)

def build():
    return Tiny()

def build_wide():
    return Tiny(8)

def branchy():
    return Branchy()

def not_a_model():
    return 42
"""


@pytest.fixture
def tiny_file(tmp_path) -> Path:
    path = tmp_path / "tiny.py"
    path.write_text(textwrap.dedent(TINY))
    return path


# ------------------------------------------------------------ acceptance counts


def _counts(model) -> tuple[int, int, int]:
    doc = inspect_json(model)
    return doc["params"], len(doc["layers"]), doc["macs"]


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("torchvision:resnet18", (11_689_512, 21, 1_814_073_344)),
        ("torchvision:mobilenet_v2", (3_504_872, 53, 300_774_272)),
        ("zoo:efficientnet-lite0", (4_652_008, 50, 385_187_552)),
    ],
)
def test_acceptance_counts(spec, expected):
    assert _counts(load_model(spec)) == expected


@pytest.mark.realdata
@pytest.mark.parametrize(
    "spec, expected",
    [
        ("zoo:cifar10-resnet20", (269_722, 20, 40_551_040)),
        ("zoo:cifar10-resnet56", (853_018, 56, 125_485_696)),
    ],
)
def test_acceptance_counts_cifar(spec, expected):
    need(DATA / "cifar10-resnet")
    model = load_model(spec, data_root=DATA)
    assert _counts(model) == expected
    assert model.preprocess.input_shape == (3, 32, 32) and model.preprocess.num_classes == 10


def test_cifar_resnet_layout_without_weights():
    # the same architecture, counted from the module itself: conv and linear params only
    for depth, n_layers in ((20, 20), (56, 56)):
        model = cifar_resnet(depth)
        gm = torch.fx.symbolic_trace(model)
        convs = [m for m in gm.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        assert len(convs) == n_layers
        out = gm(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, 10)


def test_option_a_shortcut_pads_channels_with_zeros():
    block = cifar_resnet(20).layer2[0]
    x = torch.randn(1, 16, 32, 32)
    short = block.shortcut(x)
    assert short.shape == (1, 32, 16, 16)
    assert torch.equal(short[:, 8:24], x[:, :, ::2, ::2])
    assert short[:, :8].abs().sum() == 0 and short[:, 24:].abs().sum() == 0


# ------------------------------------------------------------ EfficientNet SAME padding


@pytest.mark.parametrize("size, kernel", [(7, 3), (14, 5), (28, 3), (112, 5)])
def test_same_padding_stride1_matches_torch_same(size, kernel):
    before, after = same_padding(size, kernel, 1)
    x = torch.randn(1, 2, size, size)
    w = torch.randn(2, 2, kernel, kernel)
    ours = F.conv2d(F.pad(x, (before, after, before, after)), w)
    assert torch.allclose(ours, F.conv2d(x, w, padding="same"), atol=1e-5)


@pytest.mark.parametrize("size, kernel", [(224, 3), (112, 3), (56, 5), (15, 3), (14, 5)])
def test_same_padding_stride2_is_tf_convention(size, kernel):
    before, after = same_padding(size, kernel, 2)
    out = F.conv2d(F.pad(torch.zeros(1, 1, size, size), (before, after, before, after)), torch.zeros(1, 1, kernel, kernel), stride=2)
    assert out.shape[-1] == math.ceil(size / 2)  # SAME keeps ceil(size / stride)
    assert after - before in (0, 1)  # TF puts the odd pixel at the end


def test_efficientnet_other_input_size_rebuilds_padding():
    model = load_model("zoo:efficientnet-lite0", input_shape=(3, 240, 240))
    pre = model.preprocess
    assert pre.input_shape == (3, 240, 240) and pre.crop == 240
    assert pre.resize == round(256 * 240 / 224) and pre.interpolation == "bicubic"
    assert model.layers[0].out_shape == (32, 120, 120)
    assert model.graph(torch.randn(1, 3, 240, 240)).shape == (1, 1000)


def test_efficientnet_builds_without_package_weights():
    model = efficientnet_lite0()
    names = {n for n, _ in model.named_modules()}
    # expand-1 blocks carry no expansion conv, as in the checkpoint
    assert "_blocks.0._expand_conv" not in names and "_blocks.1._expand_conv" in names


# ------------------------------------------------------------ factory files and determinism


def test_python_factory_loads_and_is_deterministic(tiny_file):
    spec = f"{tiny_file}:build"
    a = load_model(spec, input_shape=(1, 8, 8))
    b = load_model(spec, input_shape=(1, 8, 8))
    assert [l.name for l in a.layers] == ["conv", "fc"]
    assert a.fingerprint == b.fingerprint
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(a.graph(x), b.graph(x))
    assert not a.graph.training
    assert a.preprocess.grayscale and a.preprocess.num_classes == 3


def test_weights_change_fingerprint_and_outputs(tiny_file, tmp_path):
    spec = f"{tiny_file}:build"
    base = load_model(spec, input_shape=(1, 8, 8))
    state = {k: v.clone() for k, v in base.graph.state_dict().items()}
    state["fc.bias"] += 1.0
    weights = tmp_path / "w.pt"
    torch.save(state, weights)
    loaded = load_model(spec, weights=str(weights), input_shape=(1, 8, 8))
    assert loaded.fingerprint != base.fingerprint
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(loaded.graph(x), base.graph(x) + 1.0, atol=1e-6)


def test_dataparallel_checkpoint_is_unwrapped(tiny_file, tmp_path):
    spec = f"{tiny_file}:build"
    base = load_model(spec, input_shape=(1, 8, 8))
    state = {f"module.{k}": v + 0.5 for k, v in base.graph.state_dict().items() if v.is_floating_point()}
    path = tmp_path / "ckpt.th"
    torch.save({"best_prec1": 1.0, "state_dict": state}, path)
    loaded = load_model(spec, weights=str(path), input_shape=(1, 8, 8))
    assert torch.allclose(loaded.graph.fc.bias, base.graph.fc.bias + 0.5)


def test_torchvision_random_init_is_reproducible():
    a, b = load_model("torchvision:squeezenet1_1"), load_model("torchvision:squeezenet1_1")
    assert a.fingerprint == b.fingerprint
    assert torch.equal(a.graph.state_dict()["features.0.weight"], b.graph.state_dict()["features.0.weight"])


# ------------------------------------------------------------ bad input


def _message(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and text  # one sentence, one line
    return text


def test_missing_files(tmp_path):
    with pytest.raises(UserError) as e:
        load_model(str(tmp_path / "absent.onnx"))
    assert "does not exist" in _message(e)
    with pytest.raises(UserError) as e:
        load_model(f"{tmp_path / 'absent.py'}:build", input_shape=(1, 8, 8))
    assert "does not exist" in _message(e)
    with pytest.raises(UserError) as e:
        load_model("torchvision:resnet18", weights=str(tmp_path / "absent.pt"))
    assert "absent.pt" in _message(e)


def test_zoo_weights_missing_from_data_root(tmp_path):
    with pytest.raises(UserError) as e:
        load_model("zoo:cifar10-resnet20", data_root=tmp_path)
    assert "--data-root" in _message(e) and str(tmp_path) in str(e.value)


def test_unknown_names():
    with pytest.raises(UserError) as e:
        load_model("zoo:resnet20")
    assert "zoo:cifar10-resnet20" in _message(e)
    with pytest.raises(UserError) as e:
        load_model("torchvision:resnet81")
    assert "resnet18" in _message(e)
    with pytest.raises(UserError) as e:
        load_model("mystery-model")
    assert "zoo:" in _message(e)


def test_untraceable_model(tiny_file):
    with pytest.raises(UserError) as e:
        load_model(f"{tiny_file}:branchy", input_shape=(1, 8, 8))
    text = _message(e)
    assert "cannot trace" in text and "branchy" in text and ".onnx" in text


def test_bad_factories(tiny_file):
    with pytest.raises(UserError) as e:
        load_model(f"{tiny_file}:nope", input_shape=(1, 8, 8))
    assert "nope" in _message(e)
    with pytest.raises(UserError) as e:
        load_model(f"{tiny_file}:not_a_model", input_shape=(1, 8, 8))
    assert "nn.Module" in _message(e)
    with pytest.raises(UserError) as e:
        load_model(f"{tiny_file}:build")
    assert "--input-shape" in _message(e)
    with pytest.raises(UserError, match="--input-shape"):
        load_model(f"{tiny_file}:build", input_shape=(3, 8, 8))  # Tiny takes one channel


def test_wrong_weights(tiny_file, tmp_path):
    wide = load_model(f"{tiny_file}:build_wide", input_shape=(1, 8, 8))
    path = tmp_path / "wide.pt"
    torch.save(wide.graph.state_dict(), path)
    with pytest.raises(UserError) as e:
        load_model(f"{tiny_file}:build", weights=str(path), input_shape=(1, 8, 8))
    assert "shape mismatch" in _message(e) and "conv.weight" in str(e.value)

    deeper = tmp_path / "r56.pt"
    torch.save(cifar_resnet(56).state_dict(), deeper)
    with pytest.raises(UserError) as e:
        load_model("zoo:cifar10-resnet20", weights=str(deeper))
    assert "unexpected keys" in _message(e) and "layer1.3" in str(e.value)


def test_weights_file_that_is_not_a_state_dict(tiny_file, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(torch.randint(0, 256, (512,), generator=torch.Generator().manual_seed(0)).byte().numpy().tobytes())
    with pytest.raises(UserError) as e:
        load_model(f"{tiny_file}:build", weights=str(junk), input_shape=(1, 8, 8))
    assert "junk.pt" in _message(e)


def test_bad_input_shape():
    with pytest.raises(UserError) as e:
        load_model("torchvision:resnet18", input_shape=(3, 0, 224))
    assert "C,H,W" in _message(e)


# ------------------------------------------------------------ inspect


def test_inspect_report_totals(tiny_file):
    model = load_model(f"{tiny_file}:build", input_shape=(1, 8, 8))
    doc = inspect_json(model)
    assert doc["params"] == sum(p.numel() for p in model.graph.parameters())  # BatchNorm included
    assert doc["params"] > sum(l["params"] for l in doc["layers"])
    assert doc["macs"] == sum(l.macs for l in model.layers)
    assert doc["input_shape"] == [1, 8, 8] and doc["spec"] == model.spec
    text = format_layer_table(model)
    for layer in model.layers:
        assert layer.name in text and f"{layer.macs:,}" in text
    assert f"{doc['macs']:,}" in text and f"{doc['params']:,}" in text
