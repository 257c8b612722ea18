"""Transformers: nn.MultiheadAttention written out as Linear layers (importing/attention.py), and
a ViT through the whole pipeline on every target."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from infoq_deploy.cli import main
from infoq_deploy.core.errors import UserError
from infoq_deploy.importing.attention import split_attention
from infoq_deploy.importing.sources import load_model

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_vit.py"
TINY_VIT = f"{FIXTURE}:build"


def _vit():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_vit", FIXTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build().eval()


def test_written_out_attention_computes_what_pytorch_does():
    model = _vit()
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        want = model(x)  # PyTorch's fused attention kernel (eval mode)
        got = torch.fx.symbolic_trace(split_attention(copy.deepcopy(model)))(x)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_attention_projections_are_layers_the_pipeline_quantizes():
    model = load_model(TINY_VIT, input_shape=(1, 8, 8))
    names = [layer.name for layer in model.layers]
    att = "encoder.layers.encoder_layer_0.self_attention"
    assert [n for n in names if n.startswith(att)] == [f"{att}.{p}" for p in ("q", "k", "v", "out")]
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.graph.modules())


def test_cross_attention_and_extra_key_bias_are_refused_in_one_sentence():
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.att = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.att(x, x + 1, x + 1)[0]

    with pytest.raises(UserError, match="att is used as cross-attention"):
        torch.fx.symbolic_trace(split_attention(Cross()))
    biased = nn.Sequential(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(UserError, match="attention module 0 uses add_bias_kv"):
        split_attention(biased)


@pytest.mark.parametrize("target, budget, extra", [
    ("edge-cpu-ort", "3x", []),  # QCDQ in ONNX Runtime (mcu-int writes the same format)
    # hls4ml has no handler for LayerNorm's ReduceMean (the preflight says so); qonnx's executor checks the file
    ("fpga-int", "5bit", ["--backend", "qonnx"]),
])
def test_a_vit_runs_end_to_end_and_verifies(tmp_path, quadrant_data, monkeypatch, target, budget, extra):
    monkeypatch.setenv("INFOQ_DEPLOY_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    code = main([TINY_VIT, "--input-shape", "1,8,8", "--data", quadrant_data, "--target", target, "--budget", budget,
                 "--method", "mse", "--ptq", "minmax", "--no-bias-correction", "-o", str(run_dir), *extra])
    assert code == 0
    report = json.loads((run_dir / "report.json").read_text())
    verify, alloc = report["verify"], report["allocation"]
    assert verify["ok"] and verify["mismatches"] == []
    assert verify["quant_error"] > 0  # the logits move with quantization: the check can see a wrong graph
    carried = {k: tuple(v) for k, v in verify["bits_in_graph"].items()}
    assert carried == {l["name"]: (l["w_bits"], l["a_bits"]) for l in alloc["layers"]}
    assert len(carried) == 8  # patch conv, q, k, v, out, two MLP layers, head
