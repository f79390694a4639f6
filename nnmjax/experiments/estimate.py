"""How long a grid takes: measured run-step costs for the progress bar's ETA and for
``nnmjax run --plan``.

A *run-step* is one training step of one run; a compiled group of ``r`` vmapped runs of
``T`` steps is ``r T`` run-steps. A record's cost is ``wall_s / (steps * vmapped_runs)``
(its group's wall time, compilation included, shared by its runs).

Example::

    >>> clock = StepClock()
    >>> clock.chunk(100, 12.0, first=True)   # compilation + 100 run-steps
    >>> clock.chunk(100, 2.0, first=False)
    >>> clock.step_s(), clock.compile_s()
    (0.02, 10.0)
    >>> clock.eta(run_steps=500, compiles=1)
    20.0
"""
from __future__ import annotations

import statistics
from typing import Sequence

__all__ = ["StepClock", "record_step_s", "plan_seconds", "ROUGH_STEP_S", "format_seconds"]

#: Rough seconds per run-step on a 2-core x86 CPU, compilation included, per model, for
#: grids with no measured step yet: the median over the committed Fashion-MNIST records
#: (``paper_cnn``, 5 seeds vmapped per group) and over the quickstart's records (``mlp``,
#: one seed); attacks that search against the rule cost :data:`SEARCH_FACTOR` times more.
ROUGH_STEP_S = {"paper_cnn": 0.125, "mlp": 0.018}
SEARCH_FACTOR = 2.4
#: A step under the adaptive attack against a step under optimal ALIE on the same rule: the
#: median of the whole-step ratios of ``benchmarks/step_profile.py --attacks optimal_alie
#: adaptive`` (1.84 CWTM, 2.40 NNM + CWTM, 2.61 Krum, 4.83 GM; paper CNN, 2-core CPU).
ADAPTIVE_FACTOR = 2.5
_OPTIMAL = ("optimal_alie", "optimal_foe")
_SEARCHING = _OPTIMAL + ("adaptive",)


class StepClock:
    """Chunk timings of a running grid: the cost of a run-step, measured on chunks that
    compiled nothing, and of a group's compilation (its first chunk minus its steps)."""

    def __init__(self):
        self._steps, self._seconds, self._first = 0, 0.0, []

    def chunk(self, run_steps: int, seconds: float, *, first: bool) -> None:
        """Record a chunk of ``run_steps`` run-steps that took ``seconds`` (``first``: the
        group's first chunk, which includes compiling it)."""
        if first:
            self._first.append((run_steps, seconds))
        else:
            self._steps += run_steps
            self._seconds += seconds

    def step_s(self) -> float | None:
        """Seconds per run-step: over the chunks that compiled nothing, else (groups of one
        chunk) over the first chunks once there are two; ``None`` before that."""
        if self._steps:
            return self._seconds / self._steps
        if len(self._first) >= 2:  # groups of one chunk each: compilation included
            return sum(s for _, s in self._first) / sum(n for n, _ in self._first)
        return None

    def compile_s(self) -> float:
        """Median seconds a group spends compiling (0 until a step cost is measured)."""
        if not (self._steps and self._first):
            return 0.0
        cost = self.step_s()
        return statistics.median(max(0.0, s - n * cost) for n, s in self._first)

    def eta(self, *, run_steps: int, compiles: int) -> float | None:
        """Seconds left for ``run_steps`` run-steps and ``compiles`` groups still to compile."""
        cost = self.step_s()
        return None if cost is None else run_steps * cost + compiles * self.compile_s()


def record_step_s(record: dict) -> float:
    """A record's seconds per run-step: its group's wall time over the group's run-steps."""
    s = record["summary"]
    runs = s.get("vmapped_runs", s.get("vmapped_seeds", 1))  # older records: vmapped_seeds
    return s["wall_s"] / (record["key"]["steps"] * runs)


def plan_seconds(groups: Sequence, records: Sequence[dict]) -> tuple[float | None, str]:
    """Estimated wall time of the planned ``groups`` (:class:`nnmjax.experiments.grid.PlannedGroup`) and
    how it was found: from ``records`` (the run directory's) of the same dataset, model,
    attack and rule when there are some; for the adaptive attack, else from the same rule's
    optimal ALIE and FOE records times :data:`ADAPTIVE_FACTOR`; else of the same dataset and
    model, else the rough :data:`ROUGH_STEP_S` (searching attacks times
    :data:`SEARCH_FACTOR`, the adaptive attack times both factors); ``(None, why)`` when
    nothing applies."""
    measured: dict[tuple, list[float]] = {}
    for r in records:
        k = r["key"]
        if k.get("f", 0) > 0:
            cost = record_step_s(r)
            measured.setdefault((k["dataset"], k["model"], k["attack"], k["rule"]), []).append(cost)
            measured.setdefault((k["dataset"], k["model"]), []).append(cost)
            if k["attack"] in _OPTIMAL:
                measured.setdefault((k["dataset"], k["model"], "optimal", k["rule"]),
                                    []).append(cost)
    total, sources = 0.0, set()
    for g in groups:
        c = g.runs[0].config
        steps = len(g.runs) * (g.steps - g.resume_step)
        same = measured.get((c.dataset, c.model, g.attack, g.rule))
        optimal = measured.get((c.dataset, c.model, "optimal", g.rule))
        similar = measured.get((c.dataset, c.model))
        factor = ADAPTIVE_FACTOR if g.attack == "adaptive" else 1.0
        if same:
            cost, how = statistics.median(same), "measured"
        elif optimal and g.attack == "adaptive":
            cost, how = statistics.median(optimal) * factor, "measured"
        elif similar:
            cost, how = statistics.median(similar), "measured"
            if g.attack in _SEARCHING:
                cost *= SEARCH_FACTOR * factor
        elif c.model in ROUGH_STEP_S:
            cost, how = ROUGH_STEP_S[c.model], "rough"
            if g.attack in _SEARCHING:
                cost *= SEARCH_FACTOR * factor
        else:
            return None, (f"no estimate: no measured step of model {c.model!r} in this "
                          f"directory and no rough figure for it")
        total += steps * cost
        sources.add(how)
    if sources == {"measured"}:
        return total, "from the step costs measured in this directory's records"
    return total, ("rough: this model's typical step cost on a 2-core CPU; once a group "
                   "has finished, --plan uses the measured one")


def format_seconds(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3.4 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
