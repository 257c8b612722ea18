"""Nearest-neighbour mutual-information estimators for 1-D variables, column-wise.

Two estimators, each applied independently to every column of an (N, P) matrix
(one column = one random projection in sliced MI, see ``smi.py``), in nats:

- KSG, algorithm 1 of Kraskov, Stoegbauer & Grassberger (2003), for two continuous
  variables: eps_i = max-norm distance to the k-th neighbour in the joint (x, y)
  plane; n_x(i), n_y(i) = number of other samples strictly closer than eps_i in each
  marginal; I = psi(k) + psi(N) - < psi(n_x + 1) + psi(n_y + 1) >.
- Ross (2014), PLoS ONE 9(2): e87357, for a continuous variable against discrete
  labels: d_i = distance to the k-th neighbour among samples of the same label;
  m_i = number of other samples (any label) within d_i, the k-th neighbour included;
  I = psi(N) - < psi(N_{y_i}) > + psi(k) - < psi(m_i) >.

Estimates are returned raw, not clipped at 0: sliced MI averages them and InfoQ takes
differences of those averages, and clipping each column would bias both upward.

Preprocessing, identical in the fast and the reference implementations:
- each column is standardised (zero mean, unit variance): KSG's max-norm mixes the
  two coordinates, so the estimate depends on their relative scale (Kraskov et al.
  rescale too); Ross is scale-free, standardised only so the jitter below means the
  same thing everywhere. A constant column stays 0 and becomes pure jitter, i.e.
  independent of everything, which is what it is.
- seeded Gaussian jitter of 1e-10 standard deviations is added to every value.
  Quantized data carry exact ties, and with ties a k-th neighbour distance can be 0
  (then "strictly closer than 0" counts nothing) or the k-th neighbour is not unique,
  and the counts stop meaning what the estimators assume. The jitter orders tied
  values at random; it is far below any quantization step (>= 2^-16 of a range), so
  it never moves a value past a genuinely distinct neighbour. Tested: a continuous
  variable against one rounded to 0.5 or 2 standard deviations estimates the exact
  MI of that quantized pair within 0.05 nats. (After a random projection of a
  d-dimensional activation, values tie only when whole activation vectors coincide:
  dead layers, collapsed outputs. Raw 1-D quantized values tie constantly.)
  The jitter has its own random stream (see _standardise_and_jitter), and the same
  seed gives the same jitter for the same shape, so two calls on matrices of equal
  shape (8-bit baseline vs perturbed activations) share it.

Speed (bench/bench_smi.py): KSG's joint k-NN search uses one scipy cKDTree per
column (query cost dominates; a vectorised numpy search in a window of the x-sorted
order, exact only with a tree fallback, was no faster in a trial); the marginal
counts use sorted columns and np.searchsorted instead of 1-D trees. Ross needs no
tree: in 1-D the k nearest neighbours of a point are a contiguous run of its sorted
class, so d_i is a min over k+1 windows, vectorised over all columns. The
``*_kdtree`` functions are the straightforward tree-only versions (as in sklearn),
kept as the reference the fast ones are tested and benchmarked against.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import digamma

from infoq_deploy.core.errors import UserError

JITTER = 1e-10  # in standard deviations of the column
_JITTER_STREAM = 0x4A17

# searchsorted compares x_j with the rounded sum x_i +- r, while the definitions compare
# the rounded difference |x_j - x_i| with r; the two disagree within a few ulps of the
# bound, e.g. for the neighbour that defines r itself, or (on quantized data, whose
# neighbours sit one step away on both sides up to jitter) a point that happens to lie
# as far on the other side. So searchsorted runs on bounds widened by 4 ulps, which
# can only include too much, and the few values at the edges are then tested with the
# definition itself: counts equal the brute-force ones exactly.
_ULPS = 4 * np.finfo(np.float64).eps


# ----------------------------------------------------------------------------- input


def _as_columns(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise UserError(f"{name} must be a 1-D or 2-D (samples, columns) array, got shape {a.shape}; reshape it.")
    if not np.all(np.isfinite(a)):
        raise UserError(f"{name} contains NaN or inf values; remove or fix those samples before estimating MI.")
    return a


def _one_d(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise UserError(f"{name} must be a 1-D array of samples, got shape {a.shape}; use the *_columns function for (N, P) input.")
    return a


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_k_n_seed(k: int, n: int, seed: int) -> None:
    if not _is_int(seed) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}.")
    if not _is_int(k) or k < 1:
        raise UserError(f"k must be a positive integer, got {k!r}.")
    if n < k + 1:
        raise UserError(f"got {n} samples but the k={k} nearest-neighbour estimator needs at least {k + 1}; pass more samples or lower k.")


def _check_continuous(x, y, k: int, seed: int, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    nx, ny = names
    x, y = _as_columns(x, nx), _as_columns(y, ny)
    if x.shape[0] != y.shape[0]:
        raise UserError(f"{nx} has {x.shape[0]} samples but {ny} has {y.shape[0]}; pass the same samples for both.")
    if x.shape[1] != y.shape[1]:
        raise UserError(f"{nx} has {x.shape[1]} columns but {ny} has {y.shape[1]}; columns are estimated pairwise, so pass the same number.")
    _check_k_n_seed(k, x.shape[0], seed)
    return x, y


def _check_labels(x, labels, k: int, seed: int, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    nx, ny = names
    x = _as_columns(x, nx)
    y = np.asarray(labels)
    if y.ndim != 1:
        raise UserError(f"{ny} must be a 1-D array of class ids, got shape {y.shape}; flatten it or take the argmax.")
    if y.shape[0] != x.shape[0]:
        raise UserError(f"{nx} has {x.shape[0]} samples but {ny} has {y.shape[0]}; pass one label per sample.")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
            raise UserError(f"{ny} must be integer class ids, got dtype {y.dtype}; convert them (e.g. argmax of logits).")
    _check_k_n_seed(k, x.shape[0], seed)
    return x, y


# ------------------------------------------------------------------ preprocessing


def _standardise_and_jitter(cols: list[np.ndarray], seed: int) -> list[np.ndarray]:
    # own stream: with default_rng(seed) itself, data drawn by the caller from
    # default_rng(seed) would get jitter proportional to the data, which breaks ties
    # by the unrounded values and silently undoes a rounding
    rng = np.random.default_rng([seed, _JITTER_STREAM])
    out = []
    for a in cols:
        a = a - a.mean(axis=0)
        sd = a.std(axis=0)
        a = a / np.where(sd > 0, sd, 1.0)
        out.append(a + JITTER * rng.standard_normal(a.shape))
    return out


def _keep_labels(labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask of samples whose label has >= k+1 members, and their label ids 0..C-1.

    Ross's d_i needs k same-label neighbours, so smaller classes are dropped from the
    whole estimate (N, N_y and m_i are all counted over the kept samples). sklearn's
    mutual_info_classif instead drops only singleton labels and lowers k for classes
    of 2..k members; a constant k keeps psi(k) one term and the bias uniform.
    """
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    keep = counts[inv] >= k + 1
    _, ids = np.unique(inv[keep], return_inverse=True)
    return keep, ids.reshape(-1)


