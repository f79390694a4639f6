"""Result tables in the paper's Table 2 layout.

For each setting of a run directory (every record field but attack, rule and the seeds), one
table: the max test accuracy over the run, mean +- std over runs (seeds, and partition
seeds when a grid sets ``data_seed``), per attack, plus the
worst case over attacks; rows grouped in blocks by base rule (the final aggregator:
``krum``, ``bucketing+krum``, ``nnm+krum``, then ``gm``, ...), the best cell of each
block in bold as in the paper. The fault-free baseline (``attack = "none"``,
``rule = "mean"`` with the honest workers only) is reported under the table of every
setting with the same number of honest workers.
"""
from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

import numpy as np

__all__ = ["Table", "accuracy_tables", "format_markdown", "write_csv", "worst_case_grid",
           "setting_groups", "title", "title_fields", "block_rank", "ATTACK_ORDER", "BLOCK_ORDER"]

#: Column order: the paper's (ALIE, FOE, LF, SF, Mimic); other attacks follow alphabetically.
ATTACK_ORDER = ("optimal_alie", "alie", "optimal_foe", "foe", "adaptive", "label_flipping",
                "sign_flipping", "mimic")
#: Block order: the paper's Table 2 (Krum, GM, CWMed, CWTM), then its extra rules.
BLOCK_ORDER = ("krum", "gm", "cwmed", "cwtm", "mda", "meamed", "multikrum")
#: Fields that tell runs of one cell or table apart; a cell pools every ``seed`` and
#: ``data_seed`` (the partition's seed, when set).
_PER_RUN = ("attack", "rule", "seed", "data_seed")
#: Fields in which an attacked setting differs from its fault-free baseline.
_ATTACKED = ("n", "f", "tolerated_f", "rule_options")
#: Setting fields shown in a table's title.
TITLE_FIELDS = ("dataset", "model", "algorithm", "n", "f", "tolerated_f", "partition", "alpha",
                "momentum", "steps")


class Table(NamedTuple):
    """One setting's table: ``cells[(rule, attack)] = (mean, std, seeds)`` of the max test
    accuracy (``attack = "worst"``: the lowest-mean attack of that rule)."""

    setting: dict
    blocks: list[tuple[str, list[str]]]
    attacks: list[str]
    cells: dict
    baseline: tuple | None


def _ordered(names, order):
    return sorted(names, key=lambda s: (order.index(s) if s in order else len(order), s))


def block_rank(base: str) -> tuple:
    """Sort key of a block (base rule): the paper's order, then alphabetical."""
    return (BLOCK_ORDER.index(base) if base in BLOCK_ORDER else len(BLOCK_ORDER), base)


def _rule_order(rule: str) -> tuple:
    pres = rule.split("+")[:-1]
    return (len(pres), 0 if "bucketing" in pres else 1, rule)


def _cell(values):
    return float(np.mean(values)), float(np.std(values)), len(values)


def _setting(key: dict) -> tuple:
    return tuple(sorted((k, v if not isinstance(v, list) else tuple(v))
                        for k, v in key.items() if k not in _PER_RUN))


def setting_groups(records: list[dict]) -> list[tuple[dict, list[dict]]]:
    """``(setting, records)`` pairs, the baseline records joined to every setting with the
    same number of honest workers (and otherwise equal fields)."""
    groups, baselines = defaultdict(list), defaultdict(list)
    for r in records:
        key = r["key"]
        if _is_baseline(r):
            baselines[_setting({k: v for k, v in key.items() if k not in _ATTACKED}), key["n"]
                      ].append(r)
        else:
            groups[_setting(key)].append(r)
    out = []
    for setting, recs in groups.items():
        s = dict(setting)
        base_key = (_setting({k: v for k, v in s.items() if k not in _ATTACKED}), s["n"] - s["f"])
        out.append((s, recs + baselines.get(base_key, [])))
    return sorted(out, key=lambda p: (tuple(str(p[0].get(k)) for k in TITLE_FIELDS),
                                      tuple(sorted((k, str(v)) for k, v in p[0].items()))))


def _is_baseline(record) -> bool:
    return record["key"]["attack"] == "none" and record["key"]["f"] == 0


def accuracy_tables(records: list[dict]) -> list[Table]:
    """One :class:`Table` per setting among ``records`` (baseline-only settings excepted)."""
    tables = []
    for s, recs in setting_groups(records):
        by_cell = defaultdict(list)
        for r in recs:
            if not _is_baseline(r):
                by_cell[(r["key"]["rule"], r["key"]["attack"])].append(r["summary"]["max_test_acc"])
        base = [r["summary"]["max_test_acc"] for r in recs if _is_baseline(r)]
        cells = {k: _cell(v) for k, v in by_cell.items()}
        rules = {rule for rule, _ in cells}
        attacks = _ordered({a for _, a in cells}, ATTACK_ORDER)
        by_base = defaultdict(list)
        for rule in rules:
            by_base[rule.split("+")[-1]].append(rule)
        blocks = [(b, sorted(by_base[b], key=_rule_order)) for b in sorted(by_base, key=block_rank)]
        for rule in rules:
            mine = [cells[(rule, a)] for a in attacks if (rule, a) in cells]
            cells[(rule, "worst")] = min(mine, key=lambda c: c[0])
        tables.append(Table(s, blocks, attacks, cells, _cell(base) if base else None))
    return tables


