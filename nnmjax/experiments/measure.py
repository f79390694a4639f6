"""What a grid costs on this machine, measured: each planned group's own program timed for a
few steps (``nnmjax run CONFIG --plan --measure K``).

:func:`nnmjax.experiments.estimate.plan_seconds` prices a grid from the records of earlier
runs, which were measured with the code of their day. This module measures the code as it is
now: for each planned group (:func:`nnmjax.experiments.grid.plan_grid`) it builds the group's
compiled program (its runs vmapped, its data, its memory split) and times

- ``init``, the first chunk of ``K`` steps and the first evaluation (each compiles),
- a second chunk of ``K`` steps and a second evaluation (compiled: the run-step and
  evaluation costs),

and prices the group as

    ``total = compile_s + run_steps * step_s + evals * eval_s``

with ``compile_s = init + (chunk_1 - chunk_2) + (eval_1 - eval_2)``, ``run_steps`` the
group's runs times its steps left and ``evals`` its evaluation points left. A group's real
chunks are ``eval_every`` steps long; a scan's compile time does not grow with its length,
so the ``K``-step chunk stands in for them.

Example (the embedded default data; a grid of two groups)::

    >>> from nnmjax.experiments.config import Config
    >>> from nnmjax.experiments.grid import load_datasets, plan_grid
    >>> from nnmjax.experiments.measure import measure_groups
    >>> import tempfile
    >>> config = Config(model="logreg", n=5, f=1, steps=40, eval_every=20, seeds=(1, 2),
    ...                 attacks=("alie", "sign_flipping"), rules=("cwtm",), baseline=False)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     groups = plan_grid(config, d).groups
    >>> costs = measure_groups(groups, load_datasets([s for g in groups for s in g.runs]), steps=2)
    >>> [(c.attack, c.rule, c.runs, c.run_steps, c.evals) for c in costs]
    [('alie', 'cwtm', 2, 80, 2), ('sign_flipping', 'cwtm', 2, 80, 2)]
    >>> all(c.total_s > 0 and c.step_s > 0 for c in costs)
    True
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple, Sequence

import jax

__all__ = ["GroupCost", "measure_group", "measure_groups", "DEFAULT_STEPS"]

#: Steps per timed chunk when none is given.
DEFAULT_STEPS = 5


class GroupCost(NamedTuple):
    """One group's measured cost (seconds).

    Attributes:
        attack: the group's attack.
        rule: the group's rule.
        runs: its vmapped runs.
        run_steps: run-steps left (runs times steps left).
        evals: evaluation points left.
        step_s: seconds per run-step (the second chunk over its run-steps).
        eval_s: seconds per evaluation of all the group's runs.
        compile_s: seconds spent compiling (init, chunk and evaluation).
        total_s: ``compile_s + run_steps * step_s + evals * eval_s``.
    """

    attack: str
    rule: str
    runs: int
    run_steps: int
    evals: int
    step_s: float
    eval_s: float
    compile_s: float
    total_s: float


def _timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def measure_group(group, datasets: dict, *, steps: int = DEFAULT_STEPS) -> GroupCost:
    """Build ``group``'s program (a :class:`~nnmjax.experiments.grid.PlannedGroup`) and time
    it (module docstring): two chunks of ``steps`` steps and two evaluations.

    Args:
        group: the planned group.
        datasets: ``{Config.data_source: Dataset}`` holding its data
            (:func:`nnmjax.experiments.grid.load_datasets`).
        steps: steps per timed chunk, ``>= 1``.

    Returns:
        The group's :class:`GroupCost`.
    """
    from nnmjax.experiments import grid

    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
    cfg = group.runs[0].config
    exp = grid.build_group(group.runs, datasets)
    state, init_s = _timed(exp.init)
    (state, _), first_s = _timed(exp.run_chunk, state, steps)
    (state, _), chunk_s = _timed(exp.run_chunk, state, steps)
    _, eval1_s = _timed(exp.evaluate, state)
    _, eval_s = _timed(exp.evaluate, state)
    runs = len(group.runs)
    step_s = chunk_s / (steps * runs)
    run_steps = runs * (group.steps - group.resume_step)
    evals = sum(t > group.resume_step for t in grid.eval_points(group.steps, cfg.eval_every))
    compile_s = init_s + max(0.0, first_s - chunk_s) + max(0.0, eval1_s - eval_s)
    return GroupCost(group.attack, group.rule, runs, run_steps, evals, step_s, eval_s,
                     compile_s, compile_s + run_steps * step_s + evals * eval_s)


def measure_groups(groups: Sequence, datasets: dict, *, steps: int = DEFAULT_STEPS,
                   progress: Callable[[GroupCost], None] | None = None) -> list[GroupCost]:
    """:func:`measure_group` of each group in turn (``progress`` is called with each
    result as it comes)."""
    costs = []
    for g in groups:
        costs.append(measure_group(g, datasets, steps=steps))
        if progress is not None:
            progress(costs[-1])
    return costs
