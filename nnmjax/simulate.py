"""Robust D-SHB (paper Algorithm 3) and robust D-GD (Algorithm 1) as one jitted program.

Each step computes every worker's gradient with one ``jax.vmap``, passes the
stacked gradients through the optax chain of :mod:`nnmjax.transforms`
(per-worker clipping -> worker momentum -> Byzantine injection -> robust
aggregation -> SGD with the paper's schedule), and records the honest loss and
the empirical robustness ``kappa_hat`` of eq. (26). Steps run in ``lax.scan``
chunks; whole runs are ``jax.vmap``-ed over seeds (each seed has its own
partition, initialisation and sampling), and with ``mesh = {runs = r}`` the seed axis is
split over ``r`` devices (``jax.sharding``; seeds padded to a multiple of ``r``).

Label flipping (LF) is a data attack: the ``f`` Byzantine workers hold data
too and compute honest-looking momenta on labels ``C - 1 - l``; for the other
attacks the Byzantine rows are computed from the honest momenta.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nnmjax import metrics, transforms
from nnmjax.config import Config
from nnmjax.data import WorkerData, load_dataset, partition, sample_batches, to_worker_arrays
from nnmjax.data.partition import label_flip
from nnmjax.models import make_model
from nnmjax.rules import rule as make_rule
from nnmjax.tree import ravel_workers

__all__ = ["Experiment", "RunState", "learning_rate", "build_experiment", "EVAL_CHUNK"]

#: Test images per forward pass when evaluating (bounds evaluation memory).
EVAL_CHUNK = 1000


def learning_rate(config: Config):
    """The step-size schedule: ``paper_mnist`` ``lr / (1 + floor(t / 50))`` (Table 3),
    ``paper_cifar`` ``lr`` then ``lr / 10`` after step 1500, or ``constant``."""
    lr = config.lr
    if config.lr_schedule == "paper_mnist":
        return lambda t: lr / (1.0 + jnp.floor(t / 50.0))
    if config.lr_schedule == "paper_cifar":
        return lambda t: jnp.where(t < 1500, lr, lr / 10.0)
    return lambda t: lr * jnp.ones_like(t, dtype=jnp.float32)


class RunState(NamedTuple):
    """Everything a run carries between steps (vmapped over seeds). ``model_state`` holds the
    BatchNorm running statistics (``{}`` for models without)."""

    params: Any
    opt_state: Any
    key: jax.Array
    step: jax.Array
    model_state: Any


def _partition(config: Config, ds, seed: int, *, with_byzantine_data: bool) -> WorkerData:
    workers = config.n if with_byzantine_data else config.honest
    parts = partition(ds.y_train, workers, method=config.partition, alpha=config.alpha,
                      gamma=config.gamma, seed=seed)
    data = to_worker_arrays(ds.x_train, ds.y_train, parts)
    if with_byzantine_data and config.f:
        h = config.honest
        y = data.y.at[h:].set(label_flip(data.y[h:], ds.num_classes).astype(data.y.dtype))
        data = data._replace(y=y)
    return data


def _stack(datas: list[WorkerData]) -> WorkerData:
    m = max(int(d.x.shape[1]) for d in datas)

    def pad(a):
        widths = [(0, 0), (0, m - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
        return jnp.pad(a, widths)

    return WorkerData(jnp.stack([pad(d.x) for d in datas]), jnp.stack([pad(d.y) for d in datas]),
                      jnp.stack([d.counts for d in datas]))


class Experiment:
    """One compiled (attack, rule) experiment of a config, runnable for several seeds at once.

    >>> exp = build_experiment(config, "optimal_alie", "nnm+cwtm", seeds=[1, 2])
    >>> state = exp.init()                      # leading axis = seeds
    >>> state, (loss, kappa) = exp.run_chunk(state, 50)
    >>> acc = exp.evaluate(state)               # (seeds,)
    """

    def __init__(self, config: Config, attack: str, rule_name: str, seeds, dataset=None):
        self.config, self.attack, self.rule_name = config, attack, rule_name
        self.seeds = [int(s) for s in seeds]
        self.n_seeds = len(self.seeds)
        self.mesh = _runs_mesh(config)
        if self.mesh is not None:  # pad to a multiple of the runs axis; extra runs dropped
            self.seeds += [self.seeds[-1]] * (-self.n_seeds % self.mesh.shape["runs"])
        ds = dataset if dataset is not None else load_dataset(
            config.dataset, data_dir=config.data_dir, augment_flip=config.augment_flip)
        self.dataset = ds
        lf = attack == "label_flipping" and config.f > 0
        self.data = self._place(
            _stack([_partition(config, ds, s, with_byzantine_data=lf) for s in self.seeds]))
        self.x_test = jnp.asarray(ds.x_test)
        self.y_test = jnp.asarray(ds.y_test)
        self.model = make_model(config.model, ds.num_classes, ds.x_train.shape[1:])
        self.rule = make_rule(rule_name, config.f)
        h, f = config.honest, config.f
        injected = "none" if lf else attack
        beta = config.momentum if config.algorithm == "dshb" else 0.0
        self.server = optax.chain(
            transforms.clip_by_worker_norm(config.clip) if config.clip else optax.identity(),
            transforms.worker_momentum(beta, config.n if lf else h),
            transforms.inject_attack(injected, f if injected != "none" else 0, rule=self.rule,
                                     key=jax.random.key(0)),
        )
        self.aggregate = transforms.robust_aggregate(self.rule)
        self.sgd = optax.sgd(learning_rate(config))
        self._run_chunk = jax.jit(jax.vmap(self._chunk, in_axes=(0, 0, None)), static_argnums=2)
        self._evaluate = jax.jit(jax.vmap(self._accuracy))
        self._init = jax.jit(jax.vmap(self._init_one))

    # ------------------------------------------------------------------ pieces
    def _loss(self, params, model_state, key, x, y, mask=None):
        """Training loss of one worker's batch (BatchNorm on the batch's statistics, dropout
        from ``key``) and the worker's updated BatchNorm running statistics."""
        variables = {"params": params, **model_state}
        if model_state:
            logp, new = self.model.apply(variables, x, train=True, mutable=list(model_state),
                                         rngs={"dropout": key})
        else:
            logp, new = self.model.apply(variables, x, train=True, rngs={"dropout": key}), {}
        nll = -jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]
        nll = jnp.mean(nll) if mask is None else jnp.sum(nll * mask) / jnp.sum(mask)
        l2 = sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))
        return nll + 0.5 * self.config.weight_decay * l2, new

    def _init_one(self, key):
        k_model, k_server, k_agg, k_run = jax.random.split(key, 4)
        sample = jnp.zeros((1,) + tuple(self.dataset.x_train.shape[1:]), jnp.float32)
        variables = dict(self.model.init(k_model, sample))
        params = variables.pop("params")
        server = self.server.init(params)
        server = _rekey(server, k_server)
        agg = self.aggregate.init(params)._replace(key=k_agg)
        return RunState(params, (server, agg, self.sgd.init(params)), k_run,
                        jnp.zeros((), jnp.int32), variables)

    def init(self) -> RunState:
        """Initial states for every seed (leading axis)."""
        keys = jnp.stack([jax.random.key_data(jax.random.key(s)) for s in self.seeds])
        return self._init(jax.vmap(jax.random.wrap_key_data)(self._place(keys)))

    def _place(self, tree):
        """Split the leading (seed) axis of ``tree`` over the mesh's ``runs`` axis."""
        if self.mesh is None:
            return tree
        from jax.sharding import NamedSharding, PartitionSpec as P

        return jax.device_put(tree, NamedSharding(self.mesh, P("runs")))

    def _grads(self, params, model_state, data: WorkerData, key):
        """Every worker's loss and gradient (one vmap) and the new BatchNorm statistics: the
        mean of the honest workers' updated running averages."""
        c = self.config
        k_batch, k_drop = jax.random.split(key)
        drop = jax.random.split(k_drop, data.y.shape[0])
        grad = jax.value_and_grad(self._loss, has_aux=True)
        if c.algorithm == "dgd":
            mask = (jnp.arange(data.y.shape[1])[None, :] < data.counts[:, None]).astype(jnp.float32)
            (losses, stats), grads = jax.vmap(grad, in_axes=(None, None, 0, 0, 0, 0))(
                params, model_state, drop, data.x, data.y, mask)
        else:
            xb, yb = sample_batches(k_batch, data, c.batch_size)
            (losses, stats), grads = jax.vmap(grad, in_axes=(None, None, 0, 0, 0))(
                params, model_state, drop, xb, yb)
        stats = jax.tree.map(lambda a: jnp.mean(a[: c.honest], axis=0), stats)
        return losses, grads, stats

    def _step(self, state: RunState, data: WorkerData):
        server, agg, opt = state.opt_state
        key, k_batch = jax.random.split(state.key)
        losses, grads, model_state = self._grads(state.params, state.model_state, data, k_batch)
        rows, server = self.server.update(grads, server, state.params)
        aggregate, agg = self.aggregate.update(rows, agg, state.params)
        honest, _ = ravel_workers(rows)
        honest = honest[: self.config.honest]
        flat, _ = ravel_workers(jax.tree.map(lambda a: a[None], aggregate))
        kappa = metrics.kappa_hat(flat[0], honest)
        updates, opt = self.sgd.update(aggregate, opt, state.params)
        params = optax.apply_updates(state.params, updates)
        new = RunState(params, (server, agg, opt), key, state.step + 1, model_state)
        return new, (jnp.mean(losses[: self.config.honest]), kappa)

    def _chunk(self, state: RunState, data: WorkerData, steps: int):
        return jax.lax.scan(lambda s, _: self._step(s, data), state, None, length=steps)

    def run_chunk(self, state: RunState, steps: int):
        """Advance every seed by ``steps`` steps; returns ``(state, (loss, kappa))``, each
        ``(seeds, steps)``."""
        state, (loss, kappa) = self._run_chunk(state, self.data, int(steps))
        return state, (loss[: self.n_seeds], kappa[: self.n_seeds])

    def _accuracy(self, params, model_state):
        """Test accuracy, the test set in chunks of ``EVAL_CHUNK`` images (``lax.map``), so
        memory stays bounded whatever the test set's size and the number of vmapped seeds."""
        x, y = self.x_test, self.y_test
        n = y.shape[0]
        chunk = min(EVAL_CHUNK, n)
        pad = -n % chunk
        xs = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape((-1, chunk) + x.shape[1:])
        ys = jnp.pad(y, (0, pad), constant_values=-1).reshape(-1, chunk)

        def correct(batch):
            xb, yb = batch
            logits = self.model.apply({"params": params, **model_state}, xb)
            return jnp.sum(jnp.argmax(logits, axis=-1) == yb)

        return jnp.sum(jax.lax.map(correct, (xs, ys))) / n

    def evaluate(self, state: RunState):
        """Test accuracy of every seed's current model (BatchNorm on its running averages, no
        dropout), ``(seeds,)``."""
        return self._evaluate(state.params, state.model_state)[: self.n_seeds]


def _runs_mesh(config: Config):
    """The ``runs`` mesh of ``config.mesh`` (``None`` without one)."""
    runs = dict(config.mesh).get("runs")
    if runs is None:
        return None
    from nnmjax.sharding import worker_mesh

    return worker_mesh(1, runs=runs)


def _rekey(server_state, key):
    """Give the inject_attack state of the server chain its own key."""
    out = []
    for s in server_state:
        if isinstance(s, transforms.InjectAttackState):
            s = s._replace(key=key)
        out.append(s)
    return tuple(out)


def build_experiment(config: Config, attack: str, rule_name: str, seeds, dataset=None) -> Experiment:
    """Compile-ready :class:`Experiment` for one (attack, rule) over ``seeds``."""
    return Experiment(config, attack, rule_name, seeds, dataset=dataset)

