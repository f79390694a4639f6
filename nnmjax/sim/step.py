"""One step of robust D-SHB (paper Algorithm 3) or robust D-GD (Algorithm 1), as a pure
function of a static :class:`StepSpec`, the run's state, its workers' data and its traced
hyperparameters.

A step computes every worker's loss and gradient with one ``jax.vmap`` (shared parameters,
each worker its own minibatch), passes the stacked gradients through the server chain of
:mod:`nnmjax.optim.transforms` (per-worker clipping -> worker momentum -> Byzantine
injection), aggregates them with the robust rule, applies SGD with the schedule of
:func:`learning_rate`, and returns the honest workers' mean loss and the
empirical robustness ``kappa_hat`` of eq. (26).

Examples:
    >>> import functools, jax
    >>> from nnmjax.experiments.config import Config
    >>> from nnmjax.sim import build_experiment
    >>> exp = build_experiment(Config(model="logreg", n=5, f=1, batch_size=4), "alie", "cwtm",
    ...                        seeds=[1])
    >>> from nnmjax.sim.worker_data import RUN_AXES   # the training set shared by the runs
    >>> one = jax.vmap(functools.partial(step, exp.spec), in_axes=(0, RUN_AXES, 0))
    >>> state, (loss, kappa) = one(exp.init(), exp.data, exp.hyper)
    >>> int(state.step[0]), loss.shape
    (1, (1,))
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nnmjax._platform import sequential_on_cpu
from nnmjax.data import gather_indexed, sample_indexed_batches
from nnmjax.experiments.config import Config
from nnmjax.models.losses import average_batch_stats, nll
from nnmjax.optim import transforms
from nnmjax.optim.tree import ravel_workers
from nnmjax.optim.schedules import schedule
from nnmjax.robust import metrics
from nnmjax.robust.attacks import SEARCHING_ATTACKS
from nnmjax.robust.rules import Rule
from nnmjax.sim.worker_data import RunData

__all__ = ["RunState", "StepSpec", "learning_rate", "server_chain", "worker_loss", "worker_grads", "init_state",
           "step", "run_steps", "draw_batches", "server_update", "runs_one_by_one"]


def learning_rate(config: Config, lr: float | jax.Array | None = None):
    """The step-size schedule of ``config`` (:func:`nnmjax.optim.schedules.schedule` of its
    ``lr_schedule``), with ``lr`` (a number or a traced per-run scalar) in place of
    ``config.lr`` when given.

    Examples:
        >>> import jax.numpy as jnp
        >>> from nnmjax.experiments.config import Config
        >>> float(learning_rate(Config(lr=0.75, lr_schedule="paper_mnist"))(jnp.float32(50)))
        0.375
    """
    return schedule(config.lr_schedule, config.lr if lr is None else lr)


class RunState(NamedTuple):
    """Everything a run carries between steps (vmapped over runs). ``model_state`` holds the
    BatchNorm running statistics (``{}`` for models without)."""

    params: Any
    opt_state: Any
    key: jax.Array
    step: jax.Array
    model_state: Any


class StepSpec(NamedTuple):
    """What a step is compiled for: the constants of one program.

    ``defaults`` holds the step hyperparameters (``lr``, ``momentum``, ``weight_decay``,
    ``clip``) shared by every run of the program; those that differ between runs are passed
    to :func:`step` as traced per-run values instead.
    """

    config: Config
    attack: str
    rule: Rule
    model: nn.Module
    aggregate: optax.GradientTransformation
    workers: int
    num_classes: int
    defaults: Mapping[str, Any]
    mesh: Mesh | None = None
    #: the nodes' graph under ``algorithm = "decentralized"`` (:meth:`Config.graph`)
    graph: Any = None

    @property
    def label_flipping(self) -> bool:
        """Whether the attack is label flipping with ``f > 0``: Byzantine workers hold data
        (flipped labels) and compute honest-looking momenta; nothing is injected."""
        return self.attack == "label_flipping" and self.config.f > 0

    @property
    def rows(self) -> tuple[int, int]:
        """``(honest, byzantine)``: the rows the server receives each step, ``(n - f, f)``,
        or a FedAvg round's sampled clients (:attr:`Config.round_sizes`)."""
        return self.config.round_sizes

    @property
    def attack_options(self) -> dict:
        """The attack's options from the config: the search of the optimal attacks when it
        is not the default grid."""
        c = self.config
        if self.attack in SEARCHING_ATTACKS and c.attack_search != "grid":
            return {"search": c.attack_search}
        return {}

    def hyperparameter(self, hyper: Mapping[str, jax.Array], key: str):
        """This run's value of a step hyperparameter: traced when runs differ in it."""
        return hyper[key] if key in hyper else self.defaults[key]


