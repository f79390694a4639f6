"""Paper-ready figures from run records: accuracy curves per attack (paper Figure 4
style) and kappa-hat curves (Figure 2 style), mean over seeds with a min-max band, and
heat-maps of the worst case over attacks across (f, alpha); the audit's figure.

Every figure is written as a vector PDF plus a PNG beside it (200 dpi) for quick viewing;
the ``plot_*`` functions return both paths, ``[pdf, png]``. The ``*_figure`` functions
build the :class:`matplotlib.figure.Figure` without writing it (no pyplot state).
Accuracy is in percent, as in the tables; names are the paper's (:func:`attack_label`,
:func:`rule_label`, :func:`setting_title`).
"""
from __future__ import annotations

import functools
import io
import math
import textwrap
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

__all__ = ["plot_accuracy", "plot_kappa", "plot_worst_case", "plot_all", "plot_audit",
           "accuracy_figure", "kappa_figure", "worst_case_figure", "audit_figure",
           "save_figure", "attack_label", "rule_label", "setting_title", "field_label",
           "ATTACK_TITLES", "RULE_TITLES", "PRE_TITLES", "DATASET_TITLES", "PARTITION_TITLES",
           "FIELD_TITLES", "PNG_DPI"]

#: Display names of the attacks (panel titles).
ATTACK_TITLES = {"optimal_alie": "ALIE (optimal η)", "alie": "ALIE",
                 "optimal_foe": "FOE (optimal η)", "foe": "FOE", "sign_flipping": "Sign flipping",
                 "label_flipping": "Label flipping", "mimic": "Mimic", "inf": "Inf",
                 "gaussian": "Gaussian", "adaptive": "Adaptive", "minmax": "Min-Max",
                 "minsum": "Min-Sum", "none": "No attack"}
#: Display names of the aggregators in figure titles and legends.
RULE_TITLES = {"cwtm": "CWTM", "cwmed": "CWMed", "gm": "GM", "krum": "Krum", "multikrum":
               "Multi-Krum", "mda": "MDA", "meamed": "MeaMed", "cclip": "CClip", "monna": "MoNNA",
               "caf": "CAF", "smea": "SMEA", "mean": "Mean", "cge": "CGE", "bulyan": "Bulyan",
               "dnc": "DnC", "signguard": "SignGuard"}
#: Display names of the pre-aggregators.
PRE_TITLES = {"nnm": "NNM", "bucketing": "Bucketing", "clipping": "Clipping", "arc": "ARC"}
#: Display names of the data sets.
DATASET_TITLES = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10",
                  "digits": "Digits"}
#: Display names of the partitions; the heterogeneity parameter follows in titles.
PARTITION_TITLES = {"iid": "IID", "dirichlet": "Dirichlet", "dirichlet_per_class":
                    "per-class Dirichlet", "gamma_similarity": "γ-similarity",
                    "extreme": "extreme heterogeneity"}
#: Display names of the other setting fields; one not listed shows its name, ``_`` as a space.
FIELD_TITLES = {"f": "f", "n": "n", "alpha": "α", "gamma": "γ", "lr": "learning rate",
                "tolerated_f": "tolerated f", "momentum": "momentum β", "steps": "steps"}
#: Resolution of the PNG written beside every PDF.
PNG_DPI = 200

#: The partitions whose heterogeneity parameter is ``alpha`` / ``gamma``.
_ALPHA, _GAMMA = ("dirichlet", "dirichlet_per_class"), ("gamma_similarity",)
#: Fields every title shows (:func:`setting_title`); others only when they vary.
_CORE = ("dataset", "n", "f", "partition", "alpha", "gamma", "tolerated_f")
_STYLE = {"font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8, "legend.fontsize": 7.5,
          "xtick.labelsize": 7, "ytick.labelsize": 7, "figure.titlesize": 9,
          "pdf.fonttype": 42, "ps.fonttype": 42, "axes.grid": True, "grid.alpha": 0.3,
          "grid.linewidth": 0.5, "lines.linewidth": 1.2, "legend.frameon": False}
#: One panel's size in inches.
_PANEL = (2.45, 1.9)
#: Colours per rule variant (vanilla, Bucketing, NNM), then the default cycle.
_VARIANT_COLOURS = {"": "tab:blue", "bucketing": "tab:orange", "nnm": "tab:green"}


