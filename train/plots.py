"""PNG plots for evaluation: ROC curves and score histograms (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.ticker import MaxNLocator

from train import metrics

Series = dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]]


def plot_roc(series: Series, path: Path, title: str = "ROC") -> Path:
    """One ROC curve per name (names with a single class are skipped), AUROC in the legend."""
    fig, ax = plt.subplots(figsize=(5.5, 5.0), dpi=120)
    for name, (scores, labels) in series.items():
        auc = metrics.auroc(scores, labels)
        if math.isnan(auc):
            continue
        fpr, tpr, _ = metrics.roc_curve(scores, labels)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {100 * auc:.2f})", linewidth=1.4)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_histograms(
    series: Series,
    path: Path,
    threshold: float | None = None,
    title: str = "scores",
    unit: str = "items",
    band: float = 0.0,
) -> Path:
    """Real vs fake score histograms (counts of `unit`, integer ticks), one panel per name, with the
    decision threshold and its uncertain band marked."""
    n = len(series)
    fig, axes = plt.subplots(n, 1, figsize=(6.0, 2.2 * n + 0.6), dpi=120, squeeze=False)
    bins = np.linspace(0.0, 1.0, 41)
    for ax, (name, (scores, labels)) in zip(axes[:, 0], series.items(), strict=True):
        ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="real", color="tab:blue")
        ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="fake", color="tab:red")
        if threshold is not None:
            ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3f}")
            if band > 0:
                n_in = metrics.count_uncertain(scores, threshold, band)
                ax.axvspan(threshold - band, threshold + band, color="grey", alpha=0.2, label=f"uncertain ({n_in})")
        ax.set_title(name, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylabel(f"{unit} (count)")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("p(fake)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
