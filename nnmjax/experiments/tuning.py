"""Hyperparameter selection over a sweep: per setting and rule, the training
hyperparameters with the best worst case over attacks.

For a rule ``R`` in a setting ``S`` (every record field but the attack, the seeds and the
tuned keys ``K``), each candidate ``v`` (a value of ``K`` that was run) scores

    worst(v) = min over attacks a of  mean over runs of  max_t acc_t(S, R, a, v, run),

the worst case of the paper's Table 2, and the chosen ``v*`` maximises it (ties: the first
in sorted order), as ByzFL's benchmark does (``find_best_hyperparameters``: "maximize the
minimum accuracy across different attacks"; ByzFL scores the maximum over time of the
seed-averaged curve, we the seed average of each run's maximum, as Table 2 does).

(the runs: every ``seed``, and ``data_seed`` when set). Only complete candidates compete:
one that lacks an (attack, seed) another candidate has
would be scored over fewer attacks, so it is left out and reported; a rule with no
complete candidate is not tuned. The chosen candidates' records, with ``K`` dropped from
their keys, make an ordinary run directory's records: :mod:`nnmjax.experiments.table` and
:mod:`nnmjax.experiments.plots` draw the tuned table and figures from them unchanged.
"""
from __future__ import annotations

import csv
from collections import defaultdict
from typing import NamedTuple, Sequence

import numpy as np

__all__ = ["TUNABLE", "Choice", "Tuned", "tune", "format_choices", "write_choices_csv"]

#: Config keys that may be tuned: training hyperparameters, not the problem (``f``,
#: ``alpha``, the data, the model) nor a run's identity (attack, rule, seed).
TUNABLE = ("lr", "lr_schedule", "momentum", "weight_decay", "clip", "batch_size")


#: What tells the runs of one candidate apart.
_RUN = ("attack", "seed", "data_seed")


class Choice(NamedTuple):
    """The chosen ``values`` of the tuned keys for ``rule`` in ``setting``, the worst case
    they give, how many complete candidates were compared, and the incomplete ones left out.

    Attributes:
        setting: the record fields the candidates share (all but the tuned keys, the
            attack, the rule and the seeds).
        rule: the rule tuned.
        values: ``{key: chosen value}``.
        worst: the chosen candidate's worst case over attacks (a fraction).
        compared: the number of complete candidates compared.
        incomplete: the candidates left out (``{key: value}`` each).
    """

    setting: dict
    rule: str
    values: dict
    worst: float
    compared: int
    incomplete: tuple[dict, ...]


class Tuned(NamedTuple):
    """:func:`tune`'s result: the chosen candidates' records (tuned keys dropped from their
    keys), one :class:`Choice` per tuned (setting, rule), and the ``(setting, rule)`` pairs
    with no complete candidate.

    Attributes:
        records: the chosen candidates' records, the tuned keys dropped from their ``key``.
        choices: one :class:`Choice` per tuned (setting, rule), in table order.
        untuned: the ``(setting, rule)`` pairs with no complete candidate.
    """

    records: list[dict]
    choices: list[Choice]
    untuned: list[tuple[dict, str]]


def _frozen(v):
    return tuple(v) if isinstance(v, list) else v


def _order(values: tuple) -> tuple:
    """Sort key of a candidate: by value, ``None`` (e.g. no clipping) last."""
    return tuple((x is None, 0 if x is None else x) for x in values)


def _check_keys(records, keys) -> tuple[str, ...]:
    keys = tuple(keys)
    if not keys:
        raise ValueError("name at least one key to tune")
    if len(set(keys)) != len(keys):
        raise ValueError(f"keys to tune repeat: {list(keys)}")
    bad = [k for k in keys if k not in TUNABLE]
    if bad:
        raise ValueError(f"cannot tune {bad}: tunable keys are {list(TUNABLE)} (training "
                         "hyperparameters; the attack, rule, seed and the problem are not)")
    missing = sorted({k for r in records for k in keys if k not in r["key"]})
    if missing:
        raise ValueError(f"records without key(s) {missing}")
    return keys


