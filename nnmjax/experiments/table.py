"""Result tables in the paper's Table 2 layout.

For each setting of a run directory (every record field but attack, rule and the seeds), one
table: the max test accuracy over the run, mean +- std over runs (seeds, and partition
seeds when a grid sets ``data_seed``), per attack, plus the
worst case over attacks; rows grouped in blocks by base rule (the final aggregator:
``krum``, ``bucketing+krum``, ``nnm+krum``, then ``gm``, ...), the best cell of each
block marked (bold in Markdown, as in the paper). The fault-free baseline (``attack =
"none"``, ``rule = "mean"`` with the honest workers only) is reported under the table of
every setting with the same number of honest workers.

One formatting everywhere: :func:`format_text` (the terminal), :func:`format_markdown`
(``table.md``) and :func:`write_csv` (``table.csv``) show the same numbers, percent with 2
decimals, ``mean ± std`` over a cell's seeds (a one-seed cell shows the mean alone, and
``table.csv`` leaves its std empty), and each table's heading says over how many seeds.
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import NamedTuple

import numpy as np

__all__ = ["Table", "accuracy_tables", "format_markdown", "format_text", "markdown_as_text",
           "write_csv", "worst_case_grid", "setting_groups", "seeds_phrase", "title",
           "title_fields", "block_rank", "align", "ATTACK_ORDER", "BLOCK_ORDER", "BEST_LEGEND"]

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
TITLE_FIELDS = ("dataset", "model", "algorithm", "topology", "n", "f", "tolerated_f",
                "partition", "alpha", "momentum", "local_steps", "participation", "steps")
#: Fields only some algorithms read (D-SHB's worker momentum), left out of the other
#: algorithms' titles.
ALGORITHM_FIELDS = {"momentum": ("dshb", "decentralized")}


class Table(NamedTuple):
    """One setting's table: ``cells[(rule, attack)] = (mean, std, seeds)`` of the max test
    accuracy (``attack = "worst"``: the lowest-mean attack of that rule).

    Attributes:
        setting: the record fields the table's runs share (all but attack, rule, seeds).
        blocks: ``(base rule, [rules])`` in table order.
        attacks: the attack columns, in :data:`ATTACK_ORDER`.
        cells: ``{(rule, attack): (mean, std, seeds)}``, ``attack = "worst"`` included.
        baseline: ``(mean, std, seeds)`` of the fault-free baseline, or ``None``.
    """

    setting: dict
    blocks: list[tuple[str, list[str]]]
    attacks: list[str]
    cells: dict
    baseline: tuple | None


def _ordered(names, order):
    return sorted(names, key=lambda s: (order.index(s) if s in order else len(order), s))


def block_rank(base: str) -> tuple:
    """Sort key of a block (base rule): the paper's order, then alphabetical.

    Args:
        base: the block's base rule (a rule's final aggregator).

    Returns:
        ``(position in BLOCK_ORDER, base)``, rules not in :data:`BLOCK_ORDER` after those.

    Examples:
        >>> from nnmjax.experiments.table import block_rank
        >>> sorted(["multikrum", "cwtm", "zeno", "krum", "gm"], key=block_rank)
        ['krum', 'gm', 'cwtm', 'multikrum', 'zeno']
    """
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
    same number of honest workers (and otherwise equal fields).

    Args:
        records: run records (:class:`~nnmjax.experiments.results.Record`); only their
            ``key`` is read.

    Returns:
        ``(setting, records)`` pairs sorted by setting; a setting is a record's ``key``
        without attack, rule, seed and ``data_seed``. Baseline-only settings are left out.

    Examples:
        >>> from nnmjax.experiments.table import setting_groups
        >>> records = [{"key": {"n": n, "f": f, "attack": a, "rule": r, "seed": 1}}
        ...            for n, f, a, r in [(5, 1, "alie", "cwtm"), (6, 2, "alie", "cwtm"),
        ...                               (4, 0, "none", "mean")]]
        >>> [(s, [r["key"]["rule"] for r in rs]) for s, rs in setting_groups(records)]
        [({'f': 1, 'n': 5}, ['cwtm', 'mean']), ({'f': 2, 'n': 6}, ['cwtm', 'mean'])]
    """
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
        honest = s["n"] if s.get("algorithm") == "decentralized" else s["n"] - s["f"]
        base_key = (_setting({k: v for k, v in s.items() if k not in _ATTACKED}), honest)
        out.append((s, recs + baselines.get(base_key, [])))
    return sorted(out, key=lambda p: (tuple(str(p[0].get(k)) for k in TITLE_FIELDS),
                                      tuple(sorted((k, str(v)) for k, v in p[0].items()))))


