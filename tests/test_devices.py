"""--device: validated in one sentence, `auto` is the CPU on a machine without a GPU, and the CPU
computes what it computed before the option existed. (No test needs a GPU.)"""

from __future__ import annotations

import json

import pytest
import torch

from infoq_deploy import stages
from infoq_deploy.core import devices
from infoq_deploy.core.errors import UserError

def test_resolve_names_every_choice(monkeypatch):
    assert devices.resolve("cpu") == devices.resolve(None) == torch.device("cpu")
    with pytest.raises(UserError, match="is not one of cpu, cuda, cuda:N or auto"):
        devices.resolve("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="sees no CUDA GPU on this machine; pass --device cpu"):
        devices.resolve("cuda")
    # a machine with two GPUs: an index, or under torchrun the process's own
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.resolve("cuda:1") == torch.device("cuda", 1)
    assert devices.resolve("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert devices.resolve("cuda") == devices.resolve("auto") == torch.device("cuda", 1)
    with pytest.raises(UserError, match="has 2 CUDA GPU"):
        devices.resolve("cuda:2")


def test_methods_without_a_device_refuse_a_gpu_in_one_sentence():
    model = stages.load_model(stages.DEFAULT_MODEL)
    with pytest.raises(UserError, match="--method mse runs on the CPU only; drop --device"):
        stages.profile(model, stages.load_target("fpga-int"), None, "mse", device=torch.device("cuda"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a GPU does")
def test_without_a_gpu_cuda_is_one_sentence_and_auto_is_the_cpu(tmp_path, monkeypatch, capsys):
    from infoq_deploy.cli import main

    base = ["profile", "zoo:fashion-cnn", "--target", "fpga-int", "--data", "builtin:fashion-mnist",
            "--calib-size", "60", "--n-proj", "4"]
    monkeypatch.setenv("INFOQ_DEPLOY_CACHE", str(tmp_path / "c0"))
    assert main([*base, "--device", "cuda", "-o", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "sees no CUDA GPU" in err
    assert not (tmp_path / "x.json").exists()
    tables = {}
    for dev in ("cpu", "auto"):
        monkeypatch.setenv("INFOQ_DEPLOY_CACHE", str(tmp_path / f"c_{dev}"))  # each computed, not cached
        out = tmp_path / f"{dev}.json"
        assert main([*base, "--device", dev, "-o", str(out)]) == 0, capsys.readouterr().err[-2000:]
        doc = json.loads(out.read_text())
        assert doc["meta"]["settings"]["device"] == "cpu"
        tables[dev] = (doc["weights"], doc["activations"])
    assert tables["cpu"] == tables["auto"]