def _styled(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(_STYLE):
            return fn(*args, **kwargs)
    return wrapper


# --------------------------------------------------------------------------- labels

def attack_label(name: str) -> str:
    """A reader's name of an attack.

    Args:
        name: the attack's name in a config.

    Returns:
        Its :data:`ATTACK_TITLES` entry, else ``name`` with spaces, capitalised.

    Examples:
        >>> attack_label("optimal_alie"), attack_label("sign_flipping"), attack_label("x_y")
        ('ALIE (optimal η)', 'Sign flipping', 'X y')
    """
    return ATTACK_TITLES.get(name, name.replace("_", " ").capitalize())


def rule_label(name: str) -> str:
    """A reader's name of a rule, its stages joined by ``+``.

    Args:
        name: the rule, ``pre+...+aggregator``.

    Returns:
        Each stage's :data:`PRE_TITLES` or :data:`RULE_TITLES` entry (else its name), joined
        by ``" + "``.

    Examples:
        >>> rule_label("nnm+cwtm"), rule_label("bucketing+krum"), rule_label("clipping+arc+gm")
        ('NNM + CWTM', 'Bucketing + Krum', 'Clipping + ARC + GM')
    """
    return " + ".join(PRE_TITLES.get(s, RULE_TITLES.get(s, s)) for s in name.split("+"))


def field_label(name: str) -> str:
    """A reader's name of a setting field.

    Args:
        name: a config key.

    Returns:
        Its :data:`FIELD_TITLES` entry, else ``name`` with ``_`` as a space.

    Examples:
        >>> field_label("alpha"), field_label("lr"), field_label("batch_size")
        ('α', 'learning rate', 'batch size')
    """
    return FIELD_TITLES.get(name, name.replace("_", " "))


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(_value, v))
    return str(v)


def setting_title(setting: dict, extra=(), *, block: str | None = None, omit=()) -> str:
    """A figure title: data set, ``f`` of ``n``, the partition and its parameter, then
    the fields ``extra`` (those that vary between settings) and the block's rule; fields in
    ``omit`` (e.g. a heat-map's axes) are left out.

    Args:
        setting: the setting's fields (a record's key without attack, rule and seed).
        extra: further fields to show, when ``setting`` has them.
        block: the base rule of the figure's block; ``None``: no block.
        omit: fields not to show.

    Returns:
        The title, parts joined by ``", "``, then `` — <rule> block``.

    Examples:
        >>> s = {"dataset": "fashion_mnist", "n": 17, "f": 4, "partition": "dirichlet",
        ...      "alpha": 0.1, "lr": 0.5, "steps": 800}
        >>> setting_title(s, ["lr"], block="cwtm")
        'Fashion-MNIST, f = 4 of n = 17, Dirichlet α = 0.1, learning rate = 0.5 — CWTM block'
        >>> setting_title(s, omit=("f", "alpha"))
        'Fashion-MNIST, n = 17, Dirichlet'
    """
    s = {k: v for k, v in setting.items() if k not in omit}
    parts = []
    if "dataset" in s:
        parts.append(DATASET_TITLES.get(s["dataset"], str(s["dataset"])))
    if "f" in s and "n" in s:
        parts.append(f"f = {s['f']} of n = {s['n']}")
    else:
        parts += [f"{k} = {s[k]}" for k in ("f", "n") if k in s]
    if "partition" in s:
        p = s["partition"]
        par = "alpha" if p in _ALPHA else "gamma" if p in _GAMMA else None
        name = PARTITION_TITLES.get(p, str(p))
        parts.append(f"{name} {field_label(par)} = {_value(s[par])}" if par in s else name)
    if s.get("tolerated_f") is not None:
        parts.append(f"tolerated f = {s['tolerated_f']}")
    parts += [f"{field_label(k)} = {_value(s[k])}" for k in extra
              if k in s and k not in _CORE and s[k] is not None]
    text = ", ".join(parts)
    return f"{text} — {rule_label(block)} block" if block else text


# --------------------------------------------------------------------------- layout

def _figure(n_panels, *, panel=_PANEL, legend_rows=0, title_lines=0, slots=None):
    """A constrained-layout figure of ``n_panels`` panels, three a row, or at the
    ``(row, col)`` ``slots`` of a grid."""
    from matplotlib.figure import Figure

    if slots is None:
        cols = min(n_panels, 3)
        slots = [divmod(i, cols) for i in range(n_panels)]
    rows, cols = max(i for i, _ in slots) + 1, max(j for _, j in slots) + 1
    size = (max(panel[0] * cols, 3.3), panel[1] * rows + 0.18 * legend_rows + 0.17 * title_lines)
    fig = Figure(figsize=size, layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False)
    for i, j in set(np.ndindex(rows, cols)) - set(slots):
        grid[i, j].remove()
    return fig, [grid[i, j] for i, j in slots]


def _wrap(text, width_in, fontsize=9):
    """``text`` wrapped to ``width_in`` inches (about 0.6 em a character), a part after
    `` — `` on a line of its own when the whole does not fit."""
    chars = max(20, int(width_in * 72 / (0.6 * fontsize)))
    if not text or len(text) <= chars:
        return text
    head, sep, tail = text.rpartition(" — ")
    parts = [head, "— " + tail] if sep else [text]
    return "\n".join(line for part in parts for line in textwrap.wrap(part, chars))


