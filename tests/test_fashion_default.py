"""The bundled default model: committed weights, record and eval subset agree."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torch.fx
from infoq_deploy.models import fashion_cnn
from torch import nn

from infoq_deploy.data.load import BUILTIN_EVAL, load_data


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(fashion_cnn.RECORD.read_text())


def test_weights_load_plain_and_match_record(record):
    state = torch.load(fashion_cnn.WEIGHTS, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    fashion_cnn.build().load_state_dict(state)  # strict: every key, every shape
    assert hashlib.sha256(fashion_cnn.WEIGHTS.read_bytes()).hexdigest() == record["weights_sha256"]


def test_architecture_exercises_the_toolchain():
    model = fashion_cnn.build()
    gm = torch.fx.symbolic_trace(model)
    mods = dict(gm.named_modules())
    convs = [m for m in mods.values() if isinstance(m, nn.Conv2d)]
    assert any(c.groups == c.in_channels > 1 for c in convs)  # a depthwise conv
    assert sum(isinstance(m, nn.BatchNorm2d) for m in mods.values()) >= 4
    assert any(isinstance(m, nn.Linear) for m in mods.values())
    assert any(isinstance(m, (nn.MaxPool2d, nn.AdaptiveAvgPool2d)) for m in mods.values())
    adds = [n for n in gm.graph.nodes if n.op == "call_function" and "add" in str(n.target)]
    assert len(adds) == 1  # one residual addition
    assert 20_000 <= sum(p.numel() for p in model.parameters()) <= 100_000
    assert gm(torch.zeros(2, *fashion_cnn.INPUT_SHAPE)).shape == (2, 10)


def test_eval_subset_accuracy_matches_record(record):
    model = fashion_cnn.load_pretrained()
    ds = load_data(BUILTIN_EVAL, fashion_cnn.PREPROCESS)
    with torch.no_grad():
        acc = 100.0 * float((model(ds.x).argmax(1) == ds.y).float().mean())
    assert abs(acc - record["eval_subset_accuracy"]) <= 0.1, (acc, record["eval_subset_accuracy"])
    assert acc > 85.0
    assert record["test_accuracy"] > 85.0
