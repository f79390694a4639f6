"""Run a grid: compile each structurally distinct (setting, attack, rule) once and vmap it over
its runs not yet done: the seeds and every setting that changes no shape
(:data:`nnmjax.sim.VMAPPED_KEYS`, e.g. a sweep over ``alpha`` or ``momentum``).

A grid is one :class:`~nnmjax.experiments.config.Config` or a list of them (a config file's sweep,
:func:`nnmjax.experiments.config.load_grid`); runs shared by several settings (the fault-free
baseline) run once.

Progress is one bar over all (run, step) pairs; after each compiled
group its records are written atomically and ``summary.csv`` is rebuilt, so an
interrupted grid loses nothing finished and a re-run skips it. A group still running is
checkpointed (:mod:`nnmjax.experiments.checkpoint`) at most every ``checkpoint_s`` seconds, so a re-run
resumes it where it stopped, with the same records an uninterrupted run writes.
"""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from nnmjax.experiments import checkpoint, results
from nnmjax.experiments.config import Config, RunSpec
from nnmjax.data import DatasetNotFoundError
from nnmjax.experiments.estimate import StepClock, format_seconds
from nnmjax.experiments.interrupt import StopRequest, Stopped
from nnmjax.experiments.provenance import code_info, source_digest
from nnmjax.sim import build_experiment, program_key, spans_processes, worker_data_bytes

__all__ = ["run_grid", "pending_runs", "grid_runs", "program_groups", "memory_budget",
           "eval_points", "load_datasets", "build_group", "chunks", "plan_grid", "PlannedGroup", "GridPlan",
           "shard_slice"]

#: Share of the device memory (host RAM on CPU) one compiled group's worker data may take;
#: larger groups are split into several programs.
DATA_MEMORY_SHARE = 0.4


def group_key(spec: RunSpec) -> tuple:
    """The compiled program a run belongs to, ``(program_key(config), attack, rule)``: runs
    with one key run vmapped together (:func:`~nnmjax.sim.program_key`).

    Args:
        spec: the run.

    Returns:
        A hashable ``(program_key, attack, rule)`` tuple.

    Examples:
        >>> from nnmjax.experiments.config import Config
        >>> from nnmjax.experiments.grid import group_key
        >>> a, b = Config(seeds=(1, 2)).runs()
        >>> group_key(a) == group_key(b), group_key(a)[1:]
        (True, ('optimal_alie', 'nnm+cwtm'))
    """
    return (program_key(spec.config), spec.attack, spec.rule)


def dataset_of(datasets: Mapping, config: Config):
    """``config``'s dataset among ``datasets`` (:func:`load_datasets`, keyed by
    :attr:`~nnmjax.experiments.config.Config.data_source`).

    Args:
        datasets: ``{Config.data_source: Dataset}``, as :func:`load_datasets` returns.
        config: the config whose dataset is wanted.

    Returns:
        The :class:`nnmjax.data.Dataset`.

    Raises:
        KeyError: ``config``'s data is not among ``datasets``.

    Examples:
        >>> from nnmjax.experiments.config import Config
        >>> from nnmjax.experiments.grid import dataset_of
        >>> dataset_of({Config().data_source: "the digits"}, Config(model="logreg"))
        'the digits'
    """
    return datasets[config.data_source]


def grid_runs(configs: Config | Sequence[Config]) -> list[RunSpec]:
    """Every distinct run of one config or a list of configs, in order.

    Args:
        configs: one :class:`~nnmjax.experiments.config.Config` or a sequence of them.

    Returns:
        The :class:`~nnmjax.experiments.config.RunSpec` of every run, a run shared by
        several configs (same :meth:`~nnmjax.experiments.config.RunSpec.hash`) once.

    Raises:
        ValueError: an empty sequence.

    Examples:
        >>> from nnmjax.experiments.config import Config
        >>> from nnmjax.experiments.grid import grid_runs
        >>> a, b = Config(seeds=(1, 2), baseline=True), Config(seeds=(2, 3), baseline=True)
        >>> len(a.runs() + b.runs()), len(grid_runs([a, b]))
        (8, 6)
    """
    configs = [configs] if isinstance(configs, Config) else list(configs)
    if not configs:
        raise ValueError("the grid holds no config")
    return list({spec.hash(): spec for c in configs for spec in c.runs()}.values())