def _legend_cols(labels, width_in, fontsize=7.5):
    entry = max(map(len, labels)) * 0.55 * fontsize + 32  # points: handle, text, gap
    return max(1, min(len(labels), int(width_in * 72 // entry)))


def _shared_legend(fig, axes):
    """One legend below the panels with every labelled artist of ``axes`` (first seen)."""
    seen = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center",
                   ncols=_legend_cols(list(seen), fig.get_figwidth()))


def _legend_rows(labels, width_in):
    return -(-len(labels) // _legend_cols(labels, width_in)) if labels else 0


def _log_ticks(ax):
    """Readable tick labels on a log axis: plain decimals at 1-2-5 ticks (or at linear
    steps within less than a decade), ``10^k`` at decades over more than four decades."""
    from matplotlib.ticker import (FuncFormatter, LogFormatterSciNotation, LogLocator,
                                   MaxNLocator, NullFormatter)

    lo, hi = ax.get_ylim()
    if not (lo > 0 and hi > lo):
        return
    decades = math.log10(hi / lo)
    if decades > 4:
        ax.yaxis.set_major_locator(LogLocator(base=10))
        ax.yaxis.set_major_formatter(LogFormatterSciNotation())
    else:
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)) if decades > 0.8
                                   else MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.4g}"))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10))))
    ax.yaxis.set_minor_formatter(NullFormatter())


# --------------------------------------------------------------------------- curves

def _variant(rule):
    pres = rule.split("+")[:-1]
    return pres[0] if len(pres) == 1 else "+".join(pres)


def _colours(rules):
    import matplotlib

    spare = iter([c["color"] for c in matplotlib.rcParams["axes.prop_cycle"]
                  if c["color"] not in _VARIANT_COLOURS.values()])
    out = {}
    for rule in rules:
        c = _VARIANT_COLOURS.get(_variant(rule))
        out[rule] = next(spare, "k") if c is None or c in out.values() else c
    return out


def _band(ax, x, ys, *, label, color, style="-", scale=1.0):
    """Mean over ``ys`` (one row per seed) with its min-max band; one point as a marker
    with a min-max error bar. Returns ``(mean, min, max)``."""
    ys = scale * np.asarray([[np.nan if v is None else v for v in y] for y in ys], dtype=float)
    x = np.asarray(x)
    with warnings.catch_warnings():  # an all-NaN step: NaN, drawn as a gap
        warnings.simplefilter("ignore", RuntimeWarning)
        m, lo, hi = np.nanmean(ys, axis=0), np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)
    if len(x) == 1:
        ax.errorbar(x, m, yerr=[m - lo, hi - m], fmt="o" if style == "-" else "D", ms=4,
                    capsize=3, color=color, label=label, mfc=color if style == "-" else "none")
        return m, lo, hi
    marker = "o" if len(x) <= 5 else None
    ax.plot(x, m, style, color=color, label=label, marker=marker, ms=3,
            lw=1.0 if style == "-" else 1.1)
    if len(ys) > 1:
        ax.fill_between(x, lo, hi, alpha=0.2, color=color, lw=0)
    return m, lo, hi


def _log_limits(ax, bands):
    """Y-limits of a log panel from the mean curves and the bulk (5-95 %) of the bands, so
    that a seed's rare near-zero step does not squash the curves (the band is clipped)."""
    def pos(v):
        v = np.asarray(v, dtype=float)
        return v[np.isfinite(v) & (v > 0)]

    means = pos(np.concatenate([m for m, _, _ in bands])) if bands else np.array([])
    if not means.size:
        return
    lo = [means.min()] + [np.percentile(v, 5) for _, b, _ in bands if (v := pos(b)).size]
    hi = [means.max()] + [np.percentile(v, 95) for _, _, b in bands if (v := pos(b)).size]
    lo, hi = min(lo), max(hi)
    ax.set_ylim(lo / 1.25, hi * 1.25 if hi > lo else lo * 2)


def _x_range(ax):
    """Steps from 0; a single evaluation step as the only tick, centred."""
    lo, hi = ax.dataLim.intervalx
    if not np.isfinite([lo, hi]).all():
        return
    if hi > lo:
        ax.set_xlim(left=min(0, lo))
    else:
        ax.set_xticks([lo], [f"{lo:g}"])
        ax.set_xlim(lo - max(1, 0.25 * abs(lo)), lo + max(1, 0.25 * abs(lo)))


def _grouped(records):
    out = defaultdict(lambda: defaultdict(list))
    for r in records:
        out[r["key"]["attack"]][r["key"]["rule"]].append(r["curves"])
    return out


