"""Sliced mutual information (Goldfeld et al. 2022), as InfoQ uses it.

SMI(U; V) = E over random unit directions (theta_u, theta_v) of I(theta_u' U; theta_v' V),
estimated as the mean over n_proj drawn pairs of a 1-D estimate (KSG for two
continuous sides, Ross against discrete labels; see mi_estimators.py, which also
standardises and jitters every projection). Everything is in nats.

Reproducibility: the InfoQ sweep compares the 8-bit baseline with thousands of
perturbed models at the same observer, and the difference is only meaningful on the
SAME directions. So directions are a pure function of (dim, n_proj, seed, stream),
cached, and the sweep can project once with `direction_pair`/`directions` +
`project` and then call `mi_projected_*` on the projected matrices. The v side of a
pair uses its own random stream: same-dimension sides must not share directions
(theta_u = theta_v would bias SMI between a space and a noisy copy of it upward).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from infoq_deploy.core.errors import UserError
from infoq_deploy.profile.mi_estimators import ksg_columns, ross_columns


@lru_cache(maxsize=16)  # a 16k x 64 matrix is 8 MB
def _directions(dim: int, n_proj: int, seed: int, stream: int) -> np.ndarray:
    g = np.random.default_rng([seed, stream]).standard_normal((dim, n_proj))
    g /= np.linalg.norm(g, axis=0)
    g.setflags(write=False)  # shared through the cache
    return g


def directions(dim: int, n_proj: int, seed: int, stream: int = 0) -> np.ndarray:
    """(dim, n_proj) matrix of random unit column vectors; same arguments -> same matrix (read-only)."""
    for name, val in (("dim", dim), ("n_proj", n_proj)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise UserError(f"{name} must be a positive integer, got {val!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}.")
    return _directions(int(dim), int(n_proj), int(seed), int(stream))


def direction_pair(du: int, dv: int, n_proj: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (theta_u, theta_v) smi_continuous draws: u side stream 0, v side stream 1."""
    return directions(du, n_proj, seed, 0), directions(dv, n_proj, seed, 1)


def _samples(a, name: str) -> np.ndarray:
    """(N, ...) array -> (N, d), float32 kept (activations are float32; halves the matmul)."""
    a = np.asarray(a)
    if a.ndim < 2:
        raise UserError(f"{name} must have shape (samples, features...), got shape {a.shape}; add a feature axis.")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise UserError(f"{name} must be numeric, got dtype {a.dtype}.")
    dtype = np.float32 if a.dtype in (np.float16, np.float32) else np.float64
    return a.reshape(a.shape[0], -1).astype(dtype, copy=False)


def project(a, theta: np.ndarray) -> np.ndarray:
    """(N, ...) samples flattened to (N, d), times theta (d, P) -> (N, P) float64 projections."""
    a = _samples(a, "the samples")
    if a.shape[1] != theta.shape[0]:
        raise UserError(f"the samples have {a.shape[1]} features but the directions have {theta.shape[0]}; draw directions for that dimension.")
    return (a @ theta.astype(a.dtype, copy=False)).astype(np.float64, copy=False)


def mi_projected_continuous(pu, pv, k: int = 3, seed: int = 0) -> np.ndarray:
    """(P,) KSG estimates of I(pu[:, p]; pv[:, p]) for already-projected (N, P) matrices."""
    return ksg_columns(pu, pv, k, seed, names=("pu", "pv"))


def mi_projected_labels(pu, y, k: int = 3, seed: int = 0) -> np.ndarray:
    """(P,) Ross estimates of I(pu[:, p]; y) for an already-projected (N, P) matrix and (N,) labels."""
    return ross_columns(pu, y, k, seed, names=("pu", "y"))


def _check_n_proj(n_proj) -> None:
    if isinstance(n_proj, bool) or not isinstance(n_proj, (int, np.integer)) or n_proj < 1:
        raise UserError(f"n_proj must be a positive integer, got {n_proj!r}.")


def smi_continuous(u, v, n_proj: int, k: int = 3, seed: int = 0) -> float:
    """SMI(u; v) in nats for (N, du) and (N, dv) samples (extra axes are flattened)."""
    _check_n_proj(n_proj)
    u, v = _samples(u, "u"), _samples(v, "v")
    if u.shape[0] != v.shape[0]:
        raise UserError(f"u has {u.shape[0]} samples but v has {v.shape[0]}; pass the same samples for both.")
    tu, tv = direction_pair(u.shape[1], v.shape[1], n_proj, seed)
    # a non-finite input value makes its projections non-finite, so the estimator's
    # check on the small projected matrices catches it without scanning u and v
    return float(np.mean(ksg_columns(project(u, tu), project(v, tv), k, seed, names=("u", "v"))))


def smi_labels(u, y, n_proj: int, k: int = 3, seed: int = 0) -> float:
    """SMI(u; y) in nats for (N, du) samples (extra axes flattened) and (N,) integer labels."""
    _check_n_proj(n_proj)
    u = _samples(u, "u")
    tu = directions(u.shape[1], n_proj, seed, 0)
    return float(np.mean(ross_columns(project(u, tu), y, k, seed, names=("u", "y"))))