def pending_runs(configs: Config | Sequence[Config], out_dir: Path | str
                 ) -> tuple[list[RunSpec], list[RunSpec]]:
    """Split the grid into (done, todo); a corrupt record raises
    :class:`~nnmjax.experiments.results.CorruptRecordError`.

    Args:
        configs: the grid, one config or a sequence of them.
        out_dir: the run directory; a run is done when its record is there.

    Returns:
        ``(done, todo)``, two lists of :class:`~nnmjax.experiments.config.RunSpec` in grid
        order.

    Raises:
        nnmjax.experiments.results.CorruptRecordError: a record exists but cannot be read.
        ValueError: an empty grid.

    Examples:
        >>> import tempfile
        >>> from nnmjax.experiments import results
        >>> from nnmjax.experiments.config import Config
        >>> from nnmjax.experiments.grid import pending_runs
        >>> config = Config(seeds=(1, 2))
        >>> first = config.runs()[0]
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = results.write_record(d, first.hash(), {"key": first.record_key()})
        ...     done, todo = pending_runs(config, d)
        >>> [s.seed for s in done], [s.seed for s in todo]
        ([1], [2])
    """
    done, todo = [], []
    for spec in grid_runs(configs):
        path = results.record_path(out_dir, spec.hash())
        if path.exists():
            results.read_record(path)
            done.append(spec)
        else:
            todo.append(spec)
    return done, todo


def memory_budget() -> int:
    """Bytes of worker data one compiled group may hold: :data:`DATA_MEMORY_SHARE` of the
    first device's memory limit, or of the host's RAM where the device reports none (CPU).

    Returns:
        The budget in bytes (:func:`program_groups`' default ``budget``).

    Examples:
        >>> from nnmjax.experiments.grid import memory_budget
        >>> memory_budget() > 0
        True
    """
    import os

    stats = jax.local_devices()[0].memory_stats() or {}
    total = stats.get("bytes_limit") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(DATA_MEMORY_SHARE * total)


def program_groups(specs: Sequence[RunSpec], *, datasets=None, budget: int | None = None
                   ) -> list[list[RunSpec]]:
    """``specs`` split into the groups that run as one vmapped program: same
    :func:`~nnmjax.sim.program_key`, attack and rule, in grid order; with ``datasets``
    (``{Config.data_source: Dataset}``) a group whose worker data would exceed
    ``budget`` bytes is cut into consecutive pieces that fit (at least one run each).

    Args:
        specs: the runs, in grid order.
        datasets: ``{Config.data_source: Dataset}`` (:func:`load_datasets`); ``None``:
            groups are not split.
        budget: bytes of worker data one group may hold; ``None``: :func:`memory_budget`.

    Returns:
        The groups, each a non-empty list of runs in grid order.

    Examples:
        >>> from nnmjax.experiments.config import Config
        >>> from nnmjax.experiments.grid import load_datasets, program_groups
        >>> specs = Config(model="logreg", attacks=("alie", "mimic"), seeds=(1, 2)).runs()
        >>> [[(s.attack, s.seed) for s in g] for g in program_groups(specs)]
        [[('alie', 1), ('alie', 2)], [('mimic', 1), ('mimic', 2)]]
        >>> groups = program_groups(specs, datasets=load_datasets(specs), budget=1)
        >>> [len(g) for g in groups]  # each run alone: none fits in 1 byte
        [1, 1, 1, 1]
    """
    groups: dict[tuple, list[RunSpec]] = defaultdict(list)
    for spec in specs:
        groups[group_key(spec)].append(spec)
    if datasets is None:
        return list(groups.values())
    budget = memory_budget() if budget is None else budget
    out = []
    for group in groups.values():
        ds = dataset_of(datasets, group[0].config)
        # a program pads every run's workers to the largest part of any of its runs
        alone = [worker_data_bytes([(s.config, s.seed)], s.attack, ds) for s in group]
        piece, largest = [], 0
        for spec, size in zip(group, alone):
            if piece and (len(piece) + 1) * max(largest, size) > budget:
                out.append(piece)
                piece, largest = [], 0
            piece.append(spec)
            largest = max(largest, size)
        out.append(piece)
    return out


