"""The InfoQ profiler: global, information-flow sensitivity scores (paper Algorithm 1).

``profile_infoq(model, target, data)`` returns a ``SensitivityTable`` whose scores are

    S(l, b) = (1/b) * sum_obs |ΔSMI| / sum_obs SMI_8bit            (paper Eq. 4)

for every quantizable layer l and candidate bit-width b, separately for the layer's
weights and for its input activation, measured at the observer layers downstream of l
(paper Eq. 3 for ΔSMI_XL = |SMI(X_E; L_j,8bit) - SMI(X_E; L_j,b)| and ΔSMI_LY =
|SMI(L_j,8bit; Y) - SMI(L_j,b; Y)|).

Steps (DESIGN.md decisions where the paper is silent):

1. The deployed graph (BatchNorm folded) with every layer's weights and input activation
   fake-quantized to 8 bits by the target's quantizer (``core/quantizer.py``; activation
   ranges from ``calibrate_act_ranges`` on the float model) is the baseline.
2. Labels Y: the data's labels, else the float model's predictions (meta says which). With
   ``label_term="logits"`` (``--label-term logits``) Y is instead a k-means clustering of the
   float model's logits into about one cluster per LOGIT_CLUSTER_SIZE images. The Ross
   estimator needs k + 1 images in a class; ImageNet calibration sets (the paper's: 6 per
   class; ``sample1000``: 1) rarely give that, clusters of the model's outputs do. (Not the
   logits themselves as a continuous Y: with both sides sliced on independent random
   directions of 1,000 and more dimensions, the two projections barely correlate, and on
   EfficientNet-Lite0 the label term came out near 0 at every observer, the logits included.)
3. X_E: ``embedding.embed`` (default: pooled-input PCA, 64 dims; pluggable encoder).
4. Baseline SMI at every candidate observer (``observers.find_candidates``).
5. Correlation analysis: every layer's weights at the lowest candidate bit-width; top-1
   accuracy drop and ΔSMI at all downstream candidates; Pearson r per (candidate,
   kind); keep r > 0.7 (``observers.select``). Those runs are reused as the sweep's
   lowest-bit weight entries.
6. The sweep: every other (layer, bits < 8) for weights and activations; b >= 8 scores
   0 (b = 8 is the baseline itself, wider is no perturbation worse than it; 32 = float).
7. With ``pairwise=True`` (``--pairwise``): every pair of free layers (the target's
   ``layer_choices``) with both weights at each of the lowest two widths, at the later
   layer's observers, against each alone there; ``max(joint - sum alone, 0) / baseline SMI``
   over the pair's mean width is the pair term (``SensitivityTable.pairs``) that the
   allocator's quadratic program adds. Sub-additive pairs score 0: ΔSMI cannot exceed the
   SMI there is, so at the lowest widths pairs saturate, and their negative terms summed
   over all pairs make every layer at the lowest width look cheapest. The plain scores are
   unchanged; ``meta.pairwise.additivity`` keeps both sides of every pair for the
   additivity study (``bench/bench_additivity.py``).

With ``shrink=True`` (``--shrink``) each |ΔSMI| is taken less one standard error of the mean
of its per-direction differences (at least 0): the estimators' noise floor, measured in the
run itself rather than by an extra pass (``--noise-floor``).

Forward passes are the cost: a perturbation at layer l leaves everything before l's
first call unchanged, so the 8-bit prefix is advanced once across the whole sweep and
each perturbed run evaluates only the suffix (``suffix_runner``). Observer outputs are
projected onto their random directions batch by batch, so no activation is ever held
for the whole calibration set.

Randomness and determinism: the directions at an observer (and the estimator's jitter)
come from a seed derived from (seed, observer node), identical for the baseline and
every perturbed run at that observer, so ΔSMI is never projection noise, and no value
depends on the order in which the work is done. Partial results are written atomically
per completed layer to ``<cache>/<key>.partial.json``; a killed run resumes there and
ends with the same table as an uninterrupted one.

Under ``torchrun`` (``core/distributed.py``) the work is split, not repeated: rank 0 alone runs
the float pass, the activation calibration, the embedding, the projections and the baseline, and
sends them to the others; the correlation runs, the sweep and the pair runs are split into
contiguous runs of layers (pairs) of about equal suffix cost, one per rank; the ΔSMI values are
gathered on every rank after each phase, rank 0 selects the observers for all, and rank 0 writes
the table. Every run evaluates the same operations on the same tensors wherever it runs, so the
table is the one a single process writes. Each rank checkpoints to its own partial file; a rerun,
with any number of processes, starts from the union of them.
"""

from __future__ import annotations

import copy
import hashlib
import math
import resource
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from scipy.cluster.vq import kmeans2