def _is_baseline(record) -> bool:
    return record["key"]["attack"] == "none" and record["key"]["f"] == 0


def accuracy_tables(records: list[dict]) -> list[Table]:
    """One :class:`Table` per setting among ``records`` (baseline-only settings excepted).

    Args:
        records: run records (``key`` and ``summary.max_test_acc`` are read).

    Returns:
        The tables, in :func:`setting_groups` order.

    Examples:
        >>> from nnmjax.experiments.table import accuracy_tables
        >>> accs = {("alie", "cwtm"): [0.60, 0.70], ("alie", "nnm+cwtm"): [0.80, 0.84],
        ...         ("sign_flipping", "cwtm"): [0.90, 0.88],
        ...         ("sign_flipping", "nnm+cwtm"): [0.86, 0.90], ("none", "mean"): [0.95, 0.97]}
        >>> records = [{"key": {"dataset": "digits", "n": 5 - (a == "none"), "f": int(a != "none"),
        ...                     "attack": a, "rule": r, "seed": s},
        ...             "summary": {"max_test_acc": acc}}
        ...            for (a, r), seeds in accs.items() for s, acc in enumerate(seeds, 1)]
        >>> (table,) = accuracy_tables(records)
        >>> table.setting, table.blocks, table.attacks
        ({'dataset': 'digits', 'f': 1, 'n': 5}, [('cwtm', ['cwtm', 'nnm+cwtm'])],
         ['alie', 'sign_flipping'])
        >>> table.cells[("cwtm", "worst")], table.baseline
        ((0.65, 0.05, 2), (0.96, 0.01, 2))
    """
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


def title_fields(settings) -> list[str]:
    """The fields that name a setting among ``settings``: :data:`TITLE_FIELDS`, then any
    other field whose value differs between them (e.g. ``lr`` in a learning-rate sweep).

    Args:
        settings: the settings (dicts) shown together.

    Returns:
        The field names, :data:`TITLE_FIELDS` first, the varying others sorted.

    Examples:
        >>> from nnmjax.experiments.table import TITLE_FIELDS, title_fields
        >>> fields = title_fields([{"n": 5, "lr": 0.1, "clip": 2.0},
        ...                        {"n": 5, "lr": 0.5, "clip": 2.0}])
        >>> fields == [*TITLE_FIELDS, "lr"], fields[:4]
        (True, ['dataset', 'model', 'algorithm', 'topology'])
    """
    settings = list(settings)
    others = sorted({k for s in settings for k in s} - set(TITLE_FIELDS))
    return [*TITLE_FIELDS, *(k for k in others if len({str(s.get(k)) for s in settings}) > 1)]


def title(setting: dict, fields=TITLE_FIELDS) -> str:
    """A table's title: ``field=value`` of the ``fields`` that ``setting`` has, in order.

    Args:
        setting: the table's setting.
        fields: the fields to show (:func:`title_fields`).

    Returns:
        The fields joined by ``", "``.

    Examples:
        >>> from nnmjax.experiments.table import title
        >>> title({"lr": 0.1, "dataset": "digits", "n": 5, "f": 1})
        'dataset=digits, n=5, f=1'
        >>> title({"lr": 0.1, "dataset": "digits"}, ["dataset", "lr"])
        'dataset=digits, lr=0.1'
        >>> title({"algorithm": "fedavg", "momentum": 0.9, "local_steps": 5})
        'algorithm=fedavg, local_steps=5'
    """
    def shown(k):
        return k in setting and setting.get("algorithm", "dshb") in ALGORITHM_FIELDS.get(
            k, (setting.get("algorithm", "dshb"),))

    return ", ".join(f"{k}={setting[k]}" for k in fields if shown(k))


