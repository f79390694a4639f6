"""Figures: PDF + PNG, accuracy in percent, readable names, nothing clipped (synthetic
records, no training)."""
import math

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

from nnmjax import plots  # noqa: E402
from nnmjax.experiments.plots import attack_label, rule_label, setting_title  # noqa: E402


def _record(rule, attack, seed, acc, *, f=4, alpha=0.1, n=17, steps=(400, 800), **extra):
    key = {"dataset": "fashion_mnist", "model": "paper_cnn", "algorithm": "dshb", "n": n,
           "f": f, "partition": "dirichlet", "alpha": alpha, "momentum": 0.9, "steps": 800,
           "attack": attack, "rule": rule, "seed": seed, **extra}
    k = len(steps)
    return {"key": key, "summary": {"max_test_acc": acc},
            "curves": {"test_acc": [acc * (i + 1) / k for i in range(k)],
                       "eval_steps": list(steps), "kappa_hat": [0.6 / (i + 1) for i in range(k)],
                       "loss": [1.0] * k}}


def _records(steps=(400, 800), settings=((4, 0.1),)):
    recs = []
    for f, alpha in settings:
        for rule, acc in [("cwtm", 0.3), ("bucketing+cwtm", 0.5), ("nnm+cwtm", 0.7),
                          ("krum", 0.2), ("nnm+krum", 0.6)]:
            for attack in ("optimal_alie", "sign_flipping", "mimic"):
                for seed in (1, 2):
                    recs.append(_record(rule, attack, seed, acc + 0.01 * seed, f=f, alpha=alpha,
                                        steps=steps))
        recs += [_record("mean", "none", s, 0.9, f=0, n=17 - f, alpha=alpha, steps=steps)
                 for s in (1, 2)]
    return recs


