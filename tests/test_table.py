"""One formatting of results: the terminal table, ``table.md``, ``table.csv`` and
``summary.csv`` (synthetic records, no training)."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from nnmjax.experiments import results, table

README = Path(__file__).resolve().parents[1] / "README.md"
NUM = r"(\d+\.\d\d)(?: ± +(\d+\.\d\d))?"


def _rec(rule, attack, seed, acc, *, n=17, f=4, wall=None, runs=None):
    key = {"dataset": "mnist", "model": "paper_cnn", "algorithm": "dshb", "n": n, "f": f,
           "partition": "dirichlet", "alpha": 0.1, "momentum": 0.9, "steps": 800,
           "attack": attack, "rule": rule, "seed": seed}
    summary = {"max_test_acc": acc}
    if wall is not None:
        summary.update(wall_s=wall, vmapped_runs=runs, final_test_acc=acc, steps_per_s=1.0)
    return {"key": key, "summary": summary, "hash": f"{abs(hash((rule, attack, seed))):016x}"}


def _records(seeds=(1, 2, 3), one_seed_cell=None):
    accs = {"krum": 0.1234, "nnm+krum": 0.7, "gm": 0.55}
    recs = []
    for rule, a in accs.items():
        for attack, shift in [("optimal_alie", 0.0), ("sign_flipping", 0.1)]:
            cell_seeds = seeds[:1] if (rule, attack) == one_seed_cell else seeds
            for seed in cell_seeds:
                recs.append(_rec(rule, attack, seed, a + shift + 0.0111 * seed))
    recs += [_rec("mean", "none", s, 0.9 + 0.001 * s, n=13, f=0) for s in seeds]
    return recs


def _md_cells(md):
    """``{(rule, column): (mean, std or None, bold)}`` of a one-table Markdown string."""
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for ln in lines[1:]:
        rule, *cells = [c.strip() for c in ln.strip("|").split("|")]
        for col, c in zip(head[1:], cells):
            m = re.fullmatch(r"(\*\*)?" + NUM + r"(\*\*)?", c)
            out[(rule, col)] = (m[2], m[3], bool(m[1]))
    return out


def _text_cells(text, columns):
    """The same from :func:`table.format_text`'s output (best: a trailing ``*``)."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("rule "))
    out = {}
    for ln in lines[start + 2:]:
        if not ln or ln.startswith("* ") or ln.startswith("Fault-free"):
            break
        if set(ln) <= {"-", " "}:
            continue
        rule, rest = ln.split(None, 1)
        found = re.findall(NUM + r"(\*?)", rest)
        assert len(found) == len(columns), ln
        for col, (m, s, star) in zip(columns, found):
            out[(rule, col)] = (m, s or None, star == "*")
    return out


def test_text_markdown_and_csv_show_the_same_percent_numbers(tmp_path):
    recs = _records()
    md, text = table.format_markdown(recs), table.format_text(recs)
    table.write_csv(recs, tmp_path / "t.csv")
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    cols = ["optimal_alie", "sign_flipping", "worst case"]
    in_md, in_text = _md_cells(md), _text_cells(text, cols)
    assert in_md == in_text and len(in_md) == 3 * 3
    by_csv = {(r["rule"], r["attack"] if r["attack"] != "worst" else "worst case"):
              (r["max_test_acc_mean_pct"], r["max_test_acc_std_pct"] or None)
              for r in rows if r["attack"] != "baseline"}
    assert {k: v[:2] for k, v in in_md.items()} == by_csv
    # percent, 2 decimals: krum under ALIE, seeds 1-3: 0.1234 + 0.0111 * (1, 2, 3)
    assert in_md[("krum", "optimal_alie")][:2] == ("14.56", "0.91")
    assert {r["seeds"] for r in rows} == {"3"}
    assert set(rows[0]) >= {"max_test_acc_mean_pct", "max_test_acc_std_pct", "seeds"}
    assert not {"mean_max_test_acc", "std_max_test_acc"} & set(rows[0])
    # the best of a two-rule block is marked in both, a one-rule block (gm) in neither
    assert in_md[("nnm+krum", "worst case")][2] and not in_md[("krum", "worst case")][2]
    assert not any(in_md[("gm", c)][2] for c in cols)
    # the baseline line is the same in both, and in the csv
    base = [r for r in rows if r["attack"] == "baseline"][0]
    line = f"Fault-free baseline (mean, 13 honest workers): {base['max_test_acc_mean_pct']} ± " \
           f"{base['max_test_acc_std_pct']}"
    assert line in md and line in text


def test_headings_say_how_many_seeds_and_text_has_no_markdown():
    recs = _records()
    md, text = table.format_markdown(recs), table.format_text(recs)
    first = text.splitlines()[0]
    assert first.startswith("dataset=mnist, model=paper_cnn") and "**" not in first
    assert first.endswith("— max test accuracy (%), mean ± std over 3 seeds")
    assert md.splitlines()[0].endswith("steps=800** — max test accuracy (%), mean ± std over 3 seeds")
    assert "**" not in text and "|" not in text and "---|" not in text
    assert table.BEST_LEGEND in text.splitlines()
    # the text table's columns are aligned: every row of the table is as wide as its rule
    body = text.split("\n\n")[1].splitlines()
    assert len({len(ln) for ln in body if ln != table.BEST_LEGEND}) <= 2  # trailing marks


