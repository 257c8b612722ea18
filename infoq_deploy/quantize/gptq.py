"""GPTQ rounding of the quantized weights (Frantar et al. 2023), Brevitas's `gptq_mode`.

Layer by layer in graph order, GPTQ rounds each weight column and spreads its rounding
error over the columns not yet rounded, weighted by the inverse Hessian of the layer's
inputs (``X X^T`` over the calibration set, inputs quantized as deployed). Scales are
not changed: they stay the thresholds the scale rule chose, so the allocation's bits and
the profiler's scales still describe the model; only which integer each weight rounds to
changes. ``act_order`` rounds the columns with the largest input energy first.

The inputs of each layer are those of the already-rounded earlier ones (Brevitas's
``use_quant_activations``), as the deployed model sees them. Brevitas's documented loop gets
them by running the calibration set through the model once per layer, stopping at that
layer: on a network of L layers that is about L/2 whole forward passes, 1,629 and 1,687 s of
GPTQ on EfficientNet-Lite0 with 256 images (`bench/results/ptq_imagenet_lite0.json`). `apply` instead
walks the graph once (`_Walk`): at each layer it feeds the layer's input, already computed,
through Brevitas's own hook (the Hessian) and update (the rounding), then computes the
layer's output with the rounded weights and goes on. Same layers, same order, same inputs,
same Brevitas code for the algorithm; the price is that the values live between layers are
kept for the whole calibration set at once (Lite0's widest is 96x112x112 floats, 4.8 MB an image).
"""

from __future__ import annotations

import math
import sys
import warnings

import torch
import torch.fx
from brevitas.graph.gptq import GPTQ, gptq_mode
from brevitas.nn import QuantConv2d
from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer
from brevitas.quant_tensor import QuantTensor
from brevitas.utils.torch_utils import StopFwdException
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from infoq_deploy.core import devices
from infoq_deploy.core.errors import UserError
from infoq_deploy.importing.layers import Layer


def rows_per_sample(layer: Layer) -> int:
    """Rows one input sample adds to the layer's Hessian: output positions of a conv, 1 of a linear."""
    if layer.kind == "linear":
        return max(1, math.prod(layer.out_shape[:-1]))
    return max(1, math.prod(layer.out_shape[1:]))


def columns(layer: Layer) -> int:
    """Inputs per output of the layer (the Hessian's size): C_in / groups x kernel."""
    return layer.weight_params // layer.out_shape[0 if layer.kind != "linear" else -1]


def short_layers(layers: list[Layer], integer: set[str], n: int) -> list[str]:
    """The integer layers to which ``n`` calibration samples give fewer Hessian rows than columns."""
    return [layer.name for layer in layers if layer.name in integer and rows_per_sample(layer) * n < columns(layer)]


def shortfall(layers: list[Layer], integer: set[str], n: int) -> tuple[int, str] | None:
    """(samples needed, why) when ``n`` calibration samples give some layer fewer Hessian rows
    than it has columns: its Hessian is then singular and GPTQ's result is governed by the
    damping, not the data. None when every layer is covered."""
    short = [(layer, rows_per_sample(layer) * n, columns(layer)) for layer in layers
             if layer.name in integer and rows_per_sample(layer) * n < columns(layer)]
    if not short:
        return None
    need = max(math.ceil(cols / rows_per_sample(layer)) for layer, _, cols in short)
    layer, rows, cols = max(short, key=lambda t: t[2] / t[1])
    why = (f"layer {layer.name} has {cols} inputs per output and {n} samples give it {rows} rows"
           + (f" ({len(short)} layers are short)" if len(short) > 1 else ""))
    return need, why


def check_samples(layers: list[Layer], integer: set[str], n: int) -> None:
    """UserError when `shortfall` finds a layer the calibration set does not cover."""
    if (short := shortfall(layers, integer, n)) is not None:
        need, why = short
        raise UserError(f"--ptq gptq needs at least {need} calibration samples: {why}; pass at least {need} "
                        "samples (--calib-size, or more --data) or use --ptq minmax")


