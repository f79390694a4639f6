"""Robust D-SHB (paper Algorithm 3) and robust D-GD (Algorithm 1) as one jitted program.

An :class:`Experiment` is one compiled (attack, rule) program of a config, run for several
runs at once: the pure step of :mod:`nnmjax.sim.step` in ``lax.scan`` chunks, ``jax.vmap``-ed
over runs (each seed has its own partition, initialisation and sampling) and over the
settings that change no shape (:data:`~nnmjax.sim.program.VMAPPED_KEYS`: the partition's
``alpha``/``gamma``/``data_seed``, ``lr``, ``momentum``, ``weight_decay``, ``clip``), so one
compiled program runs e.g. every (alpha, seed) pair of a sweep.

The parts, each with one job: :mod:`~nnmjax.sim.program` (which runs share a program),
:mod:`~nnmjax.sim.placement` (the device mesh), :mod:`~nnmjax.sim.worker_data` (each run's
workers' data), :mod:`~nnmjax.sim.step` (the step), :mod:`~nnmjax.sim.evaluate` (test
accuracy), :mod:`nnmjax.optim.schedules` (the step sizes).

With ``mesh = {runs = r, workers = w}`` (``jax.sharding``) the run axis is split over ``r``
devices (runs padded to a multiple of ``r``) and the worker axis over ``w``: each device
holds its workers' data and computes their gradients (the worker axis padded to a multiple
of ``w`` with empty workers whose gradients are dropped), and the robust rule runs on the
``(n, d)`` update matrix split by columns (:func:`nnmjax.scale.sharding.on_columns`). A mesh
larger than this process's devices spans every process of a ``jax.distributed`` run; each
process then gathers only the worker data of its own devices.

Label flipping (LF) is a data attack: the ``f`` Byzantine workers hold data too and compute
honest-looking momenta on labels ``C - 1 - l``; for the other attacks the Byzantine rows are
computed from the honest momenta.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from nnmjax._platform import sequential_on_cpu
from nnmjax.experiments.config import Config
from nnmjax.models import make_model
from nnmjax.optim import transforms
from nnmjax.sim.evaluate import EVAL_CHUNK, evaluate_accuracy
from nnmjax.sim.placement import Placement, experiment_mesh, spans_processes
from nnmjax.sim.program import STEP_KEYS, VMAPPED_KEYS, program_key
from nnmjax.sim.step import (RunState, StepSpec, init_state, learning_rate, run_steps,
                             runs_one_by_one)
from nnmjax.xla_options import jit
from nnmjax.sim.worker_data import (RUN_AXES, data_workers, place_worker_data,
                                    worker_data_bytes, worker_parts)

__all__ = ["Experiment", "RunState", "learning_rate", "build_experiment", "experiment_mesh",
           "spans_processes", "program_key", "worker_data_bytes", "EVAL_CHUNK", "VMAPPED_KEYS"]


def _check_settings(config: Config, settings: Sequence[Config], runs: int) -> None:
    """Runs of one program may differ from ``config`` only in :data:`VMAPPED_KEYS`."""
    if len(settings) != runs:
        raise ValueError(f"settings: one config per seed needed; got {len(settings)} "
                         f"for {runs} seeds")
    for s in settings:
        if program_key(s) != program_key(config):
            changed = sorted(k for k in Config.__dataclass_fields__
                             if getattr(s, k) != getattr(config, k) and k not in VMAPPED_KEYS)
            raise ValueError(f"settings: runs of one program may differ only in "
                             f"{list(VMAPPED_KEYS)} (clip not to or from None); one differs "
                             f"in {changed or ['clip']}")


class Experiment:
    """One compiled (attack, rule) experiment of a config, runnable for several runs at once.

    Run ``i`` has seed ``seeds[i]`` and config ``settings[i]`` (default: ``config``), which
    may differ from ``config`` only in :data:`VMAPPED_KEYS`; step hyperparameters that differ
    between runs are traced per run, the others stay compile-time constants.

    Attributes:
        spec: the step's constants (:class:`~nnmjax.sim.step.StepSpec`).
        data: the training set (once) and every run's workers' rows of it
            (:class:`~nnmjax.sim.worker_data.RunData`).
        hyper: the per-run values of the step hyperparameters that differ between runs.

    Examples:
        >>> from nnmjax.experiments.config import Config
        >>> config = Config(model="logreg", n=7, f=2, batch_size=5, steps=4, eval_every=2)
        >>> exp = build_experiment(config, "optimal_alie", "nnm+cwtm", seeds=[1, 2])
        >>> state = exp.init()                      # leading axis = runs
        >>> state, (loss, kappa) = exp.run_chunk(state, 2)
        >>> loss.shape, exp.evaluate(state).shape   # (runs, steps), (runs,)
        ((2, 2), (2,))
        >>> import dataclasses
        >>> sweep = [dataclasses.replace(config, alpha=a) for a in (0.1, 1.0)]
        >>> exp = build_experiment(config, "alie", "nnm+cwtm", seeds=[1, 1], settings=sweep)
    """

    def __init__(self, config: Config, attack: str, rule_name: str, seeds, dataset=None, *,
                 settings=None):
        self.config, self.attack, self.rule_name = config, attack, rule_name
        self.seeds = [int(s) for s in seeds]
        self.n_seeds = len(self.seeds)
        self.settings = [config] * self.n_seeds if settings is None else list(settings)
        _check_settings(config, self.settings, self.n_seeds)
        self.placement = place = Placement(experiment_mesh(config))
        self.mesh = place.mesh
        pad = -self.n_seeds % place.runs  # runs padded to the mesh; the extra ones dropped
        self.seeds += [self.seeds[-1]] * pad
        self.settings += [self.settings[-1]] * pad
        self.dataset = ds = dataset if dataset is not None else config.load_data()
        #: workers holding data (the ``f`` Byzantine ones too under label flipping)
        self.workers = data_workers(config, attack)
        self.loaded_workers: set[int] = set()  # worker rows gathered by this process
        self.data = place_worker_data(
            place, ds, [worker_parts(c, ds, s, self.workers)
                        for c, s in zip(self.settings, self.seeds)],
            self.workers + -self.workers % place.workers, flip_from=config.honest,
            loaded=self.loaded_workers)
        # per-run values of the step hyperparameters that differ between runs (traced); the
        # others stay Python constants, so a program of one setting compiles as before
        self.hyper = {key: place.put(np.array([getattr(c, key) for c in self.settings],
                                              np.float32))
                      for key in STEP_KEYS if len({getattr(c, key) for c in self.settings}) > 1}
        self.x_test = place.put(np.asarray(ds.x_test), replicated=True)
        self.y_test = place.put(np.asarray(ds.y_test), replicated=True)
        self.model = make_model(config.model, ds.num_classes, ds.x_train.shape[1:])
        self.rule = config.build_rule(rule_name)
        self.spec = StepSpec(
            config=config, attack=attack, rule=self.rule, model=self.model,
            # the state keys are placeholders: init_state draws each run's own
            aggregate=transforms.robust_aggregate(
                self.rule, key=jax.random.key(0), mesh=self.mesh if place.workers > 1 else None),
            workers=self.workers, num_classes=ds.num_classes,
            defaults={k: getattr(self.settings[0], k) for k in STEP_KEYS}, mesh=self.mesh,
            graph=config.graph())
        runs = None if self.mesh is None else "runs"
        self._vmapped_chunk = jax.vmap(functools.partial(run_steps, self.spec),
                                       in_axes=(0, RUN_AXES, 0, None), spmd_axis_name=runs)
        # on a mesh, jitted by init() once the state's layout is known
        self._run_chunk = None if self.mesh else jit(self._vmapped_chunk, static_argnums=3)
        evaluate = functools.partial(evaluate_accuracy, self.model)
        if config.algorithm == "decentralized":  # every honest node: mean and worst
            evaluate = _mean_and_worst(jax.vmap(evaluate, in_axes=(0, 0, None, None)))
        if runs_one_by_one(self.spec):  # as the gradients: batched convolutions are slower
            evaluate = sequential_on_cpu(evaluate)
        self._evaluate = jit(jax.vmap(evaluate, in_axes=(0, 0, None, None),
                                          spmd_axis_name=runs))
        self._init = jit(jax.vmap(
            functools.partial(init_state, self.spec, tuple(ds.x_train.shape[1:])),
            spmd_axis_name=runs))

    def init(self) -> RunState:
        """Initial states for every run (leading axis)."""
        keys = np.stack([np.asarray(jax.random.key_data(jax.random.key(s))) for s in self.seeds])
        state = self._init(jax.vmap(jax.random.wrap_key_data)(self.placement.put(keys)))
        if self.mesh is not None and self._run_chunk is None:
            shardings = self.placement.state_shardings(state)
            runs = NamedSharding(self.mesh, P("runs"))
            self._run_chunk = jit(self._vmapped_chunk, static_argnums=3,
                                      out_shardings=(shardings, (runs, runs)))
            state = jax.device_put(state, shardings)
        return state

    def run_chunk(self, state: RunState, steps: int):
        """Advance every run by ``steps`` steps; returns ``(state, (loss, kappa))``, each
        ``(runs, steps)``."""
        if self._run_chunk is None:
            raise RuntimeError("on a mesh the state's layout is fixed by init(): call "
                               "state = experiment.init() before run_chunk")
        state, (loss, kappa) = self._run_chunk(state, self.data, self.hyper, int(steps))
        fetch = self.placement.fetch
        return state, (fetch(loss)[: self.n_seeds], fetch(kappa)[: self.n_seeds])

    def evaluate(self, state: RunState):
        """Test accuracy of every run's current model (BatchNorm on its running averages, no
        dropout), ``(runs,)``; under decentralized learning the honest nodes' mean and
        worst, ``(runs, 2)``."""
        acc = self._evaluate(state.params, state.model_state, self.x_test, self.y_test)
        return self.placement.fetch(acc)[: self.n_seeds]


def _mean_and_worst(per_node):
    """``per_node``'s accuracies ``(nodes,)`` as ``[mean, worst]``."""
    def evaluate(*args):
        acc = per_node(*args)
        return jnp.stack([jnp.mean(acc), jnp.min(acc)])

    return evaluate


def build_experiment(config: Config, attack: str, rule_name: str, seeds, dataset=None, *,
                     settings=None) -> Experiment:
    """Compile-ready :class:`Experiment` for one (attack, rule) over ``seeds`` (with one config
    per seed in ``settings`` when the runs differ in :data:`VMAPPED_KEYS`)."""
    return Experiment(config, attack, rule_name, seeds, dataset=dataset, settings=settings)