def eval_points(steps: int, every: int) -> list[int]:
    """The steps after which a run is evaluated: every ``every`` steps, and the last.

    Args:
        steps: the run's number of steps.
        every: steps between evaluations (a config's ``eval_every``).

    Returns:
        The increasing evaluation steps, ending with ``steps``.

    Examples:
        >>> from nnmjax.experiments.grid import eval_points
        >>> eval_points(100, 30), eval_points(100, 50), eval_points(10, 50)
        ([30, 60, 90, 100], [50, 100], [10])
    """
    pts = list(range(every, steps + 1, every))
    return pts if pts and pts[-1] == steps else pts + [steps]


def load_datasets(specs: Sequence[RunSpec]) -> dict:
    """Every dataset ``specs`` use, keyed by
    :attr:`~nnmjax.experiments.config.Config.data_source`; all are loaded (or their absence
    reported) before anything compiles.

    Args:
        specs: the runs.

    Returns:
        ``{data_source: Dataset}``, each dataset loaded once.

    Raises:
        nnmjax.data.DatasetNotFoundError: a dataset's files are missing.

    Examples:
        >>> from nnmjax.experiments.config import Config
        >>> from nnmjax.experiments.grid import load_datasets
        >>> datasets = load_datasets(Config(seeds=(1, 2)).runs())
        >>> list(datasets), datasets[Config().data_source].x_test.shape
        ([('digits', None, False, 'local')], (360, 8, 8, 1))
    """
    datasets = {}
    for spec in specs:
        if spec.config.data_source not in datasets:
            datasets[spec.config.data_source] = spec.config.load_data()  # dataset_of reads it
    return datasets


def build_group(specs: Sequence[RunSpec], datasets: dict):
    """The compiled :class:`~nnmjax.sim.Experiment` of one group of
    :func:`program_groups` (its runs vmapped in this order).

    Args:
        specs: one group of :func:`program_groups`.
        datasets: ``{Config.data_source: Dataset}`` holding the group's data
            (:func:`load_datasets`).

    Returns:
        The :class:`~nnmjax.sim.Experiment`; its program compiles on first use.

    Examples:
        >>> from nnmjax.experiments.config import Config
        >>> from nnmjax.experiments.grid import build_group, load_datasets
        >>> specs = Config(model="logreg", n=5, f=1, attacks=("alie",), seeds=(1, 2)).runs()
        >>> exp = build_group(specs, load_datasets(specs))
        >>> exp.attack, exp.rule_name, exp.seeds
        ('alie', 'nnm+cwtm', [1, 2])
    """
    cfg = specs[0].config
    return build_experiment(cfg, specs[0].attack, specs[0].rule, [s.seed for s in specs],
                            dataset=dataset_of(datasets, cfg),
                            settings=[s.config for s in specs])