def _fmt(cell, bold=False):
    if cell is None:
        return "—"
    m, s, k = cell
    text = f"{100 * m:.2f} ± {100 * s:.2f}" if k > 1 else f"{100 * m:.2f}"
    return f"**{text}**" if bold else text


def title_fields(settings) -> list[str]:
    """The fields that name a setting among ``settings``: :data:`TITLE_FIELDS`, then any
    other field whose value differs between them (e.g. ``lr`` in a learning-rate sweep)."""
    settings = list(settings)
    others = sorted({k for s in settings for k in s} - set(TITLE_FIELDS))
    return [*TITLE_FIELDS, *(k for k in others if len({str(s.get(k)) for s in settings}) > 1)]


def title(setting: dict, fields=TITLE_FIELDS) -> str:
    return ", ".join(f"{k}={setting[k]}" for k in fields if k in setting)


def format_markdown(records: list[dict]) -> str:
    """Markdown: per setting a title line and a table with one row per rule, one column per
    attack and the worst case; the best mean of each block and column in bold."""
    out = []
    tables = accuracy_tables(records)
    fields = title_fields(t.setting for t in tables)
    for t in tables:
        cols = [*t.attacks, "worst"]
        head = ["rule", *[c if c != "worst" else "worst case" for c in cols]]
        lines = [f"**{title(t.setting, fields)}** — max test accuracy (%), mean ± std over seeds", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, rules in t.blocks:
            best = {c: max((t.cells[(r, c)][0] for r in rules if (r, c) in t.cells), default=None)
                    for c in cols}
            for rule in rules:
                row = [rule]
                for c in cols:
                    cell = t.cells.get((rule, c))
                    row.append(_fmt(cell, bold=len(rules) > 1 and cell is not None
                                    and cell[0] == best[c]))
                lines.append("| " + " | ".join(row) + " |")
        if t.baseline is not None:
            lines += ["", f"Fault-free baseline (mean, {t.setting['n'] - t.setting['f']} honest "
                          f"workers): {_fmt(t.baseline)}"]
        out.append("\n".join(lines))
    return "\n\n".join(out)


def write_csv(records: list[dict], path) -> None:
    """Every table in long form: setting fields, block, rule, attack (or ``worst`` /
    ``baseline``), mean and std of the max test accuracy, number of seeds."""
    import csv

    tables = accuracy_tables(records)
    fields = [k for k in title_fields(t.setting for t in tables)
              if any(k in t.setting for t in tables)]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*fields, "block", "rule", "attack", "mean_max_test_acc",
                    "std_max_test_acc", "seeds"])
        for t in tables:
            prefix = [t.setting.get(k) for k in fields]
            for base, rules in t.blocks:
                for rule in rules:
                    for a in [*t.attacks, "worst"]:
                        if (rule, a) in t.cells:
                            m, s, k = t.cells[(rule, a)]
                            w.writerow([*prefix, base, rule, a, f"{m:.4f}", f"{s:.4f}", k])
            if t.baseline is not None:
                m, s, k = t.baseline
                w.writerow([*prefix, "", "mean", "baseline", f"{m:.4f}", f"{s:.4f}", k])


def worst_case_grid(records: list[dict], row: str = "f", col: str = "alpha"):
    """``(rules, row_values, col_values, grid)`` with ``grid[rule]`` an array of the worst
    case over attacks (mean over seeds) per (``row``, ``col``) setting, NaN where not run;
    settings that differ in other fields must not be mixed (``ValueError``)."""
    tables = accuracy_tables(records)
    others = {tuple((k, v) for k, v in sorted(t.setting.items()) if k not in (row, col, "n"))
              for t in tables}
    if len(others) > 1:
        raise ValueError(f"records hold settings that differ in more than {row!r} and {col!r}")
    rows = sorted({t.setting[row] for t in tables})
    cols = sorted({t.setting[col] for t in tables})
    rules = sorted({r for t in tables for _, rs in t.blocks for r in rs},
                   key=lambda r: (block_rank(r.split("+")[-1]), _rule_order(r)))
    grid = {r: np.full((len(rows), len(cols)), np.nan) for r in rules}
    for t in tables:
        i, j = rows.index(t.setting[row]), cols.index(t.setting[col])
        for r in rules:
            if (r, "worst") in t.cells:
                grid[r][i, j] = t.cells[(r, "worst")][0]
    return rules, rows, cols, grid
