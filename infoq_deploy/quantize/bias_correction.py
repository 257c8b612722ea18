"""Bias correction (Nagel et al. 2019), Brevitas's `bias_correction_mode`.

Quantizing a layer's weights and input shifts the mean of its output per channel; over
the calibration set Brevitas measures that shift (float output mean minus quantized) and
adds it to the bias. Each layer is measured on float inputs (Brevitas hands the float
output on, so errors do not compound into the correction). The corrected bias is then an
int32 at the accumulator scale like any other (`brevitas_model`'s ``Int32Bias``). A layer
without a bias is skipped: adding one would put a float bias in the graph.
"""

from __future__ import annotations

import sys

import torch
from brevitas.graph.calibrate import bias_correction_mode
from torch import nn
from tqdm import tqdm

from infoq_deploy.core import devices


def _channel_dim(inp: torch.Tensor, module: nn.Module) -> int:
    """Where a layer's output channels are: last for a Linear at any rank (Brevitas says so only for
    3-D inputs and takes dim 1 of ConvNeXt's 4-D channels-last maps, issue #14), 1 for a conv."""
    return inp.dim() - 1 if isinstance(module, nn.Linear) else 1


def apply(qmodel: nn.Module, x: torch.Tensor, *, batch_size: int = 256, progress: bool = False) -> None:
    """Correct the biases of the calibrated ``qmodel`` over ``x``, in place."""
    was_training = qmodel.training
    qmodel.eval()
    mode = bias_correction_mode(qmodel, skip_if_no_bias=True)
    mode.bias_correction.channel_dim = _channel_dim  # its hooks look the method up on the instance
    with torch.no_grad(), mode:
        for start in tqdm(range(0, x.shape[0], batch_size), desc="bias correction", unit="batch",
                          disable=not progress, leave=False, dynamic_ncols=True, file=sys.stderr):
            qmodel(x[start : start + batch_size].to(devices.of(qmodel)))
    qmodel.train(was_training)
