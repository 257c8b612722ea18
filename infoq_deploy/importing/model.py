"""What the import stage hands on: the traced float model, its layer table and the input it expects."""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx

from infoq_deploy.importing.layers import Layer


@dataclass(frozen=True)
class Preprocess:
    input_shape: tuple[int, int, int]   # C,H,W the network takes
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None           # resize shorter side before centre crop (None: no resize)
    crop: int | None = None             # centre crop (None: none)
    interpolation: str = "bilinear"     # "bilinear" | "bicubic"
    grayscale: bool = False
    num_classes: int | None = None


@dataclass
class ImportedModel:
    spec: str                          # what the user typed, e.g. "zoo:cifar10-resnet20"
    graph: torch.fx.GraphModule        # eval mode, float32, CPU
    layers: list[Layer]                # build_layer_table(graph, preprocess.input_shape)
    preprocess: Preprocess
    fingerprint: str                   # sha256 over state_dict (names+bytes) + spec + input shape; cache key