def _worst(records) -> float:
    by_attack = defaultdict(list)
    for r in records:
        by_attack[r["key"]["attack"]].append(r["summary"]["max_test_acc"])
    return min(float(np.mean(v)) for v in by_attack.values())


def tune(records: Sequence[dict], keys: Sequence[str]) -> Tuned:
    """Choose, per setting and rule, the values of ``keys`` (among :data:`TUNABLE`) that
    maximise the worst case over attacks (module docstring); ``ValueError`` for keys that
    are not tunable or not in the records.

    Args:
        records: run records of a sweep over ``keys`` (``key`` and
            ``summary.max_test_acc`` are read).
        keys: the config keys tuned, among :data:`TUNABLE`.

    Returns:
        A :class:`Tuned`.

    Raises:
        ValueError: no key, a repeated key, a key not in :data:`TUNABLE`, or records
            without one of ``keys``.

    Examples:
        ``lr = 0.5`` has the best worst case of the complete candidates; ``lr = 1.0`` lacks
        the sign-flipping run and is left out:

        >>> from nnmjax.experiments.tuning import tune
        >>> acc = {(0.1, "alie"): 0.70, (0.1, "sign_flipping"): 0.90, (0.5, "alie"): 0.80,
        ...        (0.5, "sign_flipping"): 0.85, (1.0, "alie"): 0.95}
        >>> records = [{"key": {"n": 5, "f": 1, "lr": lr, "attack": a, "rule": "cwtm", "seed": 1},
        ...             "summary": {"max_test_acc": v}} for (lr, a), v in acc.items()]
        >>> (choice,) = tune(records, ["lr"]).choices
        >>> choice.values, choice.worst, choice.compared, choice.incomplete
        ({'lr': 0.5}, 0.8, 2, ({'lr': 1.0},))
        >>> [r["key"]["attack"] for r in tune(records, ["lr"]).records]
        ['alie', 'sign_flipping']
    """
    keys = _check_keys(records, keys)
    groups = defaultdict(lambda: defaultdict(list))
    for r in records:
        key = r["key"]
        setting = tuple(sorted((k, _frozen(v)) for k, v in key.items()
                               if k not in keys and k not in _RUN))
        groups[setting][tuple(_frozen(key[k]) for k in keys)].append(r)
    out, choices, untuned = [], [], []
    for setting, candidates in groups.items():
        s = {k: v for k, v in setting if k != "rule"}
        rule = dict(setting)["rule"]
        runs = {v: {tuple(r["key"].get(k) for k in _RUN) for r in rs}
                for v, rs in candidates.items()}
        union = set().union(*runs.values())
        complete = sorted((v for v in candidates if runs[v] == union), key=_order)
        incomplete = tuple(dict(zip(keys, v)) for v in sorted(candidates, key=_order)
                           if runs[v] != union)
        if not complete:
            untuned.append((s, rule))
            continue
        score = {v: _worst(candidates[v]) for v in complete}
        best = max(complete, key=lambda v: (score[v], -complete.index(v)))  # ties: the first
        choices.append(Choice(s, rule, dict(zip(keys, best)), score[best], len(complete),
                              incomplete))
        out += [{**r, "key": {k: v for k, v in r["key"].items() if k not in keys}}
                for r in candidates[best]]
    return Tuned(out, sorted(choices, key=lambda c: _rank(c.setting, c.rule)),
                 sorted(untuned, key=lambda p: _rank(*p)))


def _rank(setting: dict, rule: str) -> tuple:
    """Table order: by setting (the baseline after its setting's rules), block, rule."""
    from nnmjax.experiments.table import _rule_order, block_rank

    other = sorted((k, str(v)) for k, v in setting.items() if k not in ("n", "f"))
    return (other, setting.get("f") == 0, block_rank(rule.split("+")[-1]), _rule_order(rule))


def _setting_text(setting: dict, varying: Sequence[str]) -> str:
    return ", ".join(f"{k}={setting[k]}" for k in varying if k in setting) or "-"


