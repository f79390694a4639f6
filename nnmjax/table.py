"""Result tables in the paper's Table 2 layout: max test accuracy (mean +- std over seeds)
per attack, one row per rule, plus the worst case over attacks."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

__all__ = ["accuracy_table", "format_markdown", "write_csv"]


def accuracy_table(records: list[dict]) -> tuple[list[str], list[str], dict]:
    """Return ``(rules, attacks, cells)`` with ``cells[(rule, attack)] = (mean, std, seeds)`` of
    the max test accuracy and ``cells[(rule, "worst")]`` the worst attack's cell."""
    acc = defaultdict(list)
    for r in records:
        key = r["key"]
        acc[(key["rule"], key["attack"])].append(r["summary"]["max_test_acc"])
    rules = sorted({k[0] for k in acc}, key=lambda s: (s.split("+")[-1], s.count("+"), s))
    attacks = sorted({k[1] for k in acc})
    cells = {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in acc.items()}
    for rule in rules:
        mine = [cells[(rule, a)] for a in attacks if (rule, a) in cells]
        cells[(rule, "worst")] = min(mine, key=lambda c: c[0])
    return rules, attacks, cells


def _fmt(cell):
    if cell is None:
        return "—"
    m, s, k = cell
    return f"{100 * m:.1f} ± {100 * s:.1f}" if k > 1 else f"{100 * m:.1f}"


def format_markdown(records: list[dict]) -> str:
    """Markdown table: rows = rules, columns = attacks and the worst case (accuracy in %)."""
    rules, attacks, cells = accuracy_table(records)
    head = ["rule", *attacks, "worst case"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rule in rules:
        row = [rule] + [_fmt(cells.get((rule, a))) for a in attacks] + [_fmt(cells[(rule, "worst")])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_csv(records: list[dict], path) -> None:
    """The same table as CSV with separate mean/std columns."""
    import csv

    rules, attacks, cells = accuracy_table(records)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["rule", "attack", "mean_max_test_acc", "std_max_test_acc", "seeds"])
        for rule in rules:
            for a in [*attacks, "worst"]:
                if (rule, a) in cells:
                    m, s, k = cells[(rule, a)]
                    w.writerow([rule, a, f"{m:.4f}", f"{s:.4f}", k])