def chunks(exp, state, cfg: Config, *, start: int = 0, stop: int | None = None):
    """Advance ``state`` from step ``start`` chunk by chunk, a chunk ending at each
    evaluation point up to ``stop`` (default ``cfg.steps``); yield ``(t, state, loss, kappa,
    test_acc)`` after each. A run's chunks never depend on where it (re)started.

    Args:
        exp: the group's :class:`~nnmjax.sim.Experiment` (its ``run_chunk`` and
            ``evaluate``).
        state: the group's state at step ``start``.
        cfg: the group's config (``steps`` and ``eval_every``).
        start: the step ``state`` is at.
        stop: the last step to run to; ``None``: ``cfg.steps``.

    Yields:
        ``(t, state, loss, kappa, test_acc)`` at each evaluation point ``t`` in
        ``(start, stop]``: the state after step ``t``, the chunk's per-step curves and the
        test accuracy.

    Examples:
        A stand-in for an experiment whose state counts the steps shows the chunks:

        >>> from nnmjax.experiments.config import Config
        >>> from nnmjax.experiments.grid import chunks
        >>> class Steps:
        ...     def run_chunk(self, state, steps):
        ...         return state + steps, ("loss", "kappa")
        ...     def evaluate(self, state):
        ...         return "acc"
        >>> cfg = Config(steps=10, eval_every=4)
        >>> [(t, state) for t, state, *_ in chunks(Steps(), 0, cfg)]
        [(4, 4), (8, 8), (10, 10)]
        >>> [(t, state) for t, state, *_ in chunks(Steps(), 4, cfg, start=4, stop=8)]
        [(8, 8)]
    """
    stop = cfg.steps if stop is None else stop
    for t in eval_points(cfg.steps, cfg.eval_every):
        if start < t <= stop:
            state, (loss, kappa) = exp.run_chunk(state, t - start)
            yield t, state, loss, kappa, exp.evaluate(state)
            start = t


def _check_shard(shard) -> None:
    i, k = shard
    if not (isinstance(i, int) and isinstance(k, int) and k >= 1 and 0 <= i < k):
        raise ValueError(f"shard must be (i, k) with 0 <= i < k; got {shard!r}")


def shard_slice(runs: Sequence[RunSpec], todo: Sequence[RunSpec], shard) -> list[RunSpec]:
    """The runs of ``todo`` in shard ``(i, k)``'s interleaved slice of the groups of the grid
    ``runs`` (:func:`grid_runs`).

    Args:
        runs: every run of the grid (:func:`grid_runs`), which fixes the groups' order.
        todo: the runs left to do.
        shard: ``(i, k)``: the ``i``-th (from 0) of ``k`` slices.

    Returns:
        The runs of ``todo`` whose group is the ``i``-th, ``(i + k)``-th, ... group of
        ``runs``.

    Examples:
        >>> from nnmjax.experiments.config import Config
        >>> from nnmjax.experiments.grid import grid_runs, shard_slice
        >>> runs = grid_runs(Config(attacks=("alie", "mimic", "sign_flipping")))
        >>> [s.attack for s in shard_slice(runs, runs, (0, 2))]
        ['alie', 'sign_flipping']
        >>> [s.attack for s in shard_slice(runs, runs[1:], (1, 2))]
        ['mimic']
    """
    i, k = shard
    every = list(dict.fromkeys(group_key(s) for s in runs))
    mine = set(every[i::k])
    return [s for s in todo if group_key(s) in mine]


class PlannedGroup(NamedTuple):
    """One compiled group a run of the grid would run: its runs, their steps, and its
    checkpoint, ``(step, same_code)`` (``None`` without one; one written by other code
    would be discarded).

    Attributes:
        attack: the group's attack.
        rule: the group's rule.
        runs: the group's runs (:class:`~nnmjax.experiments.config.RunSpec`).
        steps: the steps of each run.
        checkpoint: ``(step, same_code)`` of the group's checkpoint, or ``None``.
    """

    attack: str
    rule: str
    runs: list
    steps: int
    checkpoint: tuple[int, bool] | None

    @property
    def resume_step(self) -> int:
        """The step the group would resume at: its checkpoint's, when written by this code,
        else 0.

        Examples:
            >>> from nnmjax.experiments.grid import PlannedGroup
            >>> PlannedGroup("alie", "cwtm", [], 100, (50, True)).resume_step
            50
            >>> PlannedGroup("alie", "cwtm", [], 100, (50, False)).resume_step
            0
        """
        return self.checkpoint[0] if self.checkpoint and self.checkpoint[1] else 0


