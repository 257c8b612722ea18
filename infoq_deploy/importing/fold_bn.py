"""Fold BatchNorm into the preceding convolution, as the deployed graph does.

DESIGN.md: profiled weights are deployed weights, so folding happens before profiling.
Layer names are kept (the fused convolution replaces the original module in place).
"""

from __future__ import annotations

import copy

import torch.fx
from torch.fx.experimental.optimization import fuse


class FoldBatchNorm:
    """One pass: Conv -> BatchNorm pairs become one Conv with a bias."""

    def apply(self, gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
        gm = copy.deepcopy(gm).eval()
        return fuse(gm, inplace=True)