def _rule_sort(rule):
    """Blocks in the paper's order; in a block vanilla, Bucketing, NNM (then others)."""
    from nnmjax.experiments.table import block_rank

    return (block_rank(rule.split("+")[-1]), rule.count("+"), 0 if "bucketing" in rule else 1,
            rule)


_BASELINE = "Fault-free baseline"
_WORST = "Worst honest node (dotted)"


def _panels(records, draw, ylabel, *, log=False, ylim=None, title=None, baseline=True):
    from nnmjax.experiments.table import ATTACK_ORDER, _is_baseline, _ordered

    base = [r["curves"] for r in records if _is_baseline(r)] if baseline else []
    groups = _grouped([r for r in records if not _is_baseline(r)])
    attacks = _ordered(groups, ATTACK_ORDER)
    rules = sorted({rule for g in groups.values() for rule in g}, key=_rule_sort)
    colours = _colours(rules)
    labels = [rule_label(r) for r in rules] + ([_BASELINE] if base else [])
    if draw is _acc and any("test_acc_worst" in r["curves"] for r in records):
        labels.append(_WORST)
    width = max(_PANEL[0] * min(max(len(attacks), 1), 3), 3.3)
    text = title and _wrap(title, width)
    fig, axes = _figure(max(len(attacks), 1), legend_rows=_legend_rows(labels, width),
                        title_lines=text.count("\n") + 1 if text else 0)
    for ax, attack in zip(axes, attacks):
        bands = [draw(ax, groups[attack][rule], label=rule_label(rule), color=colours[rule],
                      style="-") for rule in sorted(groups[attack], key=_rule_sort)]
        if base:
            bands.append(draw(ax, base, label=_BASELINE, color="0.25", style="--"))
        ax.set_title(attack_label(attack))
        ax.set_xlabel("Round" if all(r["key"].get("algorithm") == "fedavg" for r in records)
                      else "Step")
        ax.set_ylabel(ylabel)
        ax.tick_params(labelsize=7)
        if log:
            ax.set_yscale("log")
            _log_limits(ax, [b for b in bands if b is not None])
            _log_ticks(ax)
        if ylim:
            ax.set_ylim(*ylim)
        _x_range(ax)
    for ax in axes[1:]:  # one y-label per row
        if ax.get_subplotspec().colspan.start > 0:
            ax.set_ylabel("")
    _shared_legend(fig, axes)
    if text:
        fig.suptitle(text)
    return fig


def _acc(ax, curves, **kw):
    band = _band(ax, curves[0]["eval_steps"], [c["test_acc"] for c in curves], scale=100, **kw)
    if "test_acc_worst" in curves[0]:  # decentralized: the worst honest node, dotted
        _band(ax, curves[0]["eval_steps"], [c["test_acc_worst"] for c in curves], scale=100,
              **{**kw, "label": "_" + kw["label"], "style": ":"})
        ax.plot([], [], ":", color="0.3", label=_WORST)  # one legend entry for every rule
    return band


def _consensus(ax, curves, *, style, **kw):
    if style == "-":  # drawn for every run, the fault-free baseline's in its own figure
        k = curves[0]["consensus_distance"]
        return _band(ax, np.arange(1, len(k) + 1), [c["consensus_distance"] for c in curves],
                     style=style, **kw)
    return None


def _kappa(ax, curves, *, style, **kw):
    if style == "-":  # no kappa-hat without Byzantine workers
        k = curves[0]["kappa_hat"]
        return _band(ax, np.arange(1, len(k) + 1), [c["kappa_hat"] for c in curves], style=style,
                     **kw)
    return None


@_styled
def accuracy_figure(records, *, title: str | None = None):
    """Paper Figure 4 style: one panel per attack (paper order), test accuracy (%) against
    the step for every rule (mean over seeds, min-max band), the fault-free baseline
    dashed when among ``records``; one legend below the panels. Decentralized runs draw
    the honest nodes' mean accuracy and, dotted, the worst node's.

    Args:
        records: run records (``key`` and ``curves``) of one setting.
        title: the figure's title (wrapped to its width); ``None``: none.

    Returns:
        The :class:`matplotlib.figure.Figure`.

    Examples:
        >>> from nnmjax.experiments.plots import accuracy_figure
        >>> curves = {"loss": [1.0, 0.6, 0.5, 0.4], "kappa_hat": [0.9, 0.5, 0.4, 0.3],
        ...           "eval_steps": [2, 4], "test_acc": [0.6, 0.8]}
        >>> records = [{"key": {"n": 5, "f": 1, "attack": a, "rule": r, "seed": 1},
        ...             "curves": curves}
        ...            for a in ("alie", "sign_flipping") for r in ("cwtm", "nnm+cwtm")]
        >>> fig = accuracy_figure(records, title="Digits, f = 1 of n = 5")
        >>> [ax.get_title() for ax in fig.axes], [t.get_text() for t in fig.legends[0].texts]
        (['ALIE', 'Sign flipping'], ['CWTM', 'NNM + CWTM'])
    """
    return _panels(records, _acc, "Test accuracy (%)", ylim=(0, 100), title=title)