class _GPTQ(GPTQ):
    """Brevitas's GPTQ, with a Linear layer's input folded to 3-D (batch, rows, features) first:
    Brevitas flattens it by the *sum* of the trailing sizes, right only for 3-D inputs, and
    ConvNeXt's Linear layers read 4-D channels-last maps (a reshape error, issue #14)."""

    def process_input(self, inp):
        x = inp[0]
        if isinstance(self.layer, nn.Linear) and type(x) is torch.Tensor and x.dim() > 3:
            inp = (x.reshape(x.shape[0], -1, x.shape[-1]), *inp[1:])
        return super().process_input(inp)

    def compute_iterative_covariance(self, module, input, current_layer):
        """Brevitas's running Hessian, for a 2-D convolution in fewer copies of the unfolded input.
        Brevitas unfolds each group apart with unfoldNd (a convolution by one-hot kernels), stacks
        the groups, scales the stack, runs the product and copies it into a buffer before adding:
        a Python loop over Lite0's 1,152 depthwise groups and four copies of the largest tensor
        GPTQ makes. Here: one native im2col (none for a 1x1 convolution), one copy that scales
        into Brevitas's layout, the product straight into the buffer. The same operations on the
        same values in the same order, so the same Hessian bit for bit (`tests/test_ptq.py`
        compares the two on every kind of convolution; `bench/bench_gptq_walk.py` the integer
        weights of EfficientNet-Lite0)."""
        if not _unfoldable(self.layer):
            return super().compute_iterative_covariance(module, input, current_layer)
        current_layer.layer_names.add(self.name)
        cols = self._unfolded(input[0])  # (samples, groups, inputs per output, positions), a view
        n, groups, per_output, positions = cols.shape
        batch_size = n * positions
        self.H *= self.nsamples / (self.nsamples + batch_size)
        self.nsamples += batch_size
        scaled = torch.empty((groups, per_output, n, positions), dtype=self.dtype, device=cols.device)
        torch.mul(cols.permute(1, 2, 0, 3), math.sqrt(2 / self.nsamples), out=scaled)
        scaled = scaled.view(groups, per_output, batch_size)
        if self.use_intermediate_buffer:
            torch.bmm(scaled, scaled.transpose(2, 1), out=self.B)
            self.H += self.B
        else:
            self.H += scaled.bmm(scaled.transpose(2, 1))

    def _unfolded(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's quantized input as im2col columns, (samples, groups, inputs per output,
        positions); Brevitas's `process_input` up to its unfold, which keeps the input's scale
        for the weight quantizer."""
        x = self.layer.input_quant(x)
        if isinstance(x, QuantTensor):
            if self.layer.weight_quant.is_quant_enabled and self.quant_metadata is None:
                self.quant_metadata = self.layer.input_quant.cache_class(x, metadata_only=True)
            x = x.value
        x = x.to(self.dtype)
        layer = self.layer
        if layer.kernel_size == (1, 1) and layer.stride == (1, 1) and layer.padding == (0, 0):
            cols = x.reshape(x.shape[0], x.shape[1], -1)  # a 1x1 convolution's columns are its input
        else:
            cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
        return cols.view(cols.shape[0], self.groups, -1, cols.shape[-1])


def _unfoldable(layer: nn.Module) -> bool:
    """A 2-D quantized convolution Brevitas unfolds, its zero padding given as numbers."""
    return (isinstance(layer, QuantConv2d) and isinstance(layer.padding, tuple)
            and all(isinstance(p, int) for p in layer.padding))


class _gptq_skipping(gptq_mode):
    """Brevitas's `gptq_mode`, leaving the modules in ``skip`` rounded to nearest (it has no such option)."""

    def __init__(self, model: nn.Module, skip: set[int], **kwargs):
        self._skip = skip  # ids of modules; set before Brevitas's __init__, which may look at modules
        super().__init__(model, **kwargs)

    def _is_module_supported(self, module):
        return id(module) not in self._skip and super()._is_module_supported(module)


