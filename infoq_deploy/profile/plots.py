"""Plots of an InfoQ profile (matplotlib, Agg backend, written atomically as PNG).

- ``sensitivity.png``: score vs layer index, one line per bit-width below 8 (8 and
  float score 0 by definition), weights and activations side by side; log y when the
  positive scores span more than two decades (the paper's Fig. 2).
- ``observers.png``: ΔSMI vs top-1 accuracy drop over the single-layer lowest-bit
  perturbations, for the best (candidate, kind) pairs, Pearson r in each title (the
  paper's Fig. 1). Selected observers first.
"""

from __future__ import annotations

import math
from pathlib import Path

from infoq_deploy.core.atomic import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_sensitivity(table, path: str | Path) -> None:
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    names = [layer.name for layer in table.layers]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=False)
    for ax, (title, scores) in zip(axes, (("weights", table.weights), ("input activations", table.activations))):
        bits = sorted({b for d in scores.values() for b in d if b < 8})
        positive = [v for d in scores.values() for b, v in d.items() if b < 8 and v > 0]
        log = bool(positive) and max(positive) / min(positive) > 100
        cmap = plt.get_cmap("viridis", max(len(bits), 2))
        for i, b in enumerate(bits):
            xs = [j for j, n in enumerate(names) if b in scores.get(n, {})]
            ys = [scores[names[j]][b] for j in xs]
            if log:  # zeros cannot be drawn on a log axis
                xs, ys = zip(*[(x, y) for x, y in zip(xs, ys) if y > 0]) if any(y > 0 for y in ys) else ((), ())
            ax.plot(xs, ys, marker="o", ms=3, lw=1.2, color=cmap(i), label=f"{b}-bit")
        if log:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"InfoQ sensitivity, {title}")
        ax.set_xlabel("layer index")
        ax.set_ylabel("score S(l, b)" + (" (log)" if log else ""))
        ax.grid(True, alpha=0.3)
        if bits:
            ax.legend(fontsize=8, ncol=2)
        else:
            ax.text(0.5, 0.5, "no bit-width below 8", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"{table.model} on {table.target}", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_observers(meta: dict, path: str | Path, max_panels: int = 6) -> None:
    plt = _pyplot()
    corr = meta.get("correlation") or {}
    table = [c for c in corr.get("table", []) if c.get("r") is not None]
    selected = {(o["node"], o["kind"]) for o in meta.get("observers", [])}
    table.sort(key=lambda c: ((c["node"], c["kind"]) not in selected, -c["r"]))
    shown = table[:max_panels]
    acc = corr.get("acc_drop", {})
    cols = min(3, max(1, len(shown)))
    rows = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, c in zip(axes.flat, shown):
        ax.set_visible(True)
        pts = corr["dsmi"][c["node"]][c["kind"]]
        layers = list(pts)
        ax.scatter([pts[l] for l in layers], [acc[l] for l in layers], s=18)
        label = "ΔSMI(X_E; L)" if c["kind"] == "XL" else "ΔSMI(L; Y)"
        mark = " (selected)" if (c["node"], c["kind"]) in selected else ""
        ax.set_title(f"{c['name']} {c['kind']}: r = {c['r']:.2f}{mark}", fontsize=9)
        ax.set_xlabel(f"{label} [nats]", fontsize=8)
        ax.set_ylabel("top-1 drop [points]", fontsize=8)
        ax.grid(True, alpha=0.3)
    if not shown:
        ax = axes.flat[0]
        ax.set_visible(True)
        ax.text(0.5, 0.5, "no correlation could be computed", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    bits = corr.get("bits")
    fig.suptitle(f"Observer correlation: single-layer {bits}-bit {corr.get('what') or ''} vs accuracy drop", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: str | Path) -> None:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
