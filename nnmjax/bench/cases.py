"""What ``nnmjax bench`` measures: cases ``(n, d, f)``, rule names, targets, the configuration."""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Sequence

SCHEMA = "nnmjax.bench.aggregators/1"


@dataclass(frozen=True)
class Case:
    n: int
    d: int
    f: int

    @property
    def label(self) -> str:
        return f"n={self.n} d={fmt_d(self.d)} f={self.f}"


def fmt_d(d: int) -> str:
    e = int(round(math.log10(d))) if d > 0 else 0
    return f"1e{e}" if d > 0 and 10 ** e == d else str(d)


DEFAULT_CASES = (Case(17, 100_000, 4), Case(17, 1_000_000, 4), Case(100, 100_000, 20),
                 Case(1000, 10_000, 200))
QUICK_CASES = DEFAULT_CASES[:2]
QUICK_RULES = ("mean", "cwmed", "cwtm", "gm", "krum", "multikrum", "meamed", "nnm",
               "nnm+cwtm", "nnm+krum")

#: The project's throughput targets against ByzFL's faster backend:
#: (case, minimum speed-up of every rule, {rule: stronger minimum}).
TARGETS = (
    (Case(17, 1_000_000, 4), 3.0, {"nnm": 10.0, "nnm+cwtm": 10.0}),
    (Case(100, 100_000, 20), 1.5, {"nnm": 10.0, "nnm+cwtm": 10.0}),
)
#: Targets against each rule's floor (:mod:`nnmjax.bench.floors`): (case, {rule: largest
#: multiple of its floor}).
FLOOR_TARGETS = (
    (Case(17, 1_000_000, 4), {"nnm": 2.0, "krum": 2.0, "gm": 2.0}),
)


def default_rules() -> list[str]:
    """Every aggregator, the NNM pre-aggregator alone, and ``nnm+X`` for every aggregator."""
    from nnmjax.robust.aggregators import AGGREGATORS

    return list(AGGREGATORS) + ["nnm"] + [f"nnm+{a}" for a in AGGREGATORS]


def parse_case(text: str) -> Case:
    """``"17:1e6:4"`` (also ``x`` or ``,`` as separators) -> ``Case(17, 1000000, 4)``."""
    parts = text.replace("x", ":").replace(",", ":").split(":")
    if len(parts) != 3:
        raise ValueError(f"a case is N:D:F (e.g. 17:1e6:4); got {text!r}")
    try:
        n, d, f = (int(float(p)) for p in parts)
    except ValueError:
        raise ValueError(f"a case is N:D:F with numbers (e.g. 17:1e6:4); got {text!r}") from None
    if n < 1 or d < 1 or f < 0 or 2 * f >= n:
        raise ValueError(f"case {text!r} needs n >= 1, d >= 1 and 0 <= 2f < n")
    return Case(n, d, f)


@dataclass
class BenchConfig:
    cases: Sequence[Case] = DEFAULT_CASES
    rules: Sequence[str] | None = None  # None: default_rules()
    repeats: int = 5
    seed: int = 0
    byzfl: bool = True
    numpy: bool = True
    isolate: bool = True
    budget_s: float = 5.0  # time spent on timed calls per (rule, implementation)
    single_call_s: float = 3.0  # a longer warm-up is the only sample
    call_timeout_s: float = 20.0  # kill one step (compile, call) past this (isolate only)
    compile_timeout_s: float = 300.0
    gather_limit_gb: float | None = None  # ByzFL NNM's (n, n-f, d) gather; None: auto

    def __post_init__(self):
        self.cases = tuple(self.cases)
        if self.rules is not None:
            self.rules = tuple(self.rules)
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1; got {self.repeats}")
        for name in ("budget_s", "single_call_s", "call_timeout_s", "compile_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)}")


def rule_stages(name: str) -> list[str]:
    return [s.strip() for s in name.split("+")]


def max_subsets(stage: str) -> int | None:
    from nnmjax.robust.aggregators import AGGREGATORS

    fn = AGGREGATORS.get(stage)
    if fn is None:
        return None
    p = inspect.signature(fn).parameters.get("max_subsets")
    return None if p is None else p.default


def check_rule(name: str) -> None:
    """Raise ``ValueError`` (listing the known names) for an unknown rule name."""
    from nnmjax.robust import preaggregators, rules

    if name in preaggregators.PREAGGREGATORS:
        if name in rules.RANDOMIZED:
            raise ValueError(f"pre-aggregator {name!r} alone is not benchmarked; "
                             f"compose it, e.g. '{name}+cwtm'")
        return
    rules.rule(name, 1)  # validates the name


def rule_skip(name: str, case: Case) -> str | None:
    """Why ``name`` cannot run on ``case`` at all (``None``: it can)."""
    for s in rule_stages(name):
        limit = max_subsets(s)
        if limit is not None:
            count = math.comb(case.n, case.f)
            if count > limit:
                return (f"{s} enumerates C({case.n}, {case.f}) = {count:.3g} subsets "
                        f"> max_subsets={limit:,}")
    return None