class _Walk(torch.fx.Interpreter):
    """One pass over the graph on the whole calibration set; at each layer GPTQ has hooked,
    Brevitas's hook sees the layer's input (in ``batch_size`` chunks, as its loop would feed
    it) and Brevitas's update rounds the weights before the layer's output is computed."""

    def __init__(self, gm: torch.fx.GraphModule, gptq, batch_size: int, bar):
        super().__init__(gm)
        self.gptq, self.batch_size, self.bar = gptq, batch_size, bar
        self.done: set[str] = set()

    def call_module(self, target, args, kwargs):
        if target in self.gptq.gpxq_layers and target not in self.done:
            module = self.fetch_attr(target)
            x = args[0]
            for start in range(0, x.shape[0], self.batch_size):
                try:
                    module(x[start : start + self.batch_size], *args[1:], **kwargs)
                except StopFwdException:  # the hook stops the layer once it has its input
                    pass
            self.gptq.update()  # rounds this layer and removes its hook
            self.done.add(target)
            self.bar.update()
        return super().call_module(target, args, kwargs)


def _walkable(qmodel: nn.Module) -> bool:
    """A graph that calls each weight layer once (a shared layer would see its inputs in two
    places). Other modules may be called more than once: an activation quantizer shared by both
    inputs of an Add (ViT's residual adds) is a pure function in eval mode, and the walk runs it
    at each call as the model does; counting it made every ViT GPTQ run Brevitas's loop (74
    layers, about a forward pass each)."""
    if not isinstance(qmodel, torch.fx.GraphModule):
        return False
    weights = {name for name, m in qmodel.named_modules() if isinstance(m, QuantWeightBiasInputOutputLayer)}
    called = [n.target for n in qmodel.graph.nodes if n.op == "call_module" and n.target in weights]
    return len(called) == len(set(called))


def apply(qmodel: nn.Module, x: torch.Tensor, *, skip: set[str] = frozenset(), batch_size: int = 256,
          act_order: bool = True, progress: bool = False, walk: bool = True) -> None:
    """Round every integer-weight layer of the calibrated ``qmodel`` but those named in ``skip``
    by GPTQ over ``x``, in place; ``walk=False``: by Brevitas's loop alone (for comparison)."""
    was_training = qmodel.training
    device = devices.of(qmodel)
    qmodel.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # Brevitas warns on a failed Cholesky and leaves that layer round-to-nearest; make it ours
        warnings.simplefilter("error", UserWarning)
        try:
            skipped = {id(qmodel.get_submodule(name)) for name in skip}
            with _gptq_skipping(qmodel, skipped, create_weight_orig=False, use_quant_activations=True,
                                act_order=act_order, gptq_class=_GPTQ) as gptq, \
                    tqdm(total=gptq.num_layers, desc="GPTQ", unit="layer", disable=not progress, leave=False,
                         dynamic_ncols=True, file=sys.stderr) as bar:
                done = set()
                if walk and _walkable(qmodel):
                    walker = _Walk(qmodel, gptq, batch_size, bar)
                    walker.run(x.to(device))
                    done = walker.done
                for _ in range(len(set(gptq.gpxq_layers) - done)):
                    # Brevitas's own loop: what the walk did not reach (or a graph it cannot walk)
                    for start in range(0, x.shape[0], batch_size):
                        gptq.model(x[start : start + batch_size].to(device))
                    gptq.update()
                    bar.update()
        except UserWarning as w:
            if "inverse of the Hessian" in str(w):
                raise UserError(f"GPTQ could not invert a layer's input Hessian ({w}); pass more calibration "
                                "samples or use --ptq mse") from None
            raise
    qmodel.train(was_training)


def integer_layers(qmodel: nn.Module) -> set[str]:
    """Layers whose weights are quantized: what GPTQ rounds."""
    return {name for name, m in qmodel.named_modules()
            if isinstance(m, QuantWeightBiasInputOutputLayer) and m.weight_quant.is_quant_enabled}
