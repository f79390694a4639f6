"""Figures from run records: accuracy curves per attack (paper Figure 4 style) and
kappa-hat curves (Figure 2 style), mean over seeds with a min-max band."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

__all__ = ["plot_accuracy", "plot_kappa", "plot_all"]


def _grouped(records, curve):
    out = defaultdict(lambda: defaultdict(list))
    for r in records:
        out[r["key"]["attack"]][r["key"]["rule"]].append(r["curves"])
    return out


def _figure(n_panels):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n_panels, 3)
    rows = -(-n_panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[n_panels:]:
        ax.axis("off")
    return fig, list(axes.flat)


def _band(ax, x, ys, label):
    ys = np.asarray([[np.nan if v is None else v for v in y] for y in ys], dtype=float)
    m = np.nanmean(ys, axis=0)
    line, = ax.plot(x, m, label=label, lw=1.4)
    if len(ys) > 1:
        ax.fill_between(x, np.nanmin(ys, axis=0), np.nanmax(ys, axis=0), alpha=0.2,
                        color=line.get_color())


def plot_accuracy(records, path: Path | str) -> Path:
    """One panel per attack, test accuracy vs step for every rule."""
    groups = _grouped(records, "test_acc")
    fig, axes = _figure(len(groups))
    for ax, (attack, by_rule) in zip(axes, sorted(groups.items())):
        for rule, curves in sorted(by_rule.items()):
            _band(ax, curves[0]["eval_steps"], [c["test_acc"] for c in curves], rule)
        ax.set_title(attack)
        ax.set_xlabel("step")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_kappa(records, path: Path | str) -> Path:
    """One panel per attack, kappa-hat (eq. 26) vs step for every rule (log scale)."""
    groups = _grouped(records, "kappa_hat")
    fig, axes = _figure(len(groups))
    for ax, (attack, by_rule) in zip(axes, sorted(groups.items())):
        for rule, curves in sorted(by_rule.items()):
            k = curves[0]["kappa_hat"]
            _band(ax, np.arange(1, len(k) + 1), [c["kappa_hat"] for c in curves], rule)
        ax.set_title(attack)
        ax.set_xlabel("step")
        ax.set_ylabel(r"$\hat\kappa_t$")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path):
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_all(records, out_dir: Path | str) -> list[Path]:
    """Write ``accuracy.png`` and ``kappa.png`` under ``out_dir``."""
    out_dir = Path(out_dir)
    return [plot_accuracy(records, out_dir / "accuracy.png"),
            plot_kappa(records, out_dir / "kappa.png")]