@_styled
def kappa_figure(records, *, title: str | None = None):
    """Paper Figure 2 style: one panel per attack, kappa-hat (eq. 26) against the step,
    log scale with decimal ticks.

    Args:
        records: run records (``key`` and ``curves``) of one setting; the fault-free
            baseline (no ``kappa_hat``) is not drawn.
        title: the figure's title (wrapped to its width); ``None``: none.

    Returns:
        The :class:`matplotlib.figure.Figure`.

    Examples:
        >>> from nnmjax.experiments.plots import kappa_figure
        >>> curves = {"loss": [1.0, 0.6, 0.5, 0.4], "kappa_hat": [0.9, 0.5, 0.4, 0.3],
        ...           "eval_steps": [2, 4], "test_acc": [0.6, 0.8]}
        >>> records = [{"key": {"n": 5, "f": 1, "attack": a, "rule": r, "seed": 1},
        ...             "curves": curves}
        ...            for a in ("alie", "sign_flipping") for r in ("cwtm", "nnm+cwtm")]
        >>> fig = kappa_figure(records)
        >>> [(ax.get_title(), ax.get_yscale()) for ax in fig.axes]
        [('ALIE', 'log'), ('Sign flipping', 'log')]
    """
    return _panels(records, _kappa, r"$\hat\kappa_t$", log=True, title=title, baseline=False)


@_styled
def consensus_figure(records, *, title: str | None = None):
    """Decentralized learning: one panel per attack, the honest nodes' consensus distance
    ``(1/h) sum_i ||w_i - wbar||^2`` against the step, log scale. Arguments and result as
    :func:`kappa_figure`'s.

    Examples:
        >>> from nnmjax.experiments.plots import consensus_figure
        >>> curves = {"loss": [1.0, 0.6], "consensus_distance": [0.9, 0.5], "eval_steps": [2],
        ...           "test_acc": [0.6], "test_acc_worst": [0.5]}
        >>> records = [{"key": {"n": 5, "f": 1, "attack": "alie", "rule": r, "seed": 1},
        ...             "curves": curves} for r in ("cwtm", "nnm+cwtm")]
        >>> [(ax.get_title(), ax.get_yscale()) for ax in consensus_figure(records).axes]
        [('ALIE', 'log')]
    """
    return _panels(records, _consensus, "Consensus distance", log=True, title=title,
                   baseline=False)


def plot_accuracy(records, path: Path | str, *, title: str | None = None) -> list[Path]:
    """:func:`accuracy_figure` written as ``path`` with suffix ``.pdf`` and ``.png``;
    returns ``[pdf, png]``.

    Args:
        records: run records (``key`` and ``curves``) of one setting.
        path: the figure's file; its suffix is replaced by ``.pdf`` and ``.png``.
        title: the figure's title; ``None``: none.

    Returns:
        ``[pdf, png]``, the paths written.

    Examples:
        >>> from nnmjax.experiments.plots import plot_accuracy
        >>> curves = {"loss": [1.0, 0.6, 0.5, 0.4], "kappa_hat": [0.9, 0.5, 0.4, 0.3],
        ...           "eval_steps": [2, 4], "test_acc": [0.6, 0.8]}
        >>> records = [{"key": {"n": 5, "f": 1, "attack": a, "rule": r, "seed": 1},
        ...             "curves": curves}
        ...            for a in ("alie", "sign_flipping") for r in ("cwtm", "nnm+cwtm")]
        >>> plot_accuracy(records, "plots/accuracy-cwtm.pdf")  # doctest: +SKIP
        [PosixPath('plots/accuracy-cwtm.pdf'), PosixPath('plots/accuracy-cwtm.png')]
    """
    return save_figure(accuracy_figure(records, title=title), path)


def plot_kappa(records, path: Path | str, *, title: str | None = None) -> list[Path]:
    """:func:`kappa_figure` written as ``path`` with suffix ``.pdf`` and ``.png``; returns
    ``[pdf, png]``. Arguments, result and example as :func:`plot_accuracy`'s."""
    return save_figure(kappa_figure(records, title=title), path)


# --------------------------------------------------------------------------- heat-maps

