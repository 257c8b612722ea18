"""The bundled default model: a small CNN for 1x28x28 Fashion-MNIST.

Small enough to profile and quantize in seconds on a laptop, yet it holds every
construct the toolchain must handle: convs followed by BatchNorm+ReLU (folded
before profiling), a residual addition (two branches meet, so the quantizer
must agree on one scale there), a depthwise conv (kind "dwconv", per-channel
scales matter most), max- and average pooling, and a linear classifier.

Trained weights: ``fashion_cnn.pt`` beside this file (recipe:
``train_fashion_cnn.py``; record: ``fashion_cnn.json``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from infoq_deploy.importing.model import Preprocess

WEIGHTS = Path(__file__).with_name("fashion_cnn.pt")
RECORD = Path(__file__).with_name("fashion_cnn.json")

# Fashion-MNIST training-set statistics of pixels scaled to [0, 1].
MEAN = (0.2860,)
STD = (0.3530,)
INPUT_SHAPE = (1, 28, 28)
PREPROCESS = Preprocess(input_shape=INPUT_SHAPE, mean=MEAN, std=STD, grayscale=True,
                        num_classes=10)  # Fashion-MNIST's ten classes


def _conv_bn_relu(c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class FashionCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = _conv_bn_relu(1, 16)                  # 16x28x28
        self.pool = nn.MaxPool2d(2)                       # 16x14x14
        self.conv2 = _conv_bn_relu(16, 32)                # 32x14x14
        # Depthwise downsampling: dw 3x3 stride 2.
        self.dw = _conv_bn_relu(32, 32, stride=2, groups=32)   # 32x7x7
        # Residual block: the addition is the point, not depth.
        self.res_conv1 = _conv_bn_relu(32, 32)
        self.res_conv2 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.res_bn2 = nn.BatchNorm2d(32)
        self.res_relu = nn.ReLU(inplace=True)
        self.pw = _conv_bn_relu(32, 64, k=1)                   # 64x7x7
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(self.conv2(self.pool(self.stem(x))))
        x = self.res_relu(x + self.res_bn2(self.res_conv2(self.res_conv1(x))))
        x = self.pw(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build(num_classes: int = 10) -> nn.Module:
    """A freshly initialised FashionCNN (load ``WEIGHTS`` for the trained one)."""
    return FashionCNN(num_classes)


def load_pretrained() -> nn.Module:
    """The trained default model in eval mode."""
    model = build()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()