def test_one_seed_shows_no_plus_minus_anywhere(tmp_path):
    recs = _records(seeds=(1,))
    md, text = table.format_markdown(recs), table.format_text(recs)
    assert "±" not in md and "±" not in text
    assert "one seed" in md.splitlines()[0] and text.splitlines()[0].endswith("one seed")
    table.write_csv(recs, tmp_path / "t.csv")
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert {r["max_test_acc_std_pct"] for r in rows} == {""} and {r["seeds"] for r in rows} == {"1"}
    assert "0.0000" not in (tmp_path / "t.csv").read_text()


def test_a_cell_with_fewer_seeds(tmp_path):
    recs = _records(one_seed_cell=("krum", "optimal_alie"))
    md, text = table.format_markdown(recs), table.format_text(recs)
    assert md.splitlines()[0].endswith("mean ± std, seeds: 1–3 per cell")
    assert text.splitlines()[0].endswith("mean ± std, seeds: 1–3 per cell")
    cols = ["optimal_alie", "sign_flipping", "worst case"]
    in_md, in_text = _md_cells(md), _text_cells(text, cols)
    assert in_md == in_text and in_md[("krum", "optimal_alie")][:2] == ("13.45", None)
    assert in_md[("krum", "sign_flipping")][1] is not None
    table.write_csv(recs, tmp_path / "t.csv")
    row = [r for r in csv.DictReader(open(tmp_path / "t.csv"))
           if (r["rule"], r["attack"]) == ("krum", "optimal_alie")][0]
    assert (row["max_test_acc_mean_pct"], row["max_test_acc_std_pct"], row["seeds"]) == ("13.45", "", "1")


def test_summary_csv_has_run_and_group_wall_time(tmp_path):
    recs = [_rec("cwtm", "alie", s, 0.5, wall=12.0, runs=4) for s in (1, 2, 3, 4)]
    legacy = _rec("gm", "alie", 1, 0.5, wall=9.0, runs=None)  # written before vmapped_runs
    del legacy["summary"]["vmapped_runs"]
    legacy["summary"]["vmapped_seeds"] = 3
    path = results.write_summary(tmp_path, [*recs, legacy])
    rows = list(csv.DictReader(open(path)))
    assert "wall_s" not in rows[0] and "vmapped_seeds" not in rows[0]
    assert {"run_wall_s", "group_wall_s", "vmapped_runs"} <= set(results.SUMMARY_COLUMNS)
    assert list(rows[0])[:len(results.SUMMARY_COLUMNS)] == list(results.SUMMARY_COLUMNS)
    mine = [r for r in rows if r["rule"] == "cwtm"]
    assert [(float(r["run_wall_s"]), float(r["group_wall_s"]), r["vmapped_runs"]) for r in mine] \
        == [(3.0, 12.0, "4")] * 4
    assert sum(float(r["run_wall_s"]) for r in mine) == pytest.approx(12.0)
    old = [r for r in rows if r["rule"] == "gm"][0]
    assert (float(old["run_wall_s"]), float(old["group_wall_s"]), old["vmapped_runs"]) == (3.0, 9.0, "3")
    assert recs[0]["summary"]["wall_s"] == 12.0  # the records themselves are left as they are


def test_report_prints_the_plain_table_once(tmp_path, capsys, monkeypatch):
    from nnmjax import cli
    from nnmjax.experiments import plots
    monkeypatch.setattr(plots, "plot_all", lambda records, out: [])
    recs = _records()
    cli._report(tmp_path, recs)
    out = capsys.readouterr().out
    assert out.startswith(table.format_text(recs) + "\n")
    assert out.count("max test accuracy (%)") == 1 and "**" not in out
    assert (tmp_path / "table.md").read_text() == table.format_markdown(recs) + "\n"
    assert (tmp_path / "table.csv").exists()


def test_markdown_as_text_aligns_pipe_tables():
    md = "Title **x**\n\n| a | bb |\n|---|---|\n| 1 | 22.50 |\n| 333 | 4 |\n\nNot tuned: y"
    assert table.markdown_as_text(md).splitlines() == [
        "Title x", "", "  a     bb", "---  -----", "  1  22.50", "333      4", "", "Not tuned: y"]


def test_readme_quickstart_table_is_format_text():
    """The README shows what ``nnmjax run`` prints for the quickstart (its measured numbers)."""
    from nnmjax.experiments.config import load_config
    acc = {("optimal_alie", "cwtm"): 0.8778, ("sign_flipping", "cwtm"): 0.3556,
           ("optimal_alie", "bucketing+cwtm"): 0.8528, ("sign_flipping", "bucketing+cwtm"): 0.4583,
           ("optimal_alie", "nnm+cwtm"): 0.8417, ("sign_flipping", "nnm+cwtm"): 0.8194,
           ("none", "mean"): 0.9694}
    recs = [{"key": (k := s.record_key()), "summary": {"max_test_acc": acc[(k["attack"], k["rule"])]}}
            for s in load_config(None, []).runs()]
    block = re.search(r"```text\n(.*?)```", README.read_text(), re.S)[1]
    assert block == table.format_text(recs) + "\n"
