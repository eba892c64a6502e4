"""Plots for the report, drawn with matplotlib's Agg backend (no display, no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def roc_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str,
             baselines: set[str] = frozenset()) -> Path:
    """One ROC curve per tool from (labels, scores); baselines dashed. Returns the PNG's path."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=110)
    for tool, (labels, scores) in curves.items():
        if len(set(np.asarray(labels).tolist())) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, "--" if tool in baselines else "-", lw=1.5,
                label=f"{tool} ({roc_auc_score(labels, scores):.2f})")
    ax.plot([0, 1], [0, 1], color="#bbb", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
