"""The zoo's pretrained models reach their measured accuracy on the real data (proof the rebuilds are right)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from infoq_deploy.data.load import load_data
from infoq_deploy.importing.sources import load_model

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"real data missing: {path} not found; these tests need the shared data folder at {DATA}")
    return path


def top1(model, data, batch: int = 500) -> float:
    # channels-last runs these convolutions about 1.5-2x faster on CPU; the arithmetic is the same
    graph = model.graph.to(memory_format=torch.channels_last)
    correct = 0
    with torch.no_grad():
        for i in range(0, len(data.x), batch):
            x = data.x[i:i + batch].contiguous(memory_format=torch.channels_last)
            correct += int((graph(x).argmax(1) == data.y[i:i + batch]).sum())
    return 100.0 * correct / len(data.x)


@pytest.fixture(scope="module")
def cifar_test():
    need(DATA / "cifar10-resnet")
    model = load_model("zoo:cifar10-resnet20", data_root=DATA)
    return load_data(str(need(DATA / "cifar10" / "test")), model.preprocess)


# accuracies measured on these JPEG files (data README), not the published figures
@pytest.mark.parametrize("spec, expected", [("zoo:cifar10-resnet20", 81.0), ("zoo:cifar10-resnet56", 83.2)])
def test_cifar_resnet_accuracy(spec, expected, cifar_test):
    assert len(cifar_test.x) == 10_000
    acc = top1(load_model(spec, data_root=DATA), cifar_test)
    assert abs(acc - expected) <= 0.3, f"{spec}: {acc:.2f}% top-1, expected {expected}%"


def test_efficientnet_lite0_accuracy():
    model = load_model("zoo:efficientnet-lite0")
    data = load_data(str(need(DATA / "imagenet" / "val1300")), model.preprocess)
    assert len(data.x) == 1300
    acc = top1(model, data)
    assert abs(acc - 83.2) <= 0.5, f"EfficientNet-Lite0: {acc:.2f}% top-1 on val1300, expected 83.2%"
