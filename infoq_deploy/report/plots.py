"""The run report's PNG plots (matplotlib, Agg backend), each written atomically.

Plots take plain lists/dicts (no pipeline objects), so they can be drawn from a
report.json alone. Figures grow with the number of layers and fall back from layer
names to layer indices when there are too many to label, so 50+ layer models stay
legible.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here or in CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from infoq_deploy.core.atomic import atomic_path  # noqa: E402

FLOAT_BITS = 32
DPI = 110
MAX_NAMED = 80  # beyond this many layers, ticks show layer indices instead of names
ACCURACY_LABELS = {"float": "float", "ptq": "PTQ", "finetuned": "fine-tuned", "exported": "exported"}


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _layer_ticks(ax, names: list[str], axis: str) -> None:
    n = len(names)
    if n <= MAX_NAMED:
        labels, positions = names, list(range(n))
        size = 8 if n <= 30 else 6
    else:
        step = max(1, math.ceil(n / 40))
        positions = list(range(0, n, step))
        labels = [str(i) for i in positions]
        size = 7
    if axis == "x":
        ax.set_xticks(positions)
        ax.set_xticklabels(labels, rotation=90, fontsize=size)
    else:
        ax.set_yticks(positions)
        ax.set_yticklabels(labels, fontsize=size)


def plot_bits_per_layer(path: Path, names: list[str], w_bits: list[int], a_bits: list[int]) -> None:
    """Weight and activation bits per layer, side-by-side bars; float layers drawn hatched."""
    n = len(names)
    quantized = [b for b in [*w_bits, *a_bits] if b < FLOAT_BITS]
    top = (max(quantized) if quantized else 8) + 2  # height standing in for "float"
    x = np.arange(n)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * n + 2.0), 4.2))
    for offset, bits, color, label in ((-0.2, w_bits, "tab:blue", "weights"), (0.2, a_bits, "tab:orange", "activations")):
        heights = [b if b < FLOAT_BITS else top for b in bits]
        bars = ax.bar(x + offset, heights, width=0.4, color=color, label=label)
        for bar, b in zip(bars, bits):
            if b >= FLOAT_BITS:
                bar.set_hatch("//")
                bar.set_alpha(0.5)
    any_float = any(b >= FLOAT_BITS for b in [*w_bits, *a_bits])
    ticks = list(range(0, top - 1)) + ([top] if any_float else [])
    ax.set_ylim(0, (top if any_float else top - 2) + 1)
    ax.set_yticks(ticks)
    ax.set_yticklabels([str(t) for t in range(0, top - 1)] + (["float"] if any_float else []))
    ax.set_ylabel("bits")
    ax.set_xlim(-0.7, n - 0.3)
    _layer_ticks(ax, names, "x")
    ax.set_xlabel("layer" if n <= MAX_NAMED else "layer index")
    ax.set_title("Bit-widths per layer")
    handles = [Patch(color="tab:blue", label="weights"), Patch(color="tab:orange", label="activations")]
    if any_float:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="float"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)  # outside: bars reach the top
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_sensitivity_heatmap(path: Path, names: list[str], weights: dict[str, dict[int, float]],
                             activations: dict[str, dict[int, float]],
                             chosen: list[tuple[int, int]] | None = None) -> None:
    """Layers x bit-widths, one panel each for weights and activations; chosen bits outlined.

    Scores span orders of magnitude across bit-widths, so colour is logarithmic; a score
    of 0 is drawn at the smallest positive one, a missing score in grey.
    """
    n = len(names)
    fig, axes = plt.subplots(1, 2, figsize=(11.0, max(3.5, 0.2 * n + 1.8)), squeeze=False, layout="constrained")
    for side, (ax, scores, title) in enumerate(zip(axes[0], (weights, activations), ("weights", "activations"))):
        bits = sorted({b for name in names for b in scores.get(name, {})})
        if not bits:
            ax.set_axis_off()
            ax.set_title(f"{title}: no scores")
            continue
        grid = np.full((n, len(bits)), np.nan)
        for i, name in enumerate(names):
            for j, b in enumerate(bits):
                if b in scores.get(name, {}):
                    grid[i, j] = scores[name][b]
        positive = grid[np.isfinite(grid) & (grid > 0)]
        cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
        if positive.size:
            lo, hi = float(positive.min()), float(positive.max())
            shown = np.where(np.isfinite(grid), np.maximum(grid, lo), np.nan)
            norm = LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 10)
        else:  # all zero: nothing to rank, a flat linear map says so
            shown, norm = grid, None
        im = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02).set_label("score (lower is better)", fontsize=8)
        if n * len(bits) <= 120:
            for i in range(n):
                for j in range(len(bits)):
                    if np.isfinite(grid[i, j]):
                        ax.text(j, i, f"{grid[i, j]:.2g}", ha="center", va="center", fontsize=6, color="white")
        if chosen is not None:
            for i, pair in enumerate(chosen):
                if pair[side] in bits:
                    ax.add_patch(Rectangle((bits.index(pair[side]) - 0.5, i - 0.5), 1, 1, fill=False,
                                           edgecolor="red", linewidth=1.5))
        ax.set_xticks(range(len(bits)))
        ax.set_xticklabels([str(b) for b in bits])
        ax.set_xlabel("bits")
        if side == 0:
            _layer_ticks(ax, names, "y")
        else:  # same rows as the left panel
            ax.set_yticks([])
        ax.set_title(f"{title} sensitivity" + (" (red: chosen)" if chosen is not None else ""), fontsize=10)
    _save(fig, path)


def plot_cost_vs_budget(path: Path, panels: list[dict]) -> None:
    """One panel per metric; bars are cost / budget (or / reference), the dashed line is 1.

    ``panels``: ``[{"metric", "title", "bars": [{"label", "fraction" (None: no
    reference), "text", "kind": "budget" | "reference"}]}]``.
    """
    k = max(1, len(panels))
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k + 0.8, 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        bars = panel["bars"]
        fractions = [b["fraction"] for b in bars]
        heights = [f if f is not None else 0.0 for f in fractions]
        colors = []
        for b in bars:
            if b["fraction"] is None:
                colors.append("lightgrey")
            elif b["kind"] == "budget":
                colors.append("tab:green" if b["fraction"] <= 1 + 1e-9 else "tab:red")
            else:
                colors.append("tab:blue")
        x = np.arange(len(bars))
        drawn = ax.bar(x, heights, color=colors, width=0.6)
        for bar, b in zip(drawn, bars):
            y = bar.get_height()
            ax.text(bar.get_x() + bar.get_width() / 2, y + 0.02, b["text"], ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
        ax.set_xticks(x)
        ax.set_xticklabels([b["label"] for b in bars], fontsize=8, rotation=15)
        ax.set_ylim(0, max([1.0, *heights]) * 1.25)
        ax.set_ylabel("fraction")
        ax.set_title(panel["title"], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[0][len(panels):]:
        ax.set_axis_off()
    fig.suptitle("Cost vs budget (or reference)", fontsize=11)
    _save(fig, path)


def plot_accuracy(path: Path, accuracies: dict[str, float | None]) -> None:
    """Top-1 bars for float / PTQ / fine-tuned / exported; missing stages are left out."""
    stages = [k for k in ACCURACY_LABELS if accuracies.get(k) is not None]
    values = [100.0 * accuracies[k] for k in stages]
    fig, ax = plt.subplots(figsize=(max(3.5, 1.3 * len(stages) + 1.5), 3.8))
    colors = {"float": "tab:grey", "ptq": "tab:orange", "finetuned": "tab:green", "exported": "tab:blue"}
    bars = ax.bar(range(len(stages)), values, color=[colors[k] for k in stages], width=0.6)
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, v + 1, f"{v:.2f}%", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(stages)))
    ax.set_xticklabels([ACCURACY_LABELS[k] for k in stages])
    ax.set_ylim(0, 110)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Accuracy")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