def server_chain(spec: StepSpec, hyper: Mapping[str, jax.Array]
                 ) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """The server chain (clip -> worker momentum -> attack) and the SGD step, built from the
    run's hyperparameters (FedAvg: no momentum, and the server's step size
    ``server_lr`` on its ``server_lr_schedule``)."""
    c, value = spec.config, spec.hyperparameter
    honest, byzantine = spec.rows
    # label flipping's Byzantine workers train; the decentralized attack is the gossip's
    injected = ("none" if spec.label_flipping or c.algorithm == "decentralized"
                else spec.attack)
    beta = value(hyper, "momentum") if c.algorithm in ("dshb", "decentralized") else 0.0
    server = optax.chain(
        transforms.clip_by_worker_norm(value(hyper, "clip")) if c.clip else optax.identity(),
        transforms.worker_momentum(beta, honest + byzantine if spec.label_flipping else honest),
        transforms.inject_attack(injected, byzantine if injected != "none" else 0,
                                 rule=spec.rule, key=jax.random.key(0),
                                 **spec.attack_options),
    )
    if c.algorithm == "fedavg":
        return server, optax.sgd(schedule(c.server_lr_schedule, c.server_lr))
    return server, optax.sgd(learning_rate(c, lr=value(hyper, "lr")))


def worker_loss(model: nn.Module, params, model_state, key, x, y, mask=None, *,
                weight_decay):
    """One worker's training loss on its batch, ``nll + weight_decay / 2 * ||params||^2``
    (BatchNorm on the batch's statistics, dropout from ``key``), and its updated BatchNorm
    running statistics."""
    variables = {"params": params, **model_state}
    if model_state:
        logp, new = model.apply(variables, x, train=True, mutable=list(model_state),
                                rngs={"dropout": key})
    else:
        logp, new = model.apply(variables, x, train=True, rngs={"dropout": key}), {}
    l2 = sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))
    return nll(logp, y, mask) + 0.5 * weight_decay * l2, new


def draw_batches(spec: StepSpec, data: RunData, key, workers: int):
    """The first ``workers`` workers' minibatches and dropout keys of one step, drawn from
    ``key``: ``(drop, xb, yb)`` with a leading axis of every worker row of ``data``
    (padding rows draw too, and are dropped later)."""
    padded = data.index.counts.shape[0]
    k_batch, k_drop = jax.random.split(key)
    drop = jax.random.split(k_drop, workers)
    drop = jnp.concatenate([drop] + [drop[:1]] * (padded - workers))
    xb, yb = sample_indexed_batches(k_batch, data.x, data.y, data.index,
                                    spec.config.batch_size, num_classes=spec.num_classes,
                                    workers=workers)
    return drop, xb, yb


def runs_one_by_one(spec: StepSpec) -> bool:
    """Whether vmapped runs compute their workers' gradients one run after another rather
    than as one batch, where the program is lowered for the CPU
    (:func:`nnmjax._platform.sequential_on_cpu`): without a mesh. On the CPU each run's own
    parameters turn the convolutions into grouped ones: the 13 workers' gradients of ``byzfl_cnn_mnist`` for 5 runs cost 1.52x more per
    run batched than one by one (1.05x for 1 run; ``python benchmarks/gradients.py``,
    ``benchmarks/results/gradients-cpu.json``). FedAvg's local steps
    (:mod:`nnmjax.sim.fedavg`) and the evaluation of the runs' test accuracy
    (:class:`nnmjax.sim.Experiment`) follow the same choice.

    Examples:
        >>> from nnmjax.experiments.config import Config
        >>> from nnmjax.sim import build_experiment
        >>> exp = build_experiment(Config(model="logreg", n=5, f=1, batch_size=4), "alie",
        ...                        "cwtm", seeds=[1, 2])
        >>> runs_one_by_one(exp.spec)
        True
    """
    return spec.mesh is None