@_styled
def worst_case_figure(records, *, row: str = "f", col: str = "alpha", title: str | None = None):
    """Heat-maps of the worst case over attacks (max test accuracy in %, mean over seeds),
    one panel per rule, ``row`` (default ``f``) against ``col`` (default ``alpha``).

    Args:
        records: run records (``key`` and ``summary``) of one setting swept over ``row``
            and ``col``.
        row: the field of the heat-maps' rows.
        col: the field of the heat-maps' columns.
        title: the figure's title (wrapped to its width); ``None``: none.

    Returns:
        The :class:`matplotlib.figure.Figure`, with a colour bar.

    Raises:
        ValueError: the records' settings differ in another field
            (:func:`~nnmjax.experiments.table.worst_case_grid`).

    Examples:
        >>> from nnmjax.experiments.plots import worst_case_figure
        >>> records = [{"key": {"n": 9, "f": f, "alpha": a, "attack": "alie", "rule": r,
        ...                     "seed": 1}, "summary": {"max_test_acc": 0.8}}
        ...            for f in (1, 2) for a in (0.1, 1.0) for r in ("cwtm", "nnm+cwtm")]
        >>> fig = worst_case_figure(records)
        >>> [ax.get_title() for ax in fig.axes[:2]], fig.axes[0].get_ylabel()
        (['CWTM', 'NNM + CWTM'], 'f')
    """
    from nnmjax.experiments.table import worst_case_grid

    rules, rows, cols, grid = worst_case_grid(records, row, col)
    panel = (max(1.9, 0.5 * len(cols) + 1.0), max(1.5, 0.32 * len(rows) + 1.0))
    slots = _block_slots(rules)
    width = max(panel[0] * (max(j for _, j in slots) + 1), 3.3) + 0.8
    text = title and _wrap(title, width)
    fig, axes = _figure(len(rules), panel=panel, slots=slots,
                        title_lines=text.count("\n") + 1 if text else 0)
    fig.set_figwidth(width)
    im = None
    for ax, rule in zip(axes, rules):
        g = 100 * grid[rule]
        im = ax.imshow(g, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        ax.set_facecolor("0.92")  # not run
        for i in range(len(rows)):
            for j in range(len(cols)):
                ok = np.isfinite(g[i, j])
                ax.text(j, i, f"{g[i, j]:.0f}" if ok else "—", ha="center", va="center",
                        fontsize=7, color="w" if ok and g[i, j] < 60 else "k")
        ax.set_xticks(range(len(cols)), [_value(c) for c in cols])
        ax.set_yticks(range(len(rows)), [_value(r) for r in rows])
        ax.tick_params(labelsize=7, length=0)
        ax.grid(False)
        ax.set_xlabel(field_label(col))
        ax.set_ylabel(field_label(row))
        ax.set_title(rule_label(rule))
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, aspect=30,
                     label="Worst-case max test accuracy (%)")
    if text:
        fig.suptitle(text)
    return fig


def _block_slots(rules):
    """Panel positions: a row per block (base rule), its variants side by side; three a
    row when a block has more than four rules."""
    blocks = list(dict.fromkeys(r.split("+")[-1] for r in rules))
    members = [[r for r in rules if r.split("+")[-1] == b] for b in blocks]
    if max(map(len, members)) > 4:
        return [divmod(i, 3) for i in range(len(rules))]
    where = {r: (i, j) for i, ms in enumerate(members) for j, r in enumerate(ms)}
    return [where[r] for r in rules]


def plot_worst_case(records, path: Path | str, *, row: str = "f", col: str = "alpha",
                    title: str | None = None) -> list[Path]:
    """:func:`worst_case_figure` written as ``path`` with suffix ``.pdf`` and ``.png``;
    returns ``[pdf, png]``.

    Args:
        records: run records (``key`` and ``summary``) of one setting swept over ``row``
            and ``col``.
        path: the figure's file; its suffix is replaced by ``.pdf`` and ``.png``.
        row: the field of the heat-maps' rows.
        col: the field of the heat-maps' columns.
        title: the figure's title; ``None``: none.

    Returns:
        ``[pdf, png]``, the paths written.

    Raises:
        ValueError: the records' settings differ in another field.

    Examples:
        >>> from nnmjax.experiments.plots import plot_worst_case
        >>> records = [{"key": {"n": 9, "f": f, "alpha": a, "attack": "alie", "rule": r,
        ...                     "seed": 1}, "summary": {"max_test_acc": 0.8}}
        ...            for f in (1, 2) for a in (0.1, 1.0) for r in ("cwtm", "nnm+cwtm")]
        >>> plot_worst_case(records, "plots/worst_case.pdf")  # doctest: +SKIP
        [PosixPath('plots/worst_case.pdf'), PosixPath('plots/worst_case.png')]
    """
    return save_figure(worst_case_figure(records, row=row, col=col, title=title), path)


# --------------------------------------------------------------------------- writing