def _inside(fig):
    """Whether every drawn artist (titles, labels, legend) lies within the figure."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    box = fig.get_tightbbox(renderer)  # inches
    w, h = fig.get_size_inches()
    eps = 1e-3
    return box.x0 >= -eps and box.y0 >= -eps and box.x1 <= w + eps and box.y1 <= h + eps


def test_labels():
    assert [attack_label(a) for a in ("optimal_alie", "alie", "optimal_foe", "foe",
                                      "sign_flipping", "label_flipping", "mimic", "inf",
                                      "gaussian", "adaptive", "none")] == [
        "ALIE (optimal η)", "ALIE", "FOE (optimal η)", "FOE", "Sign flipping",
        "Label flipping", "Mimic", "Inf", "Gaussian", "Adaptive", "No attack"]
    assert rule_label("nnm+cwtm") == "NNM + CWTM"
    assert rule_label("bucketing+krum") == "Bucketing + Krum"
    assert rule_label("clipping+arc+multikrum") == "Clipping + ARC + Multi-Krum"
    assert rule_label("mystery") == "mystery"
    s = {"dataset": "fashion_mnist", "model": "paper_cnn", "n": 17, "f": 4,
         "partition": "dirichlet", "alpha": 0.1, "lr": 0.5, "momentum": 0.9}
    assert setting_title(s, block="cwtm") == \
        "Fashion-MNIST, f = 4 of n = 17, Dirichlet α = 0.1 — CWTM block"
    assert setting_title(s, ["lr"]) == \
        "Fashion-MNIST, f = 4 of n = 17, Dirichlet α = 0.1, learning rate = 0.5"
    assert setting_title({**s, "partition": "iid"}) == "Fashion-MNIST, f = 4 of n = 17, IID"


def test_plot_all_writes_pdf_and_png(tmp_path):
    paths = plots.plot_all(_records(), tmp_path)
    names = [p.name for p in paths]
    assert names == ["accuracy-krum.pdf", "accuracy-krum.png", "kappa-krum.pdf",
                     "kappa-krum.png", "accuracy-cwtm.pdf", "accuracy-cwtm.png",
                     "kappa-cwtm.pdf", "kappa-cwtm.png"]
    for p in paths:
        head = p.read_bytes()[:8]
        assert head.startswith(b"%PDF") if p.suffix == ".pdf" else head == b"\x89PNG\r\n\x1a\n"
        assert 0 < p.stat().st_size < 400_000
    grid = plots.plot_all(_records(settings=((2, 0.1), (4, 1.0))), tmp_path / "grid")
    assert {"worst_case.pdf", "worst_case.png", "accuracy-f2_alpha0.1-cwtm.pdf"} <= \
        {p.name for p in grid}


def test_accuracy_in_percent_with_baseline_and_band():
    recs = [r for r in _records() if r["key"]["rule"].endswith("cwtm") or r["key"]["f"] == 0]
    fig = plots.accuracy_figure(recs, title="t")
    ax = fig.axes[0]
    assert ax.get_ylim() == (0, 100) and ax.get_ylabel() == "Test accuracy (%)"
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert np.allclose(lines["NNM + CWTM"].get_ydata(), [35.75, 71.5])  # mean over seeds, %
    assert lines["Fault-free baseline"].get_linestyle() == "--"
    assert len(ax.collections) == 4  # min-max bands, the baseline's too
    assert [a.get_title() for a in fig.axes] == ["ALIE (optimal η)", "Sign flipping", "Mimic"]
    legend = fig.legends[0]  # one legend for all panels
    assert [t.get_text() for t in legend.get_texts()] == [
        "CWTM", "Bucketing + CWTM", "NNM + CWTM", "Fault-free baseline"]
    assert all(a.get_legend() is None for a in fig.axes)


def test_single_evaluation_point_is_a_marker():
    recs = [r for r in _records(steps=(800,)) if "cwtm" in r["key"]["rule"] or r["key"]["f"] == 0]
    for fig in (plots.accuracy_figure(recs), plots.kappa_figure(recs)):
        lines = [ln for ax in fig.axes for ln in ax.get_lines() if len(ln.get_xdata()) == 1
                 and ln.get_marker() not in (None, "None", "", " ")]
        assert len(lines) >= 3 * len(fig.axes)
        assert all(list(ax.get_xticks()) == [800 if ax.get_ylabel().startswith("Test") else 1]
                   for ax in fig.axes if ax.get_ylabel())


def test_titles_and_nothing_clipped():
    recs = _records()
    title = setting_title(recs[0]["key"], block="cwtm")
    cwtm = [r for r in recs if r["key"]["rule"].endswith("cwtm") or r["key"]["f"] == 0]
    fig = plots.accuracy_figure(cwtm, title=title)
    assert fig.get_suptitle() == "Fashion-MNIST, f = 4 of n = 17, Dirichlet α = 0.1 — CWTM block"
    assert _inside(fig)
    one = [r for r in cwtm if r["key"]["attack"] in ("mimic", "none")]  # one panel, long title
    fig = plots.accuracy_figure(one, title=title + ", learning rate = 0.5, momentum β = 0.9")
    assert "\n" in fig.get_suptitle() and _inside(fig)
    assert _inside(plots.kappa_figure(one, title=title))
    heat = plots.worst_case_figure(_records(settings=((2, 0.1), (4, 0.1), (4, 1.0))),
                                   title="Worst case over attacks")
    assert _inside(heat)
    assert [a.get_title() for a in heat.axes][:5] == [
        "Krum", "NNM + Krum", "CWTM", "Bucketing + CWTM", "NNM + CWTM"]
    assert heat.axes[0].get_xlabel() == "α"


def test_kappa_log_ticks_are_plain_decimals():
    fig = plots.kappa_figure([r for r in _records() if r["key"]["f"] > 0])
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    for ax in fig.axes:
        assert ax.get_yscale() == "log"
        labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        assert len(labels) >= 2 and all(float(t) > 0 for t in labels), labels


def test_audit_figure(tmp_path):
    rows = []
    for rule, bound in [("cwtm", 2.0), ("nnm+cwtm", 3.0), ("mean", None), ("nnm+mean", None)]:
        for f in (1, 2, 3):
            ratio = math.inf if "mean" in rule and f > 1 else 0.1 * f
            rows.append({"rule": rule, "n": 9, "f": f, "worst_ratio": ratio,
                         "bound": bound and bound * f, "lower_bound": f / (9 - 2 * f)})
    fig = plots.audit_figure(rows)
    assert [a.get_title() for a in fig.axes] == ["CWTM", "Mean"] and _inside(fig)
    paths = plots.plot_audit(rows, tmp_path / "audit.png")
    assert [p.name for p in paths] == ["audit.pdf", "audit.png"]
    assert all(p.stat().st_size > 0 for p in paths)