def _pct(x) -> str:
    """A fraction as the tables print it: percent, 2 decimals (the text and Markdown tables
    and ``table.csv`` all use this)."""
    return f"{100 * x:.2f}"


def _parts(cell) -> tuple[str, str | None]:
    """``(mean, std)`` of a cell in percent; ``std`` is ``None`` for a one-seed cell."""
    m, s, k = cell
    return _pct(m), (_pct(s) if k > 1 else None)


def _fmt(cell, bold=False):
    if cell is None:
        return "—"
    m, s = _parts(cell)
    text = m if s is None else f"{m} ± {s}"
    return f"**{text}**" if bold else text


def seeds_phrase(t: Table) -> str:
    """What a table's cells are over: ``"mean ± std over 5 seeds"``, ``"one seed"``, or
    ``"mean ± std, seeds: 1–5 per cell"`` when cells (or the baseline) differ in seeds. A
    cell's "seeds" are its runs: every ``seed`` (and ``data_seed``, when a grid sets it).

    Args:
        t: the table.

    Returns:
        The phrase.

    Examples:
        >>> from nnmjax.experiments.table import Table, seeds_phrase
        >>> seeds_phrase(Table({}, [], ["alie"], {("cwtm", "alie"): (0.8, 0.1, 5)}, None))
        'mean ± std over 5 seeds'
        >>> seeds_phrase(Table({}, [], ["alie"], {("cwtm", "alie"): (0.8, 0.1, 5)},
        ...                    (0.9, 0.0, 1)))
        'mean ± std, seeds: 1–5 per cell'
    """
    ks = {c[2] for c in t.cells.values()} | ({t.baseline[2]} if t.baseline else set())
    if ks == {1}:
        return "one seed"
    if len(ks) == 1:
        return f"mean ± std over {ks.pop()} seeds"
    return f"mean ± std, seeds: {min(ks)}–{max(ks)} per cell"


def _heading(t: Table, fields) -> tuple[str, str]:
    return title(t.setting, fields), f"max test accuracy (%), {seeds_phrase(t)}"


def _columns(t: Table) -> list[str]:
    return [*t.attacks, "worst"]


def _header(t: Table) -> list[str]:
    return ["rule", *[c if c != "worst" else "worst case" for c in _columns(t)]]


def _marked_blocks(t: Table):
    """Per block, ``(rule, [(cell or None, best), ...])`` rows over :func:`_columns`; ``best``:
    the block's highest mean in that column (blocks of one rule mark nothing)."""
    cols = _columns(t)
    out = []
    for _, rules in t.blocks:
        best = {c: max((t.cells[(r, c)][0] for r in rules if (r, c) in t.cells), default=None)
                for c in cols}
        rows = []
        for rule in rules:
            cells = [t.cells.get((rule, c)) for c in cols]
            rows.append((rule, [(cell, len(rules) > 1 and cell is not None and cell[0] == best[c])
                                for c, cell in zip(cols, cells)]))
        out.append(rows)
    return out


def _baseline_line(t: Table) -> str:
    if t.setting.get("algorithm") == "decentralized":
        return (f"Fault-free baseline (mean, all {t.setting['n']} nodes honest): "
                f"{_fmt(t.baseline)}")
    return (f"Fault-free baseline (mean, {t.setting['n'] - t.setting['f']} honest workers): "
            f"{_fmt(t.baseline)}")


