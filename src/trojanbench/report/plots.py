"""Plots for the report, drawn with matplotlib's Agg backend (no display, no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path, **kwargs) -> Path:
    """Write `fig` to `path` (folders made) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, **kwargs)
    pyplot().close(fig)
    return path


def roc_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str,
             baselines: set[str] = frozenset()) -> Path:
    """One ROC curve per tool from (labels, scores); baselines dashed. Returns the PNG's path."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = pyplot()
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
    return save(fig, path)


def kind_bars(values: dict[str, dict[str, tuple[float, float, float]]], path: str | Path, title: str, ylabel: str,
              baselines: set[str] = frozenset()) -> Path:
    """Grouped bars: for each trigger kind (x), one bar per tool with its 95% CI. `values[tool][kind] = (v, lo, hi)`."""
    plt = pyplot()
    tools = list(values)
    kinds = sorted({k for v in values.values() for k in v})
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(kinds) + 0.25 * len(tools) * len(kinds)), 3.6), dpi=110)
    width = 0.8 / max(1, len(tools))
    for i, tool in enumerate(tools):
        xs, vs, errs = [], [], [[], []]
        for j, kind in enumerate(kinds):
            if kind in values[tool]:
                v, lo, hi = values[tool][kind]
                xs.append(j - 0.4 + width * (i + 0.5))
                vs.append(v)
                errs[0].append(max(0.0, v - lo) if np.isfinite(lo) else 0.0)
                errs[1].append(max(0.0, hi - v) if np.isfinite(hi) else 0.0)
        ax.bar(xs, vs, width, yerr=errs, capsize=2, label=tool, color=plt.cm.tab20(i % 20), hatch="//" if tool in baselines else None,
               alpha=0.6 if tool in baselines else 0.9)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set(title=title, ylabel=ylabel)
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return save(fig, path)


def axis_plot(levels: list[str], values: dict[str, list[tuple[float, float, float] | None]], path: str | Path,
              title: str, xlabel: str, ylabel: str, baselines: set[str] = frozenset()) -> Path:
    """One line per tool over the levels of an axis (x, evenly spaced in the order given, labelled as given), with
    its 95% CI as error bars; `values[tool][i] = (v, lo, hi)` at level i, or None where the tool has no value;
    baselines dashed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(levels) + 2.5), 3.8), dpi=110)
    shift = 0.25 / max(1, len(values))  # a small offset per tool, so the error bars do not hide each other
    for i, (tool, points) in enumerate(values.items()):
        xs = [j + (i - (len(values) - 1) / 2) * shift for j, p in enumerate(points) if p is not None]
        vs = [p[0] for p in points if p is not None]
        errs = [[max(0.0, p[0] - p[1]) if np.isfinite(p[1]) else 0.0 for p in points if p is not None],
                [max(0.0, p[2] - p[0]) if np.isfinite(p[2]) else 0.0 for p in points if p is not None]]
        ax.errorbar(xs, vs, yerr=errs, fmt="o--" if tool in baselines else "o-", ms=3, lw=1.2, capsize=2, label=tool,
                    color=plt.cm.tab20(i % 20))
    ax.set_xticks(range(len(levels)), levels, fontsize=7)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(-0.5, len(levels) - 0.5))
    ax.legend(fontsize=7, ncol=1 + len(values) // 12, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return save(fig, path)


def trigger_gallery(examples: list[tuple[str, np.ndarray, np.ndarray | None]], path: str | Path) -> Path:
    """One column per trigger: the triggered image on top, its ground-truth footprint below (if it has one).
    `examples`: (caption, image [H, W, C] in [0, 1], mask [H, W] or None)."""
    plt = pyplot()
    n = len(examples)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.6), dpi=110, squeeze=False)
    for j, (caption, image, mask) in enumerate(examples):
        axes[0][j].imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=1)
        axes[0][j].set_title(caption, fontsize=7)
        if mask is not None:
            axes[1][j].imshow(mask, cmap="magma", vmin=0, vmax=1)
        else:
            axes[1][j].text(0.5, 0.5, "no footprint", ha="center", va="center", fontsize=7)
        for ax in (axes[0][j], axes[1][j]):
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_ylabel("triggered", fontsize=8)
    axes[1][0].set_ylabel("footprint", fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def audit_panel(panels: list[tuple[str, object, object]], path: str | Path, title: str) -> Path:
    """One row of panels for the audit report: (caption, image [C, H, W] in [0, 1] or None, map [H, W] or None).
    An image is drawn as is (grey for one channel); a map (a mask or an attribution) with the magma colour map,
    scaled to its own maximum."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(1.9 * len(panels), 2.3), dpi=110, squeeze=False)
    for ax, (caption, image, heat) in zip(axes[0], panels):
        if image is not None:
            img = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
            img = np.transpose(img, (1, 2, 0))
            ax.imshow(img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=1)
        elif heat is not None:
            h = np.asarray(heat.detach().cpu() if hasattr(heat, "detach") else heat, dtype=float)
            ax.imshow(h / h.max() if h.max() > 0 else h, cmap="magma", vmin=0, vmax=1)
        ax.set_title(caption, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return save(fig, path)