def _varying(settings) -> list[str]:
    fields = sorted({k for s in settings for k in s})
    return [k for k in fields if len({str(s.get(k)) for s in settings}) > 1]


def format_choices(tuned: Tuned) -> str:
    """Markdown: one row per tuned (setting, rule) with the chosen values, their worst case
    and the candidates compared; then the rules not tuned.

    Args:
        tuned: :func:`tune`'s result.

    Returns:
        The Markdown table (settings shown by the fields that differ between them), or
        ``"No runs to tune."``.

    Examples:
        >>> from nnmjax.experiments.tuning import format_choices, tune
        >>> acc = {(0.1, "alie"): 0.70, (0.1, "sign_flipping"): 0.90, (0.5, "alie"): 0.80,
        ...        (0.5, "sign_flipping"): 0.85, (1.0, "alie"): 0.95}
        >>> records = [{"key": {"n": 5, "f": 1, "lr": lr, "attack": a, "rule": "cwtm", "seed": 1},
        ...             "summary": {"max_test_acc": v}} for (lr, a), v in acc.items()]
        >>> print(format_choices(tune(records, ["lr"])))
        | setting | rule | lr | worst case (%) | complete candidates | left out (incomplete) |
        |---|---|---|---|---|---|
        | - | cwtm | 0.5 | 80.00 | 2 | lr=1.0 |
    """
    if not tuned.choices and not tuned.untuned:
        return "No runs to tune."
    keys = list(tuned.choices[0].values) if tuned.choices else []
    varying = _varying([c.setting for c in tuned.choices] + [s for s, _ in tuned.untuned])
    head = ["setting", "rule", *keys, "worst case (%)", "complete candidates", "left out (incomplete)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in tuned.choices:
        left = "; ".join(", ".join(f"{k}={v}" for k, v in d.items()) for d in c.incomplete) or "-"
        lines.append("| " + " | ".join([_setting_text(c.setting, varying), c.rule,
                                          *[str(c.values[k]) for k in keys],
                                          f"{100 * c.worst:.2f}", str(c.compared), left]) + " |")
    for s, rule in tuned.untuned:
        lines.append(f"\nNot tuned: {rule} ({_setting_text(s, varying)}): no candidate has every "
                     "attack and seed that another has.")
    return "\n".join(lines)


def write_choices_csv(tuned: Tuned, path) -> None:
    """One row per tuned (setting, rule): setting fields, rule, chosen values, worst case,
    number of complete candidates compared, number left out.

    Args:
        tuned: :func:`tune`'s result.
        path: the CSV file to write (replaced when it exists).

    Examples:
        >>> import os, tempfile
        >>> from nnmjax.experiments.tuning import tune, write_choices_csv
        >>> acc = {(0.1, "alie"): 0.70, (0.1, "sign_flipping"): 0.90, (0.5, "alie"): 0.80,
        ...        (0.5, "sign_flipping"): 0.85, (1.0, "alie"): 0.95}
        >>> records = [{"key": {"n": 5, "f": 1, "lr": lr, "attack": a, "rule": "cwtm", "seed": 1},
        ...             "summary": {"max_test_acc": v}} for (lr, a), v in acc.items()]
        >>> with tempfile.TemporaryDirectory() as d:
        ...     write_choices_csv(tune(records, ["lr"]), os.path.join(d, "tuned.csv"))
        ...     print(open(os.path.join(d, "tuned.csv")).read())
        f,n,rule,lr,worst_max_test_acc,compared,incomplete
        1,5,cwtm,0.5,0.8000,2,1
        <BLANKLINE>
    """
    fields = sorted({k for c in tuned.choices for k in c.setting})
    keys = list(tuned.choices[0].values) if tuned.choices else []
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*fields, "rule", *keys, "worst_max_test_acc", "compared", "incomplete"])
        for c in tuned.choices:
            w.writerow([*[c.setting.get(k) for k in fields], c.rule, *[c.values[k] for k in keys],
                        f"{c.worst:.4f}", c.compared, len(c.incomplete)])