def _png(fig, path, dpi):
    """The PNG, reduced to a 256-colour palette (a third of the size, no visible loss)."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.03)
    img = Image.open(buf).convert("RGB")
    img.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True)


@_styled
def save_figure(fig, path: Path | str, *, dpi: int = PNG_DPI) -> list[Path]:
    """Write ``fig`` as ``path`` with suffix ``.pdf`` (vector) and ``.png`` (``dpi``)
    beside it; returns ``[pdf, png]``.

    Args:
        fig: the :class:`matplotlib.figure.Figure`.
        path: the figure's file; its suffix is replaced by ``.pdf`` and ``.png``, and its
            directory is created.
        dpi: the PNG's resolution.

    Returns:
        ``[pdf, png]``, the paths written.

    Examples:
        >>> from matplotlib.figure import Figure
        >>> from nnmjax.experiments.plots import save_figure
        >>> fig = Figure(figsize=(2, 2))
        >>> _ = fig.subplots().plot([0, 1], [1, 0])
        >>> save_figure(fig, "plots/line.svg")  # doctest: +SKIP
        [PosixPath('plots/line.pdf'), PosixPath('plots/line.png')]
    """
    pdf = Path(path).with_suffix(".pdf")
    pdf.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(pdf, bbox_inches="tight", pad_inches=0.03, metadata={"CreationDate": None})
    png = pdf.with_suffix(".png")
    _png(fig, png, dpi)
    return [pdf, png]


def _slug(setting: dict, keys) -> str:
    return "_".join(f"{k}{setting[k]}" for k in keys if setting.get(k) is not None)


def plot_all(records, out_dir: Path | str) -> list[Path]:
    """Accuracy and kappa-hat curves per setting and block (base rule) —
    ``accuracy[-<setting>]-<block>.pdf`` and ``.png``, ``kappa[...]`` (decentralized runs:
    ``consensus[...]``, :func:`consensus_figure`) — and, when the
    settings vary in ``f`` or ``alpha`` only, ``worst_case.pdf`` / ``.png`` heat-maps.
    Returns every path written (PDF, then its PNG).

    Args:
        records: run records (``key``, ``curves`` and ``summary``) of a run directory.
        out_dir: the directory to write into (created when missing).

    Returns:
        The paths written, each PDF followed by its PNG.

    Examples:
        >>> from nnmjax.experiments.plots import plot_all
        >>> curves = {"loss": [1.0, 0.6, 0.5, 0.4], "kappa_hat": [0.9, 0.5, 0.4, 0.3],
        ...           "eval_steps": [2, 4], "test_acc": [0.6, 0.8]}
        >>> records = [{"key": {"n": 5, "f": 1, "attack": a, "rule": r, "seed": 1},
        ...             "curves": curves}
        ...            for a in ("alie", "sign_flipping") for r in ("cwtm", "nnm+cwtm")]
        >>> [p.name for p in plot_all(records, "plots")]  # doctest: +SKIP
        ['accuracy-cwtm.pdf', 'accuracy-cwtm.png', 'kappa-cwtm.pdf', 'kappa-cwtm.png']
    """
    from nnmjax.experiments.table import block_rank, setting_groups, title_fields

    out_dir = Path(out_dir)
    groups = setting_groups(records)
    fields = title_fields(s for s, _ in groups)
    keys = sorted({k for s, _ in groups for k in s})
    varying = [k for k in fields if len({str(s.get(k)) for s, _ in groups}) > 1]
    extra = [k for k in keys if len({str(s.get(k)) for s, _ in groups}) > 1]
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
            title = setting_title(setting, extra, block=block)
            paths += plot_accuracy(blocks[block] + base, out_dir / f"accuracy-{name}.pdf",
                                   title=title)
            if all("consensus_distance" in r["curves"] for r in blocks[block]):
                paths += save_figure(consensus_figure(blocks[block], title=title),
                                     out_dir / f"consensus-{name}.pdf")
            else:
                paths += plot_kappa(blocks[block], out_dir / f"kappa-{name}.pdf", title=title)
    if varying and set(varying) <= {"f", "alpha"}:
        common = setting_title(groups[0][0], omit=("f", "alpha"))
        paths += plot_worst_case(records, out_dir / "worst_case.pdf",
                                 title=f"Worst case over attacks — {common}")
    return paths


# --------------------------------------------------------------------------- audit

_AUDIT_COLOURS = {"vanilla": "tab:red", "nnm": "tab:blue"}


@_styled
def audit_figure(results):
    """The audit's figure: per aggregator, the worst ratio found against ``f / n`` for the
    rule and its ``nnm+`` variant (solid, markers; an unbounded ratio as a triangle at the
    top edge), their proven bounds (dashed, Appendix 8 and Lemma 1) and Proposition 6's
    lower bound ``f / (n - 2f)`` (black), log scale; one legend below the panels.
    ``results``: :class:`nnmjax.robust.audit.AuditResult` or their dicts.

    Args:
        results: audit results (``rule``, ``n``, ``f``, ``worst_ratio``, ``bound``,
            ``lower_bound`` are read).

    Returns:
        The :class:`matplotlib.figure.Figure`, one panel per aggregator.

    Examples:
        >>> from nnmjax.experiments.plots import audit_figure
        >>> rows = [{"rule": r, "n": 10, "f": f, "worst_ratio": w, "bound": b,
        ...          "lower_bound": f / (10 - 2 * f)}
        ...         for r, f, w, b in [("cwtm", 1, 1.0, 2.0), ("cwtm", 2, 2.0, 4.0),
        ...                            ("nnm+cwtm", 1, 0.5, 1.0), ("nnm+cwtm", 2, 0.9, 2.0)]]
        >>> fig = audit_figure(rows)
        >>> [(ax.get_title(), ax.get_xlabel(), ax.get_yscale()) for ax in fig.axes]
        [('CWTM', 'f / n', 'log')]
    """
    rows = [r if isinstance(r, dict) else r._asdict() for r in results]
    blocks = defaultdict(list)
    for r in rows:
        blocks[r["rule"].split("+")[-1]].append(r)
    n_values = sorted({r["n"] for r in rows})
    title = f"Worst Definition 2 ratio found by nnmjax audit, n = {', '.join(map(str, n_values))}"
    names = ["Aggregator: worst found", "Aggregator: proven bound",
             "NNM + aggregator: worst found", "NNM + aggregator: proven bound",
             r"$f/(n-2f)$ (Prop. 6)", "unbounded (∞), at the top edge"]
    width = max(2.45 * min(len(blocks), 3), 3.3)
    text = _wrap(title, width)
    fig, axes = _figure(len(blocks), panel=(2.45, 2.0), legend_rows=_legend_rows(names, width),
                        title_lines=text.count("\n") + 1)
    labels = {}
    for ax, block in zip(axes, sorted(blocks, key=lambda b: RULE_TITLES.get(b, b).lower())):
        lower, unbounded = {}, []
        for variant in ("vanilla", "nnm"):
            rs = sorted((r for r in blocks[block]
                         if r["rule"] == (block if variant == "vanilla" else "nnm+" + block)),
                        key=lambda r: r["f"] / r["n"])
            if not rs:
                continue
            who = "Aggregator" if variant == "vanilla" else "NNM + aggregator"
            colour = _AUDIT_COLOURS[variant]
            x = np.array([r["f"] / r["n"] for r in rs])
            y = np.array([float(r["worst_ratio"]) for r in rs])
            finite = np.isfinite(y)
            ax.plot(x[finite], y[finite], "o-" if variant == "vanilla" else "s-", color=colour,
                    label=f"{who}: worst found", ms=4.5 if variant == "vanilla" else 2.8, lw=1.1)
            unbounded += [(xx, colour) for xx in x[~finite]]
            bounds = [(xx, r["bound"]) for xx, r in zip(x, rs) if r["bound"] is not None]
            if bounds:
                ax.plot(*zip(*bounds), "--", color=colour, label=f"{who}: proven bound", lw=1.1)
            lower.update({xx: r["lower_bound"] for xx, r in zip(x, rs)})
        xs = sorted(lower)
        ax.plot(xs, [lower[v] for v in xs], "k-", lw=0.9, label=r"$f/(n-2f)$ (Prop. 6)")
        ax.set_yscale("log")
        if unbounded:
            top = ax.get_ylim()[1]
            for xx, c in unbounded:
                ax.plot([xx], [top], "^", color=c, ms=5, clip_on=False)
            ax.plot([], [], "^", color="0.5", ms=5, label="unbounded (∞), at the top edge")
            ax.set_ylim(top=top)
        _log_ticks(ax)
        ax.set_xlabel("f / n")
        ax.set_ylabel("Definition 2 ratio")
        ax.set_title(RULE_TITLES.get(block, block), pad=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="major")
        for h, lab in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(lab, h)
    names = [k for k in names if k in labels] + [k for k in labels if k not in names]
    fig.legend([labels[k] for k in names], names, loc="outside lower center",
               ncols=_legend_cols(names, width))
    fig.suptitle(text)
    return fig


def plot_audit(results, path: Path | str) -> list[Path]:
    """:func:`audit_figure` written as PDF (vector) and PNG beside it; returns both paths.

    Args:
        results: audit results (:class:`nnmjax.robust.audit.AuditResult` or their dicts).
        path: the figure's file; its suffix is replaced by ``.pdf`` and ``.png``.

    Returns:
        ``[pdf, png]``, the paths written.

    Examples:
        >>> rows = json.load(open("docs/audit/audit.json"))  # doctest: +SKIP
        >>> plot_audit(rows, "docs/audit/audit.pdf")  # doctest: +SKIP
        [PosixPath('docs/audit/audit.pdf'), PosixPath('docs/audit/audit.png')]
    """
    return save_figure(audit_figure(results), path)