class GridPlan(NamedTuple):
    """What :func:`plan_grid` found: the finished runs, the groups left (in order), and why
    the data could not be read (``None`` when it could; the groups are then listed unsplit,
    as a run would cut a group whose worker data exceed the memory budget).

    Attributes:
        done: the runs whose records exist.
        groups: the :class:`PlannedGroup` left to run, in order.
        missing_data: why the data could not be read, or ``None``.
    """

    done: list[RunSpec]
    groups: list[PlannedGroup]
    missing_data: str | None


def plan_grid(config: Config | Sequence[Config], out_dir: Path | str, *,
              shard: tuple[int, int] = (0, 1)) -> GridPlan:
    """The plan of :func:`run_grid` with the same arguments (single-process view); runs
    nothing, and needs no data (without it, groups are not split by memory).

    Args:
        config: the grid, one config or a sequence of them.
        out_dir: the run directory (its records and checkpoints are read, not written).
        shard: ``(i, k)``: plan only the ``i``-th of ``k`` interleaved slices of the groups.

    Returns:
        A :class:`GridPlan`.

    Raises:
        ValueError: a bad ``shard`` or an empty grid.
        nnmjax.experiments.results.CorruptRecordError: a record cannot be read.

    Examples:
        >>> import tempfile
        >>> from nnmjax.experiments.config import Config
        >>> from nnmjax.experiments.grid import plan_grid
        >>> config = Config(model="logreg", n=5, f=1, steps=20, attacks=("alie", "mimic"))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     plan = plan_grid(config, d)
        >>> [(g.attack, g.rule, len(g.runs), g.steps, g.resume_step) for g in plan.groups]
        [('alie', 'nnm+cwtm', 1, 20, 0), ('mimic', 'nnm+cwtm', 1, 20, 0)]
        >>> plan.done, plan.missing_data
        ([], None)
    """
    _check_shard(shard)
    done, todo = pending_runs(config, out_dir)
    todo = shard_slice(grid_runs(config), todo, shard)
    try:
        datasets, missing = load_datasets(todo), None
    except DatasetNotFoundError as e:
        datasets, missing = None, str(e)
    groups = program_groups(todo, datasets=datasets)
    source = source_digest() if groups else None
    return GridPlan(done, [PlannedGroup(g[0].attack, g[0].rule, g, g[0].config.steps, checkpoint.peek(
        checkpoint.group_path(out_dir, [s.hash() for s in g]), source=source)) for g in groups],
        missing)