def format_markdown(records: list[dict]) -> str:
    """Markdown: per setting a title line (which says over how many seeds), and a table with
    one row per rule, one column per attack and the worst case; the best mean of each block
    and column in bold. The numbers are those of :func:`format_text` and :func:`write_csv`.

    Args:
        records: run records (``key`` and ``summary.max_test_acc`` are read).

    Returns:
        The tables, separated by blank lines (``""`` for no records).

    Examples:
        >>> from nnmjax.experiments.table import format_markdown
        >>> accs = {("alie", "cwtm"): [0.60, 0.70], ("alie", "nnm+cwtm"): [0.80, 0.84],
        ...         ("sign_flipping", "cwtm"): [0.90, 0.88],
        ...         ("sign_flipping", "nnm+cwtm"): [0.86, 0.90], ("none", "mean"): [0.95, 0.97]}
        >>> records = [{"key": {"dataset": "digits", "n": 5 - (a == "none"), "f": int(a != "none"),
        ...                     "attack": a, "rule": r, "seed": s},
        ...             "summary": {"max_test_acc": acc}}
        ...            for (a, r), seeds in accs.items() for s, acc in enumerate(seeds, 1)]
        >>> print(format_markdown(records))
        **dataset=digits, n=5, f=1** — max test accuracy (%), mean ± std over 2 seeds
        <BLANKLINE>
        | rule | alie | sign_flipping | worst case |
        |---|---|---|---|
        | cwtm | 65.00 ± 5.00 | **89.00 ± 1.00** | 65.00 ± 5.00 |
        | nnm+cwtm | **82.00 ± 2.00** | 88.00 ± 2.00 | **82.00 ± 2.00** |
        <BLANKLINE>
        Fault-free baseline (mean, 4 honest workers): 96.00 ± 1.00
    """
    out = []
    tables = accuracy_tables(records)
    fields = title_fields(t.setting for t in tables)
    for t in tables:
        name, what = _heading(t, fields)
        head = _header(t)
        lines = [f"**{name}** — {what}", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for block in _marked_blocks(t):
            for rule, cells in block:
                lines.append("| " + " | ".join([rule, *(_fmt(c, b) for c, b in cells)]) + " |")
        if t.baseline is not None:
            lines += ["", _baseline_line(t)]
        out.append("\n".join(lines))
    return "\n\n".join(out)


#: How :func:`format_text` marks the best cell of a block, and its legend.
BEST_MARK = "*"
BEST_LEGEND = f"{BEST_MARK} best in its block"


def _text_column(cells) -> list[str]:
    """One column's cells as aligned text: means right-aligned, ``± std`` aligned after them
    (blank for one-seed cells), the best cell followed by :data:`BEST_MARK`."""
    parts = [None if c is None else _parts(c) for c, _ in cells]
    wm = max((len(p[0]) for p in parts if p), default=0)
    ws = max((len(p[1]) for p in parts if p and p[1] is not None), default=0)
    marked = any(b for _, b in cells)
    out = []
    for p, (_, best) in zip(parts, cells):
        if p is None:
            text = "—".rjust(wm + (3 + ws if ws else 0))
        else:
            m, s = p
            pad = " " * (3 + ws) if ws else ""
            text = m.rjust(wm) + (f" ± {s.rjust(ws)}" if s is not None else pad)
        out.append(text + (BEST_MARK if best else " " if marked else ""))
    return out


def align(head: list[str], blocks: list[list[list[str]]], right=None) -> list[str]:
    """Lines of a plain-text table: ``head``, a rule of dashes, then the rows of each block
    (a rule of dashes between blocks); columns two spaces apart, those whose index is in
    ``right`` (default: all but the first) right-aligned, the others left-aligned.

    Args:
        head: the column names.
        blocks: blocks of rows, each row a list of cells (one per column).
        right: the indices of the right-aligned columns; ``None``: all but the first.

    Returns:
        The lines, trailing spaces removed.

    Examples:
        >>> from nnmjax.experiments.table import align
        >>> for line in align(["rule", "acc"], [[["cwtm", "65.0"], ["nnm+cwtm", "82.5"]],
        ...                                     [["gm", "70"]]]):
        ...     print(line)
        rule       acc
        --------  ----
        cwtm      65.0
        nnm+cwtm  82.5
        --------  ----
        gm          70
    """
    rows = [r for b in blocks for r in b]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    right = set(range(1, len(head))) if right is None else set(right)

    def line(row):
        return "  ".join(str(x).rjust(w) if i in right else str(x).ljust(w)
                         for i, (x, w) in enumerate(zip(row, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(head), rule]
    for i, b in enumerate(blocks):
        if i:
            out.append(rule)
        out += [line(r) for r in b]
    return out


def format_text(records: list[dict]) -> str:
    """The tables of :func:`format_markdown` as plain aligned text for a terminal: a plain
    title line, columns padded, the best cell of each block marked with :data:`BEST_MARK`
    (legend below the table), the same numbers.

    Args:
        records: run records (``key`` and ``summary.max_test_acc`` are read).

    Returns:
        The tables, separated by blank lines (``""`` for no records).

    Examples:
        >>> from nnmjax.experiments.table import format_text
        >>> accs = {("alie", "cwtm"): [0.60, 0.70], ("alie", "nnm+cwtm"): [0.80, 0.84],
        ...         ("sign_flipping", "cwtm"): [0.90, 0.88],
        ...         ("sign_flipping", "nnm+cwtm"): [0.86, 0.90], ("none", "mean"): [0.95, 0.97]}
        >>> records = [{"key": {"dataset": "digits", "n": 5 - (a == "none"), "f": int(a != "none"),
        ...                     "attack": a, "rule": r, "seed": s},
        ...             "summary": {"max_test_acc": acc}}
        ...            for (a, r), seeds in accs.items() for s, acc in enumerate(seeds, 1)]
        >>> print(format_text(records))
        dataset=digits, n=5, f=1 — max test accuracy (%), mean ± std over 2 seeds
        <BLANKLINE>
        rule               alie  sign_flipping     worst case
        --------  -------------  -------------  -------------
        cwtm      65.00 ± 5.00   89.00 ± 1.00*  65.00 ± 5.00
        nnm+cwtm  82.00 ± 2.00*  88.00 ± 2.00   82.00 ± 2.00*
        * best in its block
        <BLANKLINE>
        Fault-free baseline (mean, 4 honest workers): 96.00 ± 1.00
    """
    out = []
    tables = accuracy_tables(records)
    fields = title_fields(t.setting for t in tables)
    for t in tables:
        name, what = _heading(t, fields)
        blocks = _marked_blocks(t)
        flat = [cells for block in blocks for _, cells in block]
        columns = [_text_column([row[j] for row in flat]) for j in range(len(_columns(t)))]
        texts = [[col[i] for col in columns] for i in range(len(flat))]
        rows, i = [], 0
        for block in blocks:
            rows.append([[rule, *texts[i + j]] for j, (rule, _) in enumerate(block)])
            i += len(block)
        lines = [f"{name} — {what}", "", *align(_header(t), rows)]
        if any(b for cells in flat for _, b in cells):
            lines.append(BEST_LEGEND)
        if t.baseline is not None:
            lines += ["", _baseline_line(t)]
        out.append("\n".join(lines))
    return "\n\n".join(out)


def markdown_as_text(md: str) -> str:
    """Markdown pipe tables in ``md`` (e.g. :func:`nnmjax.experiments.tuning.format_choices`) as plain
    aligned text (numeric columns right-aligned), ``**bold**`` markup dropped; other lines
    as they are.

    Args:
        md: Markdown text.

    Returns:
        The text with its tables aligned (:func:`align`).

    Examples:
        >>> from nnmjax.experiments.table import markdown_as_text
        >>> md = ["**Chosen**", "", "| rule | acc |", "|---|---|", "| **nnm+cwtm** | 82.5 |",
        ...       "| cwtm | 65.0 |"]
        >>> print(markdown_as_text("\\n".join(md)))
        Chosen
        <BLANKLINE>
        rule       acc
        --------  ----
        nnm+cwtm  82.5
        cwtm      65.0
    """
    def plain(s):
        return re.sub(r"\*\*(.*?)\*\*", r"\1", s)

    out, rows = [], []

    def flush():
        if rows:
            head, *body = rows
            number = re.compile(r"[-+]?[\d.]+(e[-+]?\d+)?")
            numeric = {j for j in range(len(head))
                       if body and all(len(r) > j and number.fullmatch(r[j]) for r in body)}
            out.extend(align(head, [body], right=numeric))
            rows.clear()

    for line in md.splitlines():
        s = line.strip()
        if s.startswith("|") and s.endswith("|"):
            cells = [plain(c.strip()) for c in s[1:-1].split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        else:
            flush()
            out.append(plain(line))
    flush()
    return "\n".join(out)


def write_csv(records: list[dict], path) -> None:
    """Every table in long form: setting fields, block, rule, attack (or ``worst`` /
    ``baseline``), mean and std of the max test accuracy in percent with the tables' 2
    decimals (``max_test_acc_mean_pct``, ``max_test_acc_std_pct``: empty for one seed), and
    the number of seeds (``seeds``).

    Args:
        records: run records (``key`` and ``summary.max_test_acc`` are read).
        path: the CSV file to write (replaced when it exists).

    Examples:
        >>> import os, tempfile
        >>> from nnmjax.experiments.table import write_csv
        >>> accs = {("alie", "cwtm"): [0.60, 0.70], ("alie", "nnm+cwtm"): [0.80, 0.84],
        ...         ("sign_flipping", "cwtm"): [0.90, 0.88],
        ...         ("sign_flipping", "nnm+cwtm"): [0.86, 0.90], ("none", "mean"): [0.95, 0.97]}
        >>> records = [{"key": {"dataset": "digits", "n": 5 - (a == "none"), "f": int(a != "none"),
        ...                     "attack": a, "rule": r, "seed": s},
        ...             "summary": {"max_test_acc": acc}}
        ...            for (a, r), seeds in accs.items() for s, acc in enumerate(seeds, 1)]
        >>> with tempfile.TemporaryDirectory() as d:
        ...     write_csv(records, os.path.join(d, "table.csv"))
        ...     print(open(os.path.join(d, "table.csv")).read())
        dataset,n,f,block,rule,attack,max_test_acc_mean_pct,max_test_acc_std_pct,seeds
        digits,5,1,cwtm,cwtm,alie,65.00,5.00,2
        digits,5,1,cwtm,cwtm,sign_flipping,89.00,1.00,2
        digits,5,1,cwtm,cwtm,worst,65.00,5.00,2
        digits,5,1,cwtm,nnm+cwtm,alie,82.00,2.00,2
        digits,5,1,cwtm,nnm+cwtm,sign_flipping,88.00,2.00,2
        digits,5,1,cwtm,nnm+cwtm,worst,82.00,2.00,2
        digits,5,1,,mean,baseline,96.00,1.00,2
        <BLANKLINE>
    """
    import csv

    tables = accuracy_tables(records)
    fields = [k for k in title_fields(t.setting for t in tables)
              if any(k in t.setting for t in tables)]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*fields, "block", "rule", "attack", "max_test_acc_mean_pct",
                    "max_test_acc_std_pct", "seeds"])
        for t in tables:
            prefix = [t.setting.get(k) for k in fields]
            for base, rules in t.blocks:
                for rule in rules:
                    for a in _columns(t):
                        if (rule, a) in t.cells:
                            m, s = _parts(t.cells[(rule, a)])
                            w.writerow([*prefix, base, rule, a, m, "" if s is None else s,
                                        t.cells[(rule, a)][2]])
            if t.baseline is not None:
                m, s = _parts(t.baseline)
                w.writerow([*prefix, "", "mean", "baseline", m, "" if s is None else s,
                            t.baseline[2]])


def worst_case_grid(records: list[dict], row: str = "f", col: str = "alpha"):
    """``(rules, row_values, col_values, grid)`` with ``grid[rule]`` an array of the worst
    case over attacks (mean over seeds) per (``row``, ``col``) setting, NaN where not run;
    settings that differ in other fields must not be mixed (``ValueError``).

    Args:
        records: run records of one setting swept over ``row`` and ``col``.
        row: the field of the grid's rows.
        col: the field of the grid's columns.

    Returns:
        ``(rules, row_values, col_values, grid)``: the rules in table order, the sorted
        values of ``row`` and ``col``, and ``{rule: (len(rows), len(cols)) array}`` of
        worst-case accuracies (fractions).

    Raises:
        ValueError: the settings differ in a field other than ``row``, ``col`` and ``n``.

    Examples:
        >>> from nnmjax.experiments.table import worst_case_grid
        >>> records = [{"key": {"n": 9, "f": f, "alpha": a, "attack": "alie", "rule": "cwtm",
        ...                     "seed": 1}, "summary": {"max_test_acc": acc}}
        ...            for f, a, acc in [(1, 0.1, 0.8), (1, 1.0, 0.9), (2, 1.0, 0.7)]]
        >>> rules, rows, cols, grid = worst_case_grid(records)
        >>> rules, rows, cols
        (['cwtm'], [1, 2], [0.1, 1.0])
        >>> grid["cwtm"]
        array([[0.8, 0.9],
               [nan, 0.7]])
    """
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
