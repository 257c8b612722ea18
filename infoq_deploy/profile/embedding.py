"""The input embedding X_E that InfoQ measures SMI(X_E; L_j) against.

The paper maps each input image to a DINOv2 feature vector (lossy compression of X,
Butakov et al. 2023) before estimating SMI. DINOv2 cannot be downloaded here, so the
encoder is pluggable:

- ``None`` / ``"pool-pca"`` (default, no download): adaptive-average-pool every channel
  of the (preprocessed) input to at most 8x8, flatten, and keep the top 64 principal
  components (numpy SVD of the centred calibration set; each component's sign fixed so
  its largest-magnitude loading is positive, so the result is deterministic). It is a
  linear, cheap, low-pass summary of the image itself: it retains the coarse layout and
  colour that a CIFAR/Fashion-MNIST class depends on, and at 64 dimensions the random
  projections of SMI are not dominated by pixel noise. The scores are not whitened:
  whitening would give the noisiest components the same weight as the leading ones.
- ``path/to/encoder.onnx``: run with onnxruntime on the same preprocessed input; the
  first output, flattened per sample, is X_E.
- any model spec ``importing.sources.load_model`` accepts (``file.py:factory``,
  ``torchvision:NAME``, ``zoo:NAME``), optionally followed by ``@weights.pt``; it is
  traced and run on the preprocessed input, its output flattened per sample.

External encoders see the profiled model's preprocessed input (same size and
normalisation); an encoder that rejects it is a UserError.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from infoq_deploy.core.errors import UserError

DEFAULT = "pool-pca"
POOL = 8
PCA_DIM = 64


@dataclass
class Embedding:
    values: np.ndarray  # (N, D) float64
    info: dict = field(default_factory=dict)  # what produced it, for meta and the cache key


def encoder_identity(encoder: str | None) -> dict:
    """What identifies the encoder for the cache key (file contents, not just names)."""
    if encoder is None or encoder == DEFAULT:
        return {"name": DEFAULT, "pool": POOL, "dim": PCA_DIM}
    spec, weights = _split_weights(encoder)
    ident = {"name": encoder}
    for label, p in (("file", _spec_file(spec)), ("weights", weights)):
        if p is not None and Path(p).is_file():
            ident[label + "_sha256"] = _file_sha256(Path(p))
    return ident


def embed(x: torch.Tensor, encoder: str | None = None, batch_size: int = 250) -> Embedding:
    """X_E for the calibration inputs ``x`` (N, C, H, W)."""
    if encoder is None or encoder == DEFAULT:
        return pool_pca(x)
    spec, weights = _split_weights(encoder)
    if spec.lower().endswith(".onnx"):
        values = _run_onnx(Path(spec), x, batch_size)
    else:
        values = _run_torch(spec, weights, x, batch_size)
    if not np.all(np.isfinite(values)):
        raise UserError(f"encoder {encoder} produced NaN or inf features; check the encoder and its weights")
    info = encoder_identity(encoder)
    info.update({"kind": "onnx" if spec.lower().endswith(".onnx") else "torch", "dim": int(values.shape[1])})
    return Embedding(values=values, info=info)


def pool_pca(x: torch.Tensor, pool: int = POOL, dim: int = PCA_DIM) -> Embedding:
    """Average-pool to <= pool x pool per channel, flatten, PCA to <= dim components."""
    n = x.shape[0]
    size = (min(pool, x.shape[-2]), min(pool, x.shape[-1])) if x.dim() == 4 else None
    with torch.no_grad():
        pooled = F.adaptive_avg_pool2d(x.float(), size) if size is not None else x.float()
    a = pooled.reshape(n, -1).double().numpy()
    a = a - a.mean(axis=0)
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    keep = int(min(dim, np.sum(s > s[0] * 1e-9) if s.size and s[0] > 0 else 0))
    if keep == 0:
        raise UserError("the calibration images are all identical, so they carry no information to profile with; pass real images")
    vt = vt[:keep]
    signs = np.sign(vt[np.arange(keep), np.abs(vt).argmax(axis=1)])
    vt = vt * signs[:, None]
    values = a @ vt.T
    var = s**2
    info = {
        "name": DEFAULT,
        "pool": list(size) if size is not None else None,
        "dim": keep,
        "explained_variance": round(float(var[:keep].sum() / var.sum()), 6),
        "note": "adaptive average pooling to at most 8x8 per channel + PCA (64 components) of the calibration inputs; "
        "stands in for the paper's DINOv2 encoder, which cannot be downloaded here",
    }
    return Embedding(values=values, info=info)


# --------------------------------------------------------------------- external


def _split_weights(encoder: str) -> tuple[str, str | None]:
    spec, sep, weights = encoder.rpartition("@")
    if sep and spec and weights and not weights.startswith(("zoo:", "torchvision:")):
        return spec, weights
    return encoder, None


def _spec_file(spec: str) -> str | None:
    if spec.lower().endswith(".onnx"):
        return spec
    if ".py:" in spec:
        return spec.rpartition(":")[0]
    return None


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _run_onnx(path: Path, x: torch.Tensor, batch_size: int) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"encoder file {path} does not exist; pass an existing .onnx file or leave --encoder out")
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("onnxruntime is not installed, so an ONNX encoder cannot run; install onnxruntime") from None
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise UserError(f"onnxruntime cannot load encoder {path} ({type(exc).__name__}); pass a valid ONNX model") from None
    name = sess.get_inputs()[0].name
    outs = []
    for i in range(0, len(x), batch_size):
        batch = x[i : i + batch_size].float().numpy()
        try:
            y = sess.run(None, {name: batch})[0]
        except Exception as exc:
            raise UserError(
                f"encoder {path} rejects inputs of shape {tuple(batch.shape)} ({type(exc).__name__}); "
                "export it for the profiled model's input size"
            ) from None
        outs.append(np.asarray(y, dtype=np.float64).reshape(len(batch), -1))
    return np.concatenate(outs)


def _run_torch(spec: str, weights: str | None, x: torch.Tensor, batch_size: int) -> np.ndarray:
    from infoq_deploy.importing.sources import load_model

    model = load_model(spec, weights=weights, input_shape=tuple(x.shape[1:]))
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            batch = x[i : i + batch_size].float()
            try:
                y = model.graph(batch)
            except Exception as exc:
                raise UserError(
                    f"encoder {spec} rejects inputs of shape {tuple(batch.shape)} ({type(exc).__name__}); "
                    "use an encoder for the profiled model's input size"
                ) from None
            if isinstance(y, (tuple, list)):
                y = y[0]
            outs.append(y.detach().reshape(len(batch), -1).double().numpy())
    return np.concatenate(outs)