def run_grid(config: Config | Sequence[Config], out_dir: Path | str, *, progress: bool = True,
             shard: tuple[int, int] = (0, 1), checkpoint_s: float | None = 60.0,
             stop: StopRequest | None = None) -> list[dict]:
    """Run every pending run of ``config`` (one config or a list) into ``out_dir``; return all
    records of the grid.

    ``shard=(i, k)`` runs only the ``i``-th of ``k`` interleaved slices of the
    (setting, attack, rule) groups, so ``k`` processes or machines can share one grid and
    one output directory (records never collide: each is keyed by its own hash).

    When a config's ``mesh`` spans several processes (:func:`~nnmjax.sim.spans_processes`)
    every process must call this with the same grid and ``shard``: process 0 decides what is
    left to run, all processes run it together, and process 0 alone writes the records.

    A group's state and curves are saved to ``out_dir/partial/`` at the first evaluation point
    ``checkpoint_s`` seconds or more after the last save (``None``: only when stopped; never
    in the all-processes case above), and a re-run resumes from there; a record's ``wall_s``
    then sums the time of every process that worked on its group.

    ``stop`` (:func:`nnmjax.experiments.interrupt.stop_on_signals`) is checked before and after every
    chunk: once it is set, the running group's state is saved to its checkpoint (whatever
    ``checkpoint_s``, except in the all-processes case) and :class:`~nnmjax.experiments.interrupt.Stopped`
    is raised, its ``kept`` attribute saying what the checkpoint holds (``None``: nothing of
    the running group); every finished group's records are on disk already.

    Args:
        config: the grid, one config or a sequence of them.
        out_dir: the run directory: records in ``runs/``, ``summary.csv``, checkpoints in
            ``partial/``.
        progress: show a progress bar (on process 0).
        shard: ``(i, k)``: run only the ``i``-th of ``k`` interleaved slices of the groups.
        checkpoint_s: seconds between checkpoints; ``None``: only when stopped.
        stop: a :class:`~nnmjax.experiments.interrupt.StopRequest` checked between chunks.

    Returns:
        The records (:class:`~nnmjax.experiments.results.Record`) of every run of the
        grid, those done before included, sorted by file name (hash).

    Raises:
        ValueError: a bad ``shard``, a negative ``checkpoint_s`` or an empty grid.
        nnmjax.data.DatasetNotFoundError: a dataset's files are missing (before any
            compilation).
        nnmjax.experiments.results.CorruptRecordError: a record cannot be read.
        nnmjax.experiments.interrupt.Stopped: ``stop`` was set.

    Examples:
        >>> from nnmjax.experiments.config import Config
        >>> from nnmjax.experiments.grid import run_grid
        >>> config = Config(model="logreg", n=5, f=1, steps=20, eval_every=10,
        ...                 attacks=("sign_flipping",), rules=("cwtm", "nnm+cwtm"))
        >>> records = run_grid(config, "runs/demo", progress=False)  # doctest: +SKIP
        >>> sorted(r["key"]["rule"] for r in records)  # doctest: +SKIP
        ['cwtm', 'nnm+cwtm']
        >>> records[0]["curves"]["eval_steps"]  # doctest: +SKIP
        [10, 20]
    """
    _check_shard(shard)
    if checkpoint_s is not None and not checkpoint_s >= 0:
        raise ValueError(f"checkpoint_s must be None or >= 0 seconds; got {checkpoint_s!r}")
    out_dir = Path(out_dir)
    runs = grid_runs(config)
    done, todo = pending_runs(config, out_dir)
    collective = jax.process_count() > 1 and any(spans_processes(s.config) for s in runs)
    if collective:  # process 0's view of what is done, so every process runs the same groups
        from jax.experimental import multihost_utils

        finished = {s.hash() for s in done}
        flags = multihost_utils.broadcast_one_to_all(np.array([s.hash() in finished for s in runs]))
        done = [s for s, flag in zip(runs, flags) if flag]
        todo = [s for s, flag in zip(runs, flags) if not flag]
    writer = not collective or jax.process_index() == 0
    keep = not collective  # checkpoints: read always, written every checkpoint_s and on a stop
    todo = shard_slice(runs, todo, shard)
    datasets = load_datasets(todo)
    groups = program_groups(todo, datasets=datasets)
    code = code_info() if groups else None
    total = sum(len(g) * g[0].config.steps for g in groups)
    left = total
    clock = StepClock()
    bar = tqdm(total=total, unit="step", disable=not (progress and writer), dynamic_ncols=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} run-steps "
                          "[{elapsed}{postfix}]")
    stop = stop if stop is not None and not collective else StopRequest()
    for k, specs in enumerate(groups, 1):
        cfg, attack, rule_name = specs[0].config, specs[0].attack, specs[0].rule
        name = f"group {k} of {len(groups)} ({attack} / {rule_name}, {len(specs)} runs)"
        bar.set_description_str(f"compiling {name}")
        t0 = time.perf_counter()
        exp = build_group(specs, datasets)
        state = exp.init()
        saved = checkpoint.group_path(out_dir, [s.hash() for s in specs]) if keep else None
        resumed = saved and checkpoint.load(saved, state, source=code["source_sha256"])
        if resumed:
            state, before = resumed
            bar.update(len(specs) * before.steps)
            left -= len(specs) * before.steps
            if progress and writer:
                bar.write(f"{attack} / {rule_name}: resumed at step {before.steps} from {saved}")
        else:
            before = checkpoint.Progress(0, np.zeros((len(specs), 0), np.float32),
                                         np.zeros((len(specs), 0), np.float32),
                                         np.zeros((len(specs), 0), np.float32), [], 0.0)
        losses, kappas, accs = [before.loss], [before.kappa], list(np.moveaxis(before.acc, 1, 0))
        at, t_prev, last_save = list(before.at), before.steps, time.perf_counter()

        def save_progress(t):
            checkpoint.save(saved, state, checkpoint.Progress(
                t, np.concatenate(losses, axis=1), np.concatenate(kappas, axis=1),
                np.stack(accs, axis=1), at, before.wall_s + time.perf_counter() - t0),
                source=code["source_sha256"])

        def stopped(t):
            e = Stopped(stop.signal)
            e.kept = (f"{attack} / {rule_name} at step {t} of {cfg.steps} in {saved}"
                      if saved and t else None)
            return e

        if stop:
            raise stopped(before.steps if resumed else 0)
        t_chunk = time.perf_counter()
        for t, state, loss, kappa, acc in chunks(exp, state, cfg, start=t_prev):
            losses.append(np.asarray(loss))
            kappas.append(np.asarray(kappa))
            accs.append(np.asarray(acc))
            at.append(t)
            clock.chunk(len(specs) * (t - t_prev), time.perf_counter() - t_chunk,
                        first=t_prev == before.steps)
            bar.update(len(specs) * (t - t_prev))
            left -= len(specs) * (t - t_prev)
            eta = clock.eta(run_steps=left, compiles=len(groups) - k)
            bar.set_description_str(name)
            bar.set_postfix_str(f"ETA {format_seconds(eta)}" if eta is not None else "")
            t_prev = t
            if t < cfg.steps and saved and (stop or checkpoint_s is not None and
                                            time.perf_counter() - last_save >= checkpoint_s):
                save_progress(t)
                last_save = time.perf_counter()
            if stop and t < cfg.steps:
                raise stopped(t)
            t_chunk = time.perf_counter()
        jax.block_until_ready(state)
        wall = before.wall_s + time.perf_counter() - t0
        loss = np.concatenate(losses, axis=1)
        kappa = np.concatenate(kappas, axis=1)
        acc = np.stack(accs, axis=1)  # (runs, evals), or (runs, evals, [mean, worst])
        mean_acc = acc[..., 0] if acc.ndim == 3 else acc
        for i, spec in enumerate(specs):
            record = results.Record(
                hash=spec.hash(),
                key=spec.record_key(),
                curves=results.curves(cfg, loss[i], kappa[i], at, acc[i]),
                summary=results.Summary(max_test_acc=float(np.max(mean_acc[i])),
                                        final_test_acc=float(mean_acc[i][-1]), wall_s=wall,
                                        steps_per_s=cfg.steps * len(specs) / wall,
                                        vmapped_runs=len(specs)),
                machine={"backend": jax.default_backend(), "device": jax.devices()[0].device_kind},
                code=code,
            )
            if writer:
                results.write_record(out_dir, spec.hash(), record)
        if writer:
            results.write_summary(out_dir)
        if saved and saved.exists():
            saved.unlink()
        del exp, state  # free this group's device data before the next one is built
        if stop and k < len(groups):
            raise stopped(0)
    bar.close()
    records = results.load_records(out_dir)
    wanted = {s.hash() for s in runs}
    return [r for r in records if r["hash"] in wanted]
