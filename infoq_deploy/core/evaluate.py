"""Top-1 accuracy and batched inference: the one way every stage measures a model."""

from __future__ import annotations

import torch
from torch import nn


def _as_tensor(out) -> torch.Tensor:
    # A Brevitas layer built with return_quant_tensor=True hands back a QuantTensor;
    # its dequantized value is what the float comparison needs.
    return out if isinstance(out, torch.Tensor) else out.value


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Logits for ``x`` (N,...) in eval mode without gradients, on the CPU; each batch runs on
    the model's device. The model's mode is restored."""
    from infoq_deploy.core.devices import of

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    was_training = model.training
    device = of(model)
    model.eval()
    try:
        with torch.no_grad():
            outs = [_as_tensor(model(x[i:i + batch_size].to(device))).detach().cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    if not outs:
        raise ValueError("predict needs at least one input")
    return torch.cat(outs)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``(x, y)``."""
    if y is None:
        raise ValueError("accuracy needs labels")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} inputs but {len(y)} labels")
    logits = predict(model, x, batch_size)
    return float((logits.argmax(dim=1) == y.to(logits.device)).float().mean())