def worker_grads(spec: StepSpec, params, model_state, data: RunData, key, weight_decay, *,
                 per_worker: bool = False):
    """Every worker's loss and gradient (one vmap) and the new BatchNorm statistics: the
    mean of the honest workers' updated running averages; with ``per_worker`` the
    parameters and statistics have a leading worker axis (each worker its own model, as
    decentralized nodes) and each worker's statistics are returned."""
    c, w = spec.config, spec.workers
    shared = 0 if per_worker else None

    def loss(params, model_state, weight_decay, key, x, y, mask=None):
        return worker_loss(spec.model, params, model_state, key, x, y, mask,
                           weight_decay=weight_decay)

    grad = jax.value_and_grad(loss, has_aux=True)
    drop, xb, yb = draw_batches(spec, data, key, w)
    if c.algorithm == "dgd":
        every = gather_indexed(data.x, data.y, data.index, num_classes=spec.num_classes)
        mask = (jnp.arange(every.y.shape[1])[None, :] < every.counts[:, None]).astype(jnp.float32)
        workers = jax.vmap(grad, in_axes=(shared, shared, None, 0, 0, 0, 0))
        args = (params, model_state, weight_decay, drop, every.x, every.y, mask)
    else:
        workers = jax.vmap(grad, in_axes=(shared, shared, None, 0, 0, 0))
        args = (params, model_state, weight_decay, drop, xb, yb)
    if runs_one_by_one(spec):  # every traced value an argument: none closed over
        batched = workers
        workers = sequential_on_cpu(lambda *a: batched(*a))
    (losses, stats), grads = workers(*args)
    if spec.mesh is not None and spec.mesh.shape["workers"] > 1:
        # each device computed its own workers' gradients; drop the padding
        by_worker = NamedSharding(spec.mesh, P("workers"))
        grads = jax.lax.with_sharding_constraint(grads, by_worker)
        losses, grads = losses[:w], jax.tree.map(lambda a: a[:w], grads)
    if not per_worker:
        stats = average_batch_stats(jax.tree.map(lambda a: a[: c.honest], stats))
    return losses, grads, stats


def init_state(spec: StepSpec, image_shape: tuple, key: jax.Array) -> RunState:
    """A run's initial state: the model's initialisation and the chains' states, each drawn
    from its own part of ``key``."""
    k_model, k_server, k_agg, k_run = jax.random.split(key, 4)
    variables = dict(spec.model.init(k_model, jnp.zeros((1,) + tuple(image_shape), jnp.float32)))
    params = variables.pop("params")
    server, sgd = server_chain(spec, {})
    server_state = tuple(s._replace(key=k_server) if isinstance(s, transforms.InjectAttackState)
                         else s for s in server.init(params))
    agg = spec.aggregate.init(params)._replace(key=k_agg)
    opt_state = (server_state, agg, sgd.init(params))
    if spec.config.algorithm == "decentralized":  # every honest node from the same model
        from nnmjax.sim.decentralized import nodes

        params, variables = nodes(spec, params), nodes(spec, variables)
    return RunState(params, opt_state, k_run, jnp.zeros((), jnp.int32), variables)


def server_update(spec: StepSpec, state: RunState, grads, hyper: Mapping[str, jax.Array]):
    """The server's part of a step: the workers' (or clients') gradients through the server
    chain, the robust aggregate and the SGD step; returns the new parameters, the chains'
    states and ``kappa_hat`` of the aggregate against the honest rows (eq. 26)."""
    server, agg, opt = state.opt_state
    chain, sgd = server_chain(spec, hyper)
    rows, server = chain.update(grads, server, state.params)
    aggregate, agg = spec.aggregate.update(rows, agg, state.params)
    honest, _ = ravel_workers(rows)
    honest = honest[: spec.rows[0]]
    flat, _ = ravel_workers(jax.tree.map(lambda a: a[None], aggregate))
    kappa = metrics.kappa_hat(flat[0], honest)
    updates, opt = sgd.update(aggregate, opt, state.params)
    return optax.apply_updates(state.params, updates), (server, agg, opt), kappa


def step(spec: StepSpec, state: RunState, data: RunData,
         hyper: Mapping[str, jax.Array]) -> tuple[RunState, tuple[jax.Array, jax.Array]]:
    """One step of one run (one round under FedAvg, :func:`nnmjax.sim.fedavg.fedavg_round`;
    :func:`nnmjax.sim.decentralized.decentralized_step` for decentralized learning);
    returns the new state and ``(honest mean loss, kappa_hat)`` (the consensus distance in
    place of ``kappa_hat`` under decentralized learning)."""
    if spec.config.algorithm == "fedavg":
        from nnmjax.sim.fedavg import fedavg_round

        return fedavg_round(spec, state, data, hyper)
    if spec.config.algorithm == "decentralized":
        from nnmjax.sim.decentralized import decentralized_step

        return decentralized_step(spec, state, data, hyper)
    key, k_batch = jax.random.split(state.key)
    losses, grads, model_state = worker_grads(spec, state.params, state.model_state, data,
                                              k_batch, spec.hyperparameter(hyper, "weight_decay"))
    params, opt_state, kappa = server_update(spec, state, grads, hyper)
    new = RunState(params, opt_state, key, state.step + 1, model_state)
    return new, (jnp.mean(losses[: spec.config.honest]), kappa)


def run_steps(spec: StepSpec, state: RunState, data: RunData,
              hyper: Mapping[str, jax.Array], steps: int):
    """``steps`` steps of one run in a ``lax.scan``; returns the state and the per-step
    ``(loss, kappa)``, each ``(steps,)``."""
    return jax.lax.scan(lambda s, _: step(spec, s, data, hyper), state, None, length=steps)