from infoq_deploy import __version__
from infoq_deploy.core import distributed
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.quantizer import FLOAT_BITS
from infoq_deploy.importing.deployable import deployable
from infoq_deploy.profile.cache import ProfileCache, cache_key, merge_states
from infoq_deploy.profile.embedding import embed, encoder_identity
from infoq_deploy.profile.mse import calibrate_act_ranges
from infoq_deploy.profile.observers import KINDS, correlate, find_candidates, layer_observers, measured_for, select
from infoq_deploy.profile.smi import directions, mi_projected_continuous, mi_projected_labels
from infoq_deploy.profile.suffix_runner import NonFiniteError, Perturb, SuffixRunner, split_batches
from infoq_deploy.profile.table import SensitivityTable

PROFILER_VERSION = 1  # bump when a change alters the numbers: old cache entries stop matching
BASE_BITS = 8
BATCH_SIZE = 250
PAIR_WIDTHS = 2  # --pairwise measures pairs at the lowest this many weight widths; wider pairs add up
# --noise-floor: the width of the null run, wide enough that the layer differs from the baseline by
# little more than the baseline's own 8-bit rounding (which costs no accuracy)
NULL_BITS = 16
LABEL_TERMS = ("labels", "logits")  # what Y is in SMI(L; Y): the class labels, or clusters of the float logits
LOGIT_CLUSTER_SIZE = 16  # --label-term logits: images per cluster on average, 4 (k + 1) at the default k
SHRINK_SE = 1.0  # --shrink: each |ΔSMI| less this many standard errors of its mean over projections


def min_samples(k: int) -> int:
    """Fewest calibration images the k-NN estimators are run on (k+1 neighbours, some margin)."""
    return max(20, 5 * (k + 1))


def derive_seed(seed: int, *parts: object) -> int:
    text = "|".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def _note(msg: str) -> None:
    print(f"infoq-deploy: note: {msg}", file=sys.stderr)


class _Clock:
    def __init__(self):
        self.forward = 0.0  # model evaluation (prefix + suffix), projections excluded
        self.project = 0.0  # projecting observer outputs onto their directions
        self.mi = 0.0  # 1-D MI estimates

    def to_json(self, total: float) -> dict:
        return {
            "total_s": round(total, 3),
            "forward_s": round(self.forward, 3),
            "estimator_s": round(self.project + self.mi, 3),
            "projection_s": round(self.project, 3),
            "mi_s": round(self.mi, 3),
            "estimator_over_forward": round((self.project + self.mi) / self.forward, 4) if self.forward > 0 else None,
            # the process's peak resident memory so far (Linux reports KiB): model, data, frontiers, all of it
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }


# --------------------------------------------------------------------- validation


def _check_settings(n_proj: int, k: int, seed: int) -> None:
    for name, v, lo in (("n_proj", n_proj, 1), ("k", k, 1), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise UserError(f"{name} must be an integer >= {lo}, got {v!r}; pass a valid --{name.replace('_', '-')}")


def _check_data(model, data, k: int) -> torch.Tensor:
    if data is None:
        raise UserError("the InfoQ profiler needs calibration data; pass --data (an image folder, .npz/.pt or builtin:NAME)")
    x = data.x
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] == 0:
        raise UserError(f"the calibration set {data.source} holds no images; pass a data source with images")
    shape = tuple(model.preprocess.input_shape)
    if tuple(x.shape[1:]) != shape:
        raise UserError(
            f"the calibration images have shape {tuple(x.shape[1:])} but {model.spec} takes {shape}; "
            "load the data with this model's preprocessing (or pass the model's --input-shape)"
        )
    need = min_samples(k)
    if x.shape[0] < need:
        raise UserError(
            f"InfoQ's k-NN mutual-information estimators (k={k}) need at least {need} calibration images, "
            f"got {x.shape[0]}; pass more data or lower k"
        )
    x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise UserError(f"the calibration images from {data.source} contain NaN or inf values; fix the data")
    return x


LABELS_HINT = ("pass more images per class, or --label-term logits to measure the label term against clusters "
               "of the float model's logits")


def _check_labels(y, n: int, num_classes: int, k: int, source: str, what: str, per_class: bool = True,
                  hint: str = LABELS_HINT) -> np.ndarray:
    """Integer class ids in the model's range; with ``per_class`` (the Ross estimator's label
    term) also k + 1 images in at least two classes."""
    y = torch.as_tensor(y)
    if y.dim() != 1 or y.shape[0] != n:
        raise UserError(f"{source} has {tuple(y.shape)} labels for {n} images; pass one integer label per image")
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise UserError(f"the labels of {source} are not integer class ids; pass integer labels")
    y = y.long()
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise UserError(
            f"the labels of {source} range over {lo}..{hi} but the model has {num_classes} classes (0..{num_classes - 1}); "
            "pass labels in the model's class order"
        )
    counts = np.bincount(y.numpy(), minlength=num_classes)
    if per_class and int((counts >= k + 1).sum()) < 2:
        raise UserError(
            f"the {what} of the {n} calibration images put fewer than two classes at {k + 1} or more images each, "
            f"so SMI(L;Y) cannot be estimated with k={k}; {hint}"
        )
    return y.numpy()


