"""Figures from run records: accuracy curves per attack (paper Figure 4 style) and
kappa-hat curves (Figure 2 style), mean over seeds with a min-max band, and heat-maps
of the worst case over attacks across (f, alpha)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

__all__ = ["plot_accuracy", "plot_kappa", "plot_worst_case", "plot_all", "plot_audit"]


def _grouped(records):
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


def _band(ax, x, ys, label, style="-"):
    ys = np.asarray([[np.nan if v is None else v for v in y] for y in ys], dtype=float)
    m = np.nanmean(ys, axis=0)
    line, = ax.plot(x, m, style, label=label, lw=1.4)
    if len(ys) > 1:
        ax.fill_between(x, np.nanmin(ys, axis=0), np.nanmax(ys, axis=0), alpha=0.2,
                        color=line.get_color())


def _panels(records, draw, ylabel, path, *, log=False, ylim=None, title=None):
    """One panel per attack (paper order), one curve (mean, min-max band) per rule; the
    fault-free baseline, when among ``records``, dashed in every panel."""
    from nnmjax.table import ATTACK_ORDER, _is_baseline, _ordered

    base = [r["curves"] for r in records if _is_baseline(r)]
    groups = _grouped([r for r in records if not _is_baseline(r)])
    fig, axes = _figure(len(groups))
    for ax, attack in zip(axes, _ordered(groups, ATTACK_ORDER)):
        for rule, curves in sorted(groups[attack].items(), key=lambda kv: (kv[0].count("+"), kv[0])):
            draw(ax, curves, rule, "-")
        if base:
            draw(ax, base, "no attack (mean)", "--")
        ax.set_title(attack)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        if ylim:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _acc(ax, curves, label, style):
    _band(ax, curves[0]["eval_steps"], [c["test_acc"] for c in curves], label, style)


def _kappa(ax, curves, label, style):
    if style == "-":  # no kappa-hat without Byzantine workers
        k = curves[0]["kappa_hat"]
        _band(ax, np.arange(1, len(k) + 1), [c["kappa_hat"] for c in curves], label, style)


def plot_accuracy(records, path: Path | str, *, title: str | None = None) -> Path:
    """Paper Figure 4 style: one panel per attack, test accuracy vs step for every rule."""
    return _panels(records, _acc, "test accuracy", path, ylim=(0, 1), title=title)


def plot_kappa(records, path: Path | str, *, title: str | None = None) -> Path:
    """Paper Figure 2 style: one panel per attack, kappa-hat (eq. 26) vs step (log scale)."""
    return _panels(records, _kappa, r"$\hat\kappa_t$", path, log=True, title=title)


def plot_worst_case(records, path: Path | str, *, row: str = "f", col: str = "alpha") -> Path:
    """Heat-maps of the worst case over attacks (max test accuracy, mean over seeds), one
    panel per rule, ``row`` (default ``f``) against ``col`` (default ``alpha``)."""
    from nnmjax.table import worst_case_grid

    rules, rows, cols, grid = worst_case_grid(records, row, col)
    fig, axes = _figure(len(rules))
    for ax, rule in zip(axes, rules):
        g = grid[rule]
        im = ax.imshow(100 * g, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for i in range(len(rows)):
            for j in range(len(cols)):
                if np.isfinite(g[i, j]):
                    ax.text(j, i, f"{100 * g[i, j]:.0f}", ha="center", va="center",
                            color="w" if g[i, j] < 0.6 else "k", fontsize=9)
        ax.set_xticks(range(len(cols)), [str(c) for c in cols])
        ax.set_yticks(range(len(rows)), [str(r) for r in rows])
        ax.set_xlabel(col)
        ax.set_ylabel(row)
        ax.set_title(rule)
    fig.colorbar(im, ax=axes[: len(rules)], shrink=0.8, label="worst-case max test accuracy (%)")
    return _save(fig, path, tight=False)


def _save(fig, path, tight=True, close=True):
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=120 if path.suffix == ".png" else None)
    if close:
        plt.close(fig)
    return path


def _slug(setting: dict, keys) -> str:
    return "_".join(f"{k}{setting[k]}" for k in keys if k in setting)


def plot_all(records, out_dir: Path | str) -> list[Path]:
    """Accuracy and kappa-hat curves per setting and block (base rule) —
    ``accuracy[-<setting>]-<block>.png``, ``kappa[...]`` — and, when the settings vary in
    ``f`` or ``alpha`` only, ``worst_case.png`` heat-maps."""
    from nnmjax.table import block_rank, setting_groups, title, title_fields

    out_dir = Path(out_dir)
    groups = setting_groups(records)
    fields = title_fields(s for s, _ in groups)
    varying = [k for k in fields if len({str(s.get(k)) for s, _ in groups}) > 1]
    paths = []
    for setting, recs in groups:
        tag = _slug(setting, varying)
        blocks = defaultdict(list)
        for r in recs:
            if r["key"]["f"] > 0:
                blocks[r["key"]["rule"].split("+")[-1]].append(r)
        base = [r for r in recs if r["key"]["f"] == 0]
        for block in sorted(blocks, key=block_rank):
            name = "-".join(p for p in (tag, block) if p)
            paths.append(plot_accuracy(blocks[block] + base, out_dir / f"accuracy-{name}.png",
                                       title=title(setting, fields)))
            paths.append(plot_kappa(blocks[block], out_dir / f"kappa-{name}.png",
                                    title=title(setting, fields)))
    if varying and set(varying) <= {"f", "alpha"}:
        paths.append(plot_worst_case(records, out_dir / "worst_case.png"))
    return paths


#: Display names of the aggregators in figure titles.
RULE_TITLES = {"cwtm": "CWTM", "cwmed": "CWMed", "gm": "GM", "krum": "Krum", "multikrum":
               "Multi-Krum", "mda": "MDA", "meamed": "MeaMed", "cclip": "CClip", "monna": "MoNNA",
               "caf": "CAF", "smea": "SMEA", "mean": "Mean"}


def plot_audit(results, path: Path | str) -> list[Path]:
    """The audit's figure: per aggregator, the worst ratio found against ``f / n`` for the
    rule and its ``nnm+`` variant (solid, markers; an unbounded ratio as a triangle at the
    top edge), their proven bounds (dashed, Appendix 8 and Lemma 1) and Proposition 6's
    lower bound ``f / (n - 2f)`` (black), log scale. ``results``:
    :class:`nnmjax.audit.AuditResult` or their dicts. Written as PDF (vector) and PNG
    beside it; returns both paths."""
    rows = [r if isinstance(r, dict) else r._asdict() for r in results]
    blocks = defaultdict(list)
    for r in rows:
        blocks[r["rule"].split("+")[-1]].append(r)
    fig, axes = _figure(len(blocks))
    colours = {"vanilla": "tab:red", "nnm": "tab:blue"}
    for ax, block in zip(axes, sorted(blocks, key=lambda b: RULE_TITLES.get(b, b).lower())):
        lower, unbounded = {}, []
        for variant in ("vanilla", "nnm"):
            rs = sorted((r for r in blocks[block]
                         if r["rule"] == (block if variant == "vanilla" else "nnm+" + block)),
                        key=lambda r: r["f"] / r["n"])
            if not rs:
                continue
            name = RULE_TITLES.get(block, block)
            label = name if variant == "vanilla" else f"NNM + {name}"
            x = np.array([r["f"] / r["n"] for r in rs])
            y = np.array([float(r["worst_ratio"]) for r in rs])
            finite = np.isfinite(y)
            ax.plot(x[finite], y[finite], "o-" if variant == "vanilla" else "s-",
                    color=colours[variant], label=f"{label}: worst found",
                    ms=6 if variant == "vanilla" else 3.5)
            unbounded += [(xx, colours[variant]) for xx in x[~finite]]
            bounds = [(xx, r["bound"]) for xx, r in zip(x, rs) if r["bound"] is not None]
            if bounds:
                ax.plot(*zip(*bounds), "--", color=colours[variant], label=f"{label}: proven")
            lower.update({xx: r["lower_bound"] for xx, r in zip(x, rs)})
        xs = sorted(lower)
        ax.plot(xs, [lower[v] for v in xs], "k-", lw=1, label="f/(n-2f) (Prop. 6)")
        ax.set_yscale("log")
        if unbounded:
            top = ax.get_ylim()[1]
            for xx, c in unbounded:
                ax.plot([xx], [top], "^", color=c, ms=7, clip_on=False)
            ax.plot([], [], "^", color="gray", label="unbounded (inf)")
            ax.set_ylim(top=top)
        ax.set_xlabel("f / n")
        ax.set_ylabel("Definition 2 ratio")
        ax.set_title(RULE_TITLES.get(block, block))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    n_values = sorted({r["n"] for r in rows})
    fig.suptitle(f"Worst Definition 2 ratio found by nnmjax audit, n = "
                 f"{', '.join(map(str, n_values))}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = Path(path).with_suffix(".pdf")
    _save(fig, path, tight=False, close=False)
    png = _save(fig, path.with_suffix(".png"), tight=False)
    return [path, png]
