"""Where the torch work of a stage runs: ``--device cpu|cuda|cuda:N|auto``.

The choice is validated here, at the command line's boundary (``resolve``), and the stages
take a ``torch.device``. Only the heavy torch work moves (the profiler's forward passes,
calibration, GPTQ and bias correction, fine-tuning, accuracy); what leaves a stage is on the
CPU again: sensitivity tables are numbers, a quantized model is saved, exported and verified
from the CPU. ``cpu`` (the default) computes exactly what the tool computed before the option
existed. On a GPU, cuDNN's convolution algorithms and reductions round differently from the
CPU's (and may differ from run to run), so scores and accuracies can differ in their last
digits, and an allocation can differ where two choices score within that noise.

Under torchrun, ``cuda`` and ``auto`` take the GPU of the process's ``LOCAL_RANK``.
"""

from __future__ import annotations

import os
import re

import torch
from torch import nn

from infoq_deploy.core.errors import UserError

CHOICES = "cpu, cuda, cuda:N or auto"


def _local_rank() -> int:
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def resolve(text: str | None) -> torch.device:
    """The device ``--device TEXT`` names, checked against what torch sees on this machine."""
    name = (text or "cpu").strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        return resolve("cuda") if torch.cuda.is_available() else torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not m:
        raise UserError(f"--device {text!r} is not one of {CHOICES}; pass one of those")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise UserError(f"--device {name}: torch {torch.__version__} ({build}) sees no CUDA GPU on this machine; "
                        "pass --device cpu, or --device auto to use a GPU only where there is one")
    index = int(m[1]) if m[1] is not None else _local_rank()
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0; "
                        "pass another index")
    return torch.device("cuda", index)


def of(module: nn.Module) -> torch.device:
    """The device a module's parameters (else buffers) are on; the CPU for a module with neither."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")