# ------------------------------------------------------------------------- KSG


def _ksg_kth_distance(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    eps = np.empty_like(x)
    for p in range(x.shape[1]):  # one tree per column: query time dominates, a loop over 16-64 columns is cheap
        pts = np.column_stack((x[:, p], y[:, p]))
        eps[:, p] = cKDTree(pts, balanced_tree=False).query(pts, k=[k + 1], p=np.inf)[0][:, 0]
    return eps


def _count_within(a: np.ndarray, r: np.ndarray, strict: bool) -> np.ndarray:
    """Per column p and row i, number of j != i with |a_jp - a_ip| < r_ip (strict) or <= r_ip.

    The rows of the result are in each column's sorted order, not in the input order:
    the estimators only average over rows, and sorted queries make searchsorted ~3x
    faster (each search starts near the previous one).
    """
    order = np.argsort(a, axis=0)
    srt = np.take_along_axis(a, order, axis=0)
    r = np.take_along_axis(r, order, axis=0)
    slack = r + _ULPS * (np.abs(srt) + r)
    lo_b, hi_b = srt - slack, srt + slack
    lo = np.empty(a.shape, dtype=np.int64)
    hi = np.empty(a.shape, dtype=np.int64)
    for p in range(a.shape[1]):
        lo[:, p] = np.searchsorted(srt[:, p], lo_b[:, p], "left")
        hi[:, p] = np.searchsorted(srt[:, p], hi_b[:, p], "right")
    hi -= 1  # [lo, hi] is now a superset holding the query row itself

    # trim the edges with the definition; after the first pass only the few entries
    # that moved are looked at again
    cols = a.shape[1]
    vals, flat_r = srt.ravel(), r.ravel()  # row i of column p is the query a_ip itself
    flat_lo, flat_hi = lo.ravel(), hi.ravel()
    col = np.tile(np.arange(cols), a.shape[0])
    for idx, step in ((flat_lo, 1), (flat_hi, -1)):
        active = np.arange(idx.size)
        while active.size:
            dist = np.abs(vals[idx[active] * cols + col[active]] - vals[active])
            out = (dist >= flat_r[active]) if strict else (dist > flat_r[active])
            active = active[out & (flat_lo[active] <= flat_hi[active])]
            idx[active] += step
    return np.maximum(hi - lo + 1, 0) - 1


def _ksg(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    eps = _ksg_kth_distance(x, y, k)
    nx = _count_within(x, eps, strict=True)  # rows in x order and in y order: only
    ny = _count_within(y, eps, strict=True)  # their column means are used
    n = x.shape[0]
    return digamma(k) + digamma(n) - np.mean(digamma(nx + 1), axis=0) - np.mean(digamma(ny + 1), axis=0)


def ksg_columns(x, y, k: int = 3, seed: int = 0, *, names: tuple[str, str] = ("x", "y")) -> np.ndarray:
    """KSG estimate of I(x[:, p]; y[:, p]) in nats for every column p; x, y: (N, P) or (N,).

    names: what the caller calls x and y, for error messages.
    """
    x, y = _check_continuous(x, y, k, seed, names)
    x, y = _standardise_and_jitter([x, y], seed)
    return _ksg(x, y, k)


def ksg(x, y, k: int = 3, seed: int = 0) -> float:
    """KSG estimate of I(x; y) in nats for two continuous 1-D samples of equal length."""
    return float(ksg_columns(_one_d(x, "x"), _one_d(y, "y"), k, seed)[0])


def ksg_columns_kdtree(x, y, k: int = 3, seed: int = 0) -> np.ndarray:
    """Reference for ksg_columns: trees for the joint search and for both marginal counts."""
    x, y = _check_continuous(x, y, k, seed, ("x", "y"))
    x, y = _standardise_and_jitter([x, y], seed)
    n, cols = x.shape
    out = np.empty(cols)
    for p in range(cols):
        joint = np.column_stack((x[:, p], y[:, p]))
        eps = cKDTree(joint).query(joint, k=k + 1, p=np.inf)[0][:, -1]
        r = np.nextafter(eps, 0)  # ball queries count <= r; the definition is strict
        nx = cKDTree(x[:, p:p + 1]).query_ball_point(x[:, p:p + 1], r, p=np.inf, return_length=True) - 1
        ny = cKDTree(y[:, p:p + 1]).query_ball_point(y[:, p:p + 1], r, p=np.inf, return_length=True) - 1
        out[p] = digamma(k) + digamma(n) - np.mean(digamma(nx + 1) + digamma(ny + 1))
    return out


# ------------------------------------------------------------------------ Ross


def _ross(x: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    n, cols = x.shape
    counts = np.bincount(ids)
    by_value = np.argsort(x, axis=0)
    # stable sort by label of the value-sorted order: rows grouped by class, sorted
    # by value inside each class; the class blocks sit at the same rows in every column
    grouped = np.take_along_axis(by_value, np.argsort(ids[by_value], axis=0, kind="stable"), axis=0)
    xc = np.take_along_axis(x, grouped, axis=0)

    ends = np.cumsum(counts)
    row_cls = np.repeat(np.arange(counts.size), counts)
    start, end = (ends - counts)[row_cls], ends[row_cls]
    rows = np.arange(n)
    # the k nearest same-class neighbours of row r form a run [s, s+k] containing r
    d = np.full(x.shape, np.inf)
    for a in range(k + 1):
        s = rows - a
        ok = (s >= start) & (s + k < end)
        s = np.clip(s, 0, n - 1 - k)
        run = np.maximum(xc - xc[s], xc[s + k] - xc)
        d = np.where(ok[:, None], np.minimum(d, run), d)

    m = _count_within(xc, d, strict=False)
    return digamma(n) - np.mean(digamma(counts[ids])) + digamma(k) - np.mean(digamma(m), axis=0)


def _ross_prepared(x, labels, k: int, seed: int, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    x, labels = _check_labels(x, labels, k, seed, names)
    keep, ids = _keep_labels(labels, k)
    if not keep.any():
        raise UserError(f"no label has the {k + 1} samples the k={k} estimator needs; pass more samples per class or lower k.")
    (x,) = _standardise_and_jitter([x[keep]], seed)
    return x, ids


def ross_columns(x, labels, k: int = 3, seed: int = 0, *, names: tuple[str, str] = ("x", "labels")) -> np.ndarray:
    """Ross estimate of I(x[:, p]; labels) in nats for every column p; x: (N, P) or (N,).

    Samples whose label has fewer than k+1 members are dropped (see _keep_labels).
    names: what the caller calls x and labels, for error messages.
    """
    x, ids = _ross_prepared(x, labels, k, seed, names)
    return _ross(x, ids, k)


def ross(x, labels, k: int = 3, seed: int = 0) -> float:
    """Ross estimate of I(x; labels) in nats for a continuous 1-D sample and integer labels."""
    return float(ross_columns(_one_d(x, "x"), labels, k, seed)[0])


def ross_columns_kdtree(x, labels, k: int = 3, seed: int = 0) -> np.ndarray:
    """Reference for ross_columns: a tree per class for d_i, one tree over all for m_i."""
    x, ids = _ross_prepared(x, labels, k, seed, ("x", "labels"))
    n, cols = x.shape
    counts = np.bincount(ids)
    out = np.empty(cols)
    for p in range(cols):
        col = x[:, p:p + 1]
        d = np.empty(n)
        for c in range(counts.size):
            sel = ids == c
            d[sel] = cKDTree(col[sel]).query(col[sel], k=k + 1)[0][:, -1]
        m = cKDTree(col).query_ball_point(col, d, return_length=True) - 1
        out[p] = digamma(n) - np.mean(digamma(counts[ids])) + digamma(k) - np.mean(digamma(m))
    return out