def _logit_clusters(logits: torch.Tensor, k: int, seed: int, source: str) -> tuple[np.ndarray, int]:
    """Y for --label-term logits: the float model's logits clustered by k-means (seeded), about
    LOGIT_CLUSTER_SIZE images per cluster, so that most clusters hold the k + 1 images the
    Ross estimator needs; the clusters group images the model treats alike."""
    z = logits.double().numpy()
    n_clusters = max(2, min(z.shape[1], len(z) // LOGIT_CLUSTER_SIZE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an empty cluster is harmless: ids are renumbered below
        _, ids = kmeans2(z, n_clusters, minit="++", seed=np.random.default_rng(derive_seed(seed, "logit-clusters")))
    ids = np.unique(ids, return_inverse=True)[1].astype(np.int64)
    y = _check_labels(ids, len(z), int(ids.max()) + 1, k, source, "k-means clusters of the float model's logits",
                      hint="pass more calibration images")
    return y, int(ids.max()) + 1


def _check_weights(runner: SuffixRunner) -> None:
    for name in runner.layers:
        m = runner.modules[name]
        for pname in ("weight", "bias"):
            p = getattr(m, pname, None)
            if p is not None and not bool(torch.isfinite(p).all()):
                raise UserError(f"layer {name} has NaN or inf in its {pname}; fix the model's weights")


# --------------------------------------------------------------------- the profiler


def _cache_parts(model, target, data, spec, w_bits, a_bits, *, seed, n_proj, k, encoder, use_inverse_bits) -> dict:
    return {
        "profiler": "infoq",
        "profiler_version": PROFILER_VERSION,
        "model_fingerprint": model.fingerprint,
        "data_hash": data.sha256,
        "labels_given": data.y is not None,
        "quant_spec": asdict(spec),
        "weight_bits": w_bits,
        "act_bits": a_bits,
        "baseline_bits": BASE_BITS,
        "n_proj": n_proj,
        "k": k,
        "seed": seed,
        "encoder": encoder_identity(encoder),
        "use_inverse_bits": use_inverse_bits,
        "batch_size": BATCH_SIZE,
    }


def profile_infoq(
    model,
    target,
    data,
    *,
    seed: int = 0,
    n_proj: int = 32,
    k: int = 3,
    encoder: str | None = None,
    use_inverse_bits: bool = True,
    pairwise: bool = False,
    noise_floor: bool = False,
    label_term: str = "labels",
    shrink: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    plots_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> SensitivityTable:
    """InfoQ sensitivity scores of ``model`` for ``target``'s bit-widths on calibration ``data``;
    ``device`` runs the forward passes (``core/devices.py``), the estimators run on the CPU."""
    t_start = time.perf_counter()
    _check_settings(n_proj, k, seed)
    if label_term not in LABEL_TERMS:
        raise UserError(f"label_term must be one of {', '.join(LABEL_TERMS)}, got {label_term!r}")
    x = _check_data(model, data, k)
    spec = target.quant_spec()
    w_bits = sorted({int(b) for b in target.weights.bits})
    a_bits = sorted({int(b) for b in target.activations.bits})
    parts = _cache_parts(
        model, target, data, spec, w_bits, a_bits,
        seed=seed, n_proj=n_proj, k=k, encoder=encoder, use_inverse_bits=use_inverse_bits,
    )
    if pairwise:  # only then, so the keys of plain tables stay as they were
        parts["pairwise"] = {"widths": w_bits[:PAIR_WIDTHS], "version": 2}  # 2: super-additive part only
    if noise_floor:  # likewise
        parts["noise_floor"] = {"null_bits": NULL_BITS}
    if label_term != "labels":  # likewise
        parts["label_term"] = {"y": "kmeans of the float logits", "images_per_cluster": LOGIT_CLUSTER_SIZE}
    if shrink:  # likewise
        parts["shrink"] = {"standard_errors": SHRINK_SE}
    key = cache_key(parts)
    w = distributed.world()
    cache = ProfileCache(cache_dir, key, rank=w.rank if w.distributed else None)
    cached = cache.load_table()
    if cached is not None:
        cached.model, cached.target = model.spec, target.name
        cached.meta["cache_hit"] = True
        if plots_dir is not None:
            _plots(cached, plots_dir)
        return cached
    cache.claim()

    deployed = deployable(model)
    layers = deployed.layers
    names = [layer.name for layer in layers]
    if not layers:
        raise UserError(f"{model.spec} has no quantizable layers (Conv or Linear); nothing to profile")
    clock = _Clock()
    dev = torch.device(device)
    graph = deployed.graph if dev.type == "cpu" else copy.deepcopy(deployed.graph).to(dev)
    batches = split_batches(x.to(dev), BATCH_SIZE)

    # ---- float pass: finite check, predictions; activation ranges (the deployed quantizer's)
    float_runner = SuffixRunner(graph, layers, spec, None, FLOAT_BITS)
    _check_weights(float_runner)
    if float_runner.result_node is None or len(float_runner.placeholders) != 1:
        raise UserError(f"{model.spec} must take one input and return one tensor of logits to be profiled with InfoQ")
    t = time.perf_counter()

    def float_pass():
        try:
            logits = float_runner.run(float_runner.start(batches), 0, {"logits": float_runner.result_node},
                                      check_finite=True)["logits"]
        except NonFiniteError as exc:
            raise UserError(
                f"layer {exc.node} produces NaN or inf activations on the calibration data; "
                "check the model's weights and the input normalisation"
            ) from None
        except RuntimeError as exc:
            raise UserError(f"{model.spec} rejects the calibration inputs of shape {tuple(x.shape[1:])} ({exc}); "
                            "pass data preprocessed for this model") from None
        if logits.dim() != 2:
            raise UserError(f"{model.spec} returns shape {tuple(logits.shape)}, not (batch, classes); "
                            "InfoQ profiles classifiers")
        return logits.cpu(), calibrate_act_ranges(graph, layers, x, spec, batch_size=BATCH_SIZE)

    logits, ranges = distributed.on_main(float_pass)
    num_classes = int(model.preprocess.num_classes or logits.shape[1])
    clock.forward += time.perf_counter() - t

    if data.y is not None:
        labels_source = "true"
        y = _check_labels(data.y, len(x), num_classes, k, data.source, "labels", label_term == "labels")
    else:
        labels_source = "predictions"
        y = _check_labels(logits.argmax(1), len(x), num_classes, k, data.source, "float model's predictions",
                          label_term == "labels")
        if w.main:
            _note(f"{data.source} has no labels; using the float model's own predictions as Y (DESIGN.md)")
    y_t = torch.from_numpy(y)  # the accuracy drops of the correlation analysis: labels (or predictions)
    n_clusters = None
    if label_term == "logits":
        y, n_clusters = _logit_clusters(logits, k, seed, data.source)

    emb = distributed.on_main(lambda: embed(x, encoder, BATCH_SIZE))
    xe = emb.values

    runner = SuffixRunner(graph, layers, spec, ranges, BASE_BITS)
    candidates = find_candidates(runner, tuple(model.preprocess.input_shape))
    by_node = {c.node: c for c in candidates}

    # ---- per-observer directions (same for baseline and every perturbed run there)
    obs_seed = {c.node: derive_seed(seed, "observer", c.node) for c in candidates}
    theta_l: dict[str, torch.Tensor] = {}
    px: dict[str, np.ndarray] = {}

    def l_dirs(node: str) -> torch.Tensor:
        if node not in theta_l:
            theta_l[node] = torch.from_numpy(np.array(directions(by_node[node].dim, n_proj, obs_seed[node], 1), dtype=np.float32))
        return theta_l[node]

    def x_proj(node: str) -> np.ndarray:
        if node not in px:
            t0 = time.perf_counter()
            px[node] = xe @ directions(xe.shape[1], n_proj, obs_seed[node], 0)
            clock.project += time.perf_counter() - t0
        return px[node]

    def projector(node: str):
        theta = l_dirs(node).to(dev)

        def fn(flat: torch.Tensor) -> torch.Tensor:
            t0 = time.perf_counter()
            out = flat @ theta
            clock.project += time.perf_counter() - t0
            return out

        return fn

    def smi(node: str, proj: torch.Tensor, kinds) -> dict[str, np.ndarray]:
        """Per kind, the (n_proj,) 1-D estimates whose mean is the SMI."""
        pl = proj.double().cpu().numpy()
        if not np.all(np.isfinite(pl)):
            raise UserError(f"observer {by_node[node].name} has NaN or inf activations; check the model's weights")
        pxn = x_proj(node) if "XL" in kinds else None
        t0 = time.perf_counter()
        out = {}
        if "XL" in kinds:
            out["XL"] = mi_projected_continuous(pxn, pl, k, obs_seed[node])
        if "LY" in kinds:
            out["LY"] = mi_projected_labels(pl, y, k, obs_seed[node])
        clock.mi += time.perf_counter() - t0
        return out

    def measure(frontier, start: int, wanted: dict[str, tuple[str, ...]], perturb: Perturb | None, logits_too: bool):
        taps = {node: projector(node) for node in wanted}
        if logits_too:
            taps["__logits__"] = (runner.result_node, None)
        t0 = time.perf_counter()
        p0 = clock.project
        out = runner.run(frontier, start, taps, perturb)
        clock.forward += time.perf_counter() - t0 - (clock.project - p0)
        values = {node: smi(node, out[node], kinds) for node, kinds in wanted.items()}
        acc = float((out["__logits__"].argmax(1).cpu() == y_t).double().mean() * 100) if logits_too else None
        return values, acc

    # ---- state: resumed from the partial files of this key (every rank's, merged on every rank)
    state = merge_states(distributed.gather(lambda: cache.load_partial() or {}))
    resumed = bool(state)
    frontier0 = runner.start(batches)

    # ---- directions and input projections of every candidate, drawn once (rank 0) for all
    def draw():
        for c in candidates:
            l_dirs(c.node)
            x_proj(c.node)
        return theta_l, px

    theta_l, px = distributed.on_main(draw)
    if "baseline" not in state:
        values, acc = distributed.on_main(lambda: measure(frontier0, 0, {c.node: KINDS for c in candidates}, None, True))
        state = {"baseline": {"accuracy": acc, "smi": {node: {kd: float(np.mean(a)) for kd, a in v.items()}
                                                        for node, v in values.items()}},
                 "corr": {}, "sweep": {}}
        if shrink:  # the per-projection estimates too, for the standard error of each difference
            state["baseline"]["proj"] = {node: {kd: a.tolist() for kd, a in v.items()} for node, v in values.items()}
        if w.main:
            cache.save_partial(state)
    base_smi: dict[str, dict[str, float]] = state["baseline"]["smi"]
    base_acc: float = state["baseline"]["accuracy"]
    base_proj = {node: {kd: np.asarray(a) for kd, a in v.items()} for node, v in state["baseline"].get("proj", {}).items()}

    def delta(values: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
        """|ΔSMI| at each observer and kind; with --shrink less SHRINK_SE standard errors, at least 0.

        Why: the estimators answer any change, however small, with about the same |ΔSMI|
        (bench/results/noise_floor_*.json). The baseline and the perturbed run share their
        directions, so the spread of the per-direction differences says how much of their
        mean one draw of that noise can make; the soft threshold takes that much off."""
        if not shrink:
            return {node: {kd: abs(base_smi[node][kd] - float(np.mean(a))) for kd, a in v.items()}
                    for node, v in values.items()}
        out = {}
        for node, v in values.items():
            out[node] = {}
            for kd, a in v.items():
                d = base_proj[node][kd] - a
                se = float(np.std(d, ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else 0.0
                out[node][kd] = max(abs(float(np.mean(d))) - SHRINK_SE * se, 0.0)
        return out

    low_w = [b for b in w_bits if b < BASE_BITS]
    low_a = [b for b in a_bits if b < BASE_BITS]
    corr_what, corr_bits = ("w", low_w[0]) if low_w else (("a", low_a[0]) if low_a else (None, None))
    corr_per_layer = 1 if corr_what else 0
    # this rank's layers: the correlation runs and the sweep are split the same way
    mine = distributed.shard(names, [len(runner.nodes) - runner.cut(name) for name in names], w)
    layers_per_rank = distributed.gather(lambda: len(mine))
    null_runs = (bool(low_w) + bool(low_a)) if noise_floor else 0
    total_runs = len(mine) * (corr_per_layer + len(low_w) + len(low_a) - corr_per_layer + null_runs)
    done_runs = sum(1 for name in mine if name in state["corr"]) + sum(
        len(low_w) + len(low_a) - corr_per_layer + null_runs for name in mine if name in state["sweep"]
    )
    bar = _progress(total_runs, done_runs, progress and w.main, model.spec)

    cursor = {"cut": 0, "frontier": frontier0}

    def frontier_at(layer: str):
        cut = runner.cut(layer)
        if cut < cursor["cut"]:
            cursor["cut"], cursor["frontier"] = 0, frontier0
        t0 = time.perf_counter()
        cursor["frontier"] = runner.advance(cursor["frontier"], cursor["cut"], cut)
        clock.forward += time.perf_counter() - t0
        cursor["cut"] = cut
        return cursor["frontier"], cut

    # ---- correlation analysis: every layer at the lowest bit-width, all downstream candidates
    if corr_what:
        def corr_runs():
            for name in mine:
                if name in state["corr"]:
                    continue
                frontier, cut = frontier_at(name)
                wanted = {c.node: KINDS for c in measured_for(runner, name, candidates)}
                values, acc = measure(frontier, cut, wanted, Perturb(name, corr_what, corr_bits), True)
                dsmi = delta(values)
                state["corr"][name] = {"accuracy": acc, "acc_drop": base_acc - acc, "dsmi": dsmi}
                cache.save_partial(state)
                bar.update(1)
            return {name: state["corr"][name] for name in mine}

        for part in distributed.gather(corr_runs):
            state["corr"].update(part)
        acc_drop = {name: state["corr"][name]["acc_drop"] for name in names}
        dsmi_corr = {name: state["corr"][name]["dsmi"] for name in names}

        def analyse():
            correlations = correlate(runner, names, candidates, acc_drop, dsmi_corr)
            return correlations, select(correlations, candidates)

        correlations, selection = distributed.on_main(analyse)
    else:
        acc_drop, dsmi_corr, correlations = {}, {}, []
        selection = select([], candidates)
    if selection.fallback and corr_what and w.main:
        _note(selection.note)

    obs_for = {name: layer_observers(runner, name, selection, candidates) for name in names}
    upstream = {
        c.node: [name for name in names if c.node in runner.descendants(runner.layer_node[name])] for c in candidates
    }

    def wanted_for(name: str) -> dict[str, tuple[str, ...]]:
        kinds_at: dict[str, set[str]] = {}
        for node, kind in obs_for[name][0]:
            kinds_at.setdefault(node, set()).add(kind)
        return {node: tuple(kd for kd in KINDS if kd in s) for node, s in kinds_at.items()}

    # ---- the sweep: remaining (layer, bits) for weights and activations
    def sweep_runs():
        for name in mine:
            if name in state["sweep"]:
                continue
            wanted = wanted_for(name)
            entry: dict[str, dict[str, dict]] = {"w": {}, "a": {}}
            frontier = None
            for what, bits_list in (("w", low_w), ("a", low_a)):
                # the null run first (--noise-floor): the estimator's answer to a change that costs nothing
                for b in ([NULL_BITS] if noise_floor and bits_list else []) + sorted(bits_list, reverse=True):
                    if what == corr_what and b == corr_bits:
                        continue  # the correlation run is this entry: reused below, not rerun
                    if frontier is None:
                        frontier, cut = frontier_at(name)
                    values, _ = measure(frontier, cut, wanted, Perturb(name, what, b), False)
                    entry[what][str(b)] = delta(values)
                    bar.update(1)
            state["sweep"][name] = entry
            cache.save_partial(state)
        return {name: state["sweep"][name] for name in mine}

    for part in distributed.gather(sweep_runs):
        state["sweep"].update(part)
    bar.close()

    def single_dsmi(name: str, what: str, b: int) -> dict:
        if what == corr_what and b == corr_bits:
            return state["corr"][name]["dsmi"]
        return state["sweep"][name][what][str(b)]

    # ---- pair terms (--pairwise): two layers' weights quantized together, at the later one's
    # observers (downstream of both), against each alone there; the ILP gets the difference
    pair_widths = [b for b in low_w if b in w_bits[:PAIR_WIDTHS]]
    pair_list = _free_pairs(target, layers, runner) if pairwise and pair_widths else []
    if pair_list:
        state.setdefault("pairs", {})
        state.setdefault("alone", {})
        my_pairs = distributed.shard(pair_list, [len(runner.nodes) - runner.cut(a) for a, _ in pair_list], w)
        todo = sum(1 for a, b in my_pairs if f"{a}|{b}" not in state["pairs"])
        bar = _progress(len(my_pairs), len(my_pairs) - todo, progress and w.main, f"{model.spec} pairs")

        def pair_runs():
            for a, b in my_pairs:
                if f"{a}|{b}" in state["pairs"]:
                    continue
                wanted = wanted_for(b)
                frontier, cut = frontier_at(a)
                joint = {}
                for ba in pair_widths:
                    alone = f"{a}|{ba}|{_observers_key(wanted)}"  # a alone at b's observers (shared by several b)
                    if alone not in state["alone"]:
                        values, _ = measure(frontier, cut, wanted, Perturb(a, "w", ba), False)
                        state["alone"][alone] = delta(values)
                    for bb in pair_widths:
                        values, _ = measure(frontier, cut, wanted, (Perturb(a, "w", ba), Perturb(b, "w", bb)), False)
                        joint[f"{ba},{bb}"] = delta(values)
                state["pairs"][f"{a}|{b}"] = joint
                cache.save_partial(state)
                bar.update(1)
            return {"pairs": {f"{a}|{b}": state["pairs"][f"{a}|{b}"] for a, b in my_pairs}, "alone": state["alone"]}

        for part in distributed.gather(pair_runs):
            state["pairs"].update(part["pairs"])
            state["alone"].update(part["alone"])
        bar.close()

    def at_observers(name: str, dsmi: dict) -> float:
        """sum of ΔSMI over ``name``'s observers, over their baseline SMI (Eq. 4 before 1/b)."""
        num = sum(dsmi[node][kind] for node, kind in obs_for[name][0])
        den = sum(base_smi[node][kind] for node, kind in obs_for[name][0])
        if not den > 0:
            raise UserError(
                f"the 8-bit baseline carries no measurable information at the observers of layer {name} "
                f"(sum of SMI = {den:.3g}); pass more or more varied calibration data"
            )
        return num / den

    cross: dict[tuple[str, str], dict[tuple[int, int], float]] = {}
    additivity = []
    for a, b in pair_list:
        terms = {}
        for ba in pair_widths:
            for bb in pair_widths:
                joint = at_observers(b, state["pairs"][f"{a}|{b}"][f"{ba},{bb}"])
                alone = (at_observers(b, state["alone"][f"{a}|{ba}|{_observers_key(wanted_for(b))}"])
                         + at_observers(b, single_dsmi(b, "w", bb)))
                # the singles carry 1/b (Eq. 4); a pair's term is divided by the pair's mean width.
                # Only the super-additive part is kept: ΔSMI is bounded by the SMI there is, so two
                # layers at the lowest widths saturate (joint < sum), and those negative terms, summed
                # over every pair, made quantizing everything to the lowest width look cheapest
                # (bench/results/additivity_cifar10-resnet20.json, "pair terms unclipped")
                terms[(ba, bb)] = max(joint - alone, 0.0) / ((ba + bb) / 2 if use_inverse_bits else 1.0)
                additivity.append({"layers": [a, b], "w_bits": [ba, bb], "joint": joint, "sum_alone": alone})
        cross[(a, b)] = terms

    # ---- scores (Eq. 4), from the stored ΔSMI values only (resumed == uninterrupted)
    def floor(name: str, what: str) -> float:
        """ΔSMI over baseline SMI of the layer's null run (--noise-floor)."""
        return at_observers(name, state["sweep"][name][what][str(NULL_BITS)])

    def score(name: str, what: str, b: int) -> float:
        # --noise-floor: the baseline width is scored like the others, by its ΔSMI against the layer
        # at 16 bits. The estimators answer any change of an observer's values, however small, with
        # about the same |ΔSMI| (one draw of their noise against another): on CIFAR-10 ResNet-20, 6-,
        # 7- and 16-bit weights score alike (bench/results/noise_floor_cifar10-resnet20.json). A
        # baseline scored 0 made every narrower width carry that floor and 8 bits none of it
        null_run = noise_floor and str(NULL_BITS) in state["sweep"][name][what]  # none without widths below 8
        if b >= FLOAT_BITS or (b >= BASE_BITS and not null_run):
            return 0.0
        s = floor(name, what) if b >= BASE_BITS else at_observers(name, single_dsmi(name, what, b))
        return s / b if use_inverse_bits else s

    weights = {name: {b: score(name, "w", b) for b in w_bits} for name in names}
    activations = {name: {b: score(name, "a", b) for b in a_bits} for name in names}
    for what, table in (("weight", weights), ("activation", activations)):
        for name, d in table.items():
            for b, v in d.items():
                if not (math.isfinite(v) and v >= 0):
                    raise UserError(f"the InfoQ score of layer {name} at {b}-bit {what}s is {v}; this is a bug, please report it")

    total = time.perf_counter() - t_start
    fallback_layers = {name: fb for name, (pairs, fb) in obs_for.items() if fb}
    meta = {
        "method": "infoq",
        "tool_version": __version__,
        "profiler_version": PROFILER_VERSION,
        "settings": {
            "n_proj": n_proj,
            "k": k,
            "seed": seed,
            "calib_size": int(len(x)),
            "encoder": emb.info,
            "use_inverse_bits": use_inverse_bits,
            "noise_floor": {"null_bits": NULL_BITS} if noise_floor else None,
            "label_term": label_term,
            "logit_clusters": n_clusters,
            "shrink": {"standard_errors": SHRINK_SE} if shrink else None,
            "baseline_bits": BASE_BITS,
            "quant_spec": asdict(spec),
            "weight_bits": w_bits,
            "act_bits": a_bits,
            "batch_size": BATCH_SIZE,
            "device": str(dev),  # not in the cache key: any device computes this table (README, "devices")
            "estimators": {"XL": "KSG (Kraskov et al. 2003), sliced",
                           "LY": "Ross (2014) mixed, sliced"
                           + (f", against {n_clusters} k-means clusters of the float model's logits"
                              if label_term == "logits" else "")},
        },
        "model_fingerprint": model.fingerprint,
        "data_hash": data.sha256,
        "data_source": data.source,
        "labels": labels_source,
        "observers": [
            {"name": c.name, "node": c.node, "kind": c.kind, "r": None if c.r is None else round(c.r, 6), "n": c.n}
            for c in selection.observers
        ],
        "correlation_fallback": selection.fallback,
        "correlation_note": selection.note,
        "correlation": {
            "what": {"w": "weights", "a": "activations", None: None}[corr_what],
            "bits": corr_bits,
            "threshold": 0.7,
            "acc_drop": acc_drop,
            "table": [c.to_json() for c in correlations],
            # the points each r was computed from: {observer node: {kind: {upstream layer: ΔSMI}}}
            "dsmi": {
                c.node: {kd: {name: dsmi_corr[name][c.node][kd] for name in upstream[c.node]} for kd in KINDS}
                for c in candidates
            } if corr_what else {},
        },
        "candidates": [{"name": c.name, "node": c.node, "role": c.role, "dim": c.dim} for c in candidates],
        "layer_observers": {
            name: [{"name": by_node[node].name, "kind": kind} for node, kind in obs_for[name][0]] for name in names
        },
        "layer_observer_fallback": fallback_layers,
        "baseline": {
            "accuracy": base_acc,
            "smi": {by_node[node].name: v for node, v in base_smi.items()},
        },
        **({"pairwise": {
            "widths": pair_widths,
            "pairs": len(pair_list),
            "observers": "the later layer's (downstream of both); a term is max(joint - a alone - b alone, 0) / "
                         "baseline SMI" + (", over the pair's mean width" if use_inverse_bits else ""),
            "sub_additive_dropped": sum(1 for r in additivity if r["joint"] < r["sum_alone"]),
            # normalised ΔSMI of each pair quantized together against the sum of each alone: the additivity study
            "additivity": additivity,
        }} if pair_list else {}),
        # --noise-floor: each layer's null-run ΔSMI over baseline SMI, its score at 8 bits times 8
        **({"noise_floor": {name: {what: floor(name, what) for what, bl in (("w", low_w), ("a", low_a)) if bl}
                            for name in names}} if noise_floor else {}),
        "timings": clock.to_json(total),  # rank 0's, under torchrun
        **({"distributed": {"world_size": w.size, "layers_per_rank": layers_per_rank}} if w.distributed else {}),
        "resumed": resumed,
        "cache_key": key,
        "cache_hit": False,
    }
    table = SensitivityTable(
        model=model.spec, target=target.name, layers=layers, weights=weights, activations=activations, meta=meta,
        pairs=cross,
    )
    if w.main:  # every rank holds the same table; one writes it
        cache.save_table(table)
        if plots_dir is not None:
            _plots(table, plots_dir)
    return table


profile = profile_infoq  # the entry point of profile/registry.py
DISTRIBUTED = True  # splits its runs across torchrun's processes


def notes(table: SensitivityTable) -> list[str]:
    """What the run report says about an InfoQ table: labels, embedding, cache."""
    out = []
    if table.meta.get("labels") == "predictions":
        out.append("the calibration data has no labels: InfoQ used the float model's predictions as labels")
    enc = table.meta.get("settings", {}).get("encoder", {})
    if enc:
        detail = f" ({enc['note']})" if enc.get("note") else ""
        out.append(f"InfoQ input embedding: {enc.get('name')}{detail}")
    pw = table.meta.get("pairwise")
    if pw:
        out.append(f"InfoQ --pairwise: ΔSMI of {pw['pairs']} layer pairs quantized together at {pw['widths']}-bit "
                   "weights; the allocation solved the quadratic program with their cross terms")
    if table.meta.get("settings", {}).get("label_term") == "logits":
        out.append(f"InfoQ --label-term logits: the label term SMI(L;Y) measured against "
                   f"{table.meta['settings'].get('logit_clusters')} k-means clusters of the float model's logits, "
                   "not the class labels")
    sh = table.meta.get("settings", {}).get("shrink")
    if sh:
        out.append(f"InfoQ --shrink: each |ΔSMI| less {sh['standard_errors']:g} standard error of its mean over "
                   "projections (at least 0)")
    nf = table.meta.get("settings", {}).get("noise_floor")
    if nf:
        out.append(f"InfoQ --noise-floor: each layer's 8-bit score is its ΔSMI against the layer at {nf['null_bits']} bits")
    tm = table.meta.get("timings", {})
    if table.meta.get("cache_hit"):
        out.append("sensitivity table taken from the profiling cache (same model, data and settings)")
    elif tm.get("total_s") is not None:
        dist = table.meta.get("distributed")
        out.append(f"InfoQ profile: {tm['total_s']:.1f} s"
                   + (f" on {dist['world_size']} processes" if dist else "")
                   + f", estimators {tm.get('estimator_s', 0):.1f} s of it"
                   + (f", peak memory {tm['peak_rss_mb']:.0f} MB" if tm.get("peak_rss_mb") is not None else ""))
    return out


def _free_pairs(target, layers, runner: SuffixRunner) -> list[tuple[str, str]]:
    """Every pair of layers whose weight bits the allocation may choose, ordered by where the
    earlier one's suffix starts (so the shared prefix is advanced once)."""
    n = len(layers)
    free = [l.name for l in layers if len({w for w, _ in target.layer_choices(l.order, n)}) > 1]
    free.sort(key=runner.cut)
    return [(a, b) for i, a in enumerate(free) for b in free[i + 1:]]


def _observers_key(wanted: dict[str, tuple[str, ...]]) -> str:
    """The observers (and kinds) a run measures, as a key: a layer alone is measured once per set."""
    return "+".join(f"{node}:{''.join(kinds)}" for node, kinds in sorted(wanted.items()))


def _progress(total: int, initial: int, enabled: bool, what: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        desc=f"InfoQ {what}",
        unit="run",
        file=sys.stderr,
        dynamic_ncols=True,
    )


def _plots(table: SensitivityTable, plots_dir: str | Path) -> None:
    from infoq_deploy.profile.plots import plot_observers, plot_sensitivity

    out = Path(plots_dir)
    plot_sensitivity(table, out / "sensitivity.png")
    plot_observers(table.meta, out / "observers.png")
