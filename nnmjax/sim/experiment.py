"""Robust D-SHB (paper Algorithm 3) and robust D-GD (Algorithm 1) as one jitted program.

Each step computes every worker's gradient with one ``jax.vmap``, passes the
stacked gradients through the optax chain of :mod:`nnmjax.optim.transforms`
(per-worker clipping -> worker momentum -> Byzantine injection -> robust
aggregation -> SGD with the paper's schedule), and records the honest loss and
the empirical robustness ``kappa_hat`` of eq. (26). Steps run in ``lax.scan``
chunks; whole runs are ``jax.vmap``-ed over seeds (each seed has its own
partition, initialisation and sampling) and over the settings that change no shape
(:data:`VMAPPED_KEYS`: the partition's ``alpha``/``gamma``/``data_seed``, ``lr``, ``momentum``,
``weight_decay``, ``clip``), so one compiled program runs e.g. every (alpha, seed) pair of
a sweep.

With ``mesh = {runs = r, workers = w}`` (``jax.sharding``) the seed axis is split over ``r``
devices (seeds padded to a multiple of ``r``) and the worker axis over ``w``: each device
holds its workers' data and computes their gradients (the worker axis padded to a multiple
of ``w`` with empty workers whose gradients are dropped), and the robust rule runs on the
``(n, d)`` update matrix split by columns (:func:`nnmjax.scale.sharding.on_columns`). A mesh larger
than this process's devices spans every process of a ``jax.distributed`` run; each process
then gathers only the worker data of its own devices.

Label flipping (LF) is a data attack: the ``f`` Byzantine workers hold data
too and compute honest-looking momenta on labels ``C - 1 - l``; for the other
attacks the Byzantine rows are computed from the honest momenta.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from nnmjax.robust import metrics
from nnmjax.optim import transforms
from nnmjax.experiments.config import Config
from nnmjax.data import WorkerData, gather_workers, partition, sample_batches
from nnmjax.data.partition import label_flip
from nnmjax.models import make_model
from nnmjax.scale.sharding import worker_mesh
from nnmjax.optim.tree import ravel_workers

__all__ = ["Experiment", "RunState", "learning_rate", "build_experiment", "experiment_mesh",
           "spans_processes", "program_key", "worker_data_bytes", "EVAL_CHUNK", "VMAPPED_KEYS"]

#: Test images per forward pass when evaluating (bounds evaluation memory).
EVAL_CHUNK = 1000
#: Config keys that change no shape: runs differing only in these (and the seed) share one
#: compiled program, vmapped (``clip`` only between numbers, not to or from ``None``).
VMAPPED_KEYS = ("alpha", "gamma", "data_seed", "lr", "momentum", "weight_decay", "clip")
#: Hyperparameters of the step itself (the rest of ``VMAPPED_KEYS`` shape the data only).
_STEP_KEYS = ("lr", "momentum", "weight_decay", "clip")


def program_key(config: Config) -> Config:
    """``config`` with the :data:`VMAPPED_KEYS` set to fixed values: runs whose configs have
    the same key (and the same attack and rule) can be one vmapped program."""
    neutral = {k: Config.__dataclass_fields__[k].default for k in VMAPPED_KEYS}
    neutral["clip"] = None if config.clip is None else 1.0
    return dataclasses.replace(config, **neutral)


def learning_rate(config: Config, lr=None):
    """The step-size schedule: ``paper_mnist`` ``lr / (1 + floor(t / 50))`` (Table 3),
    ``paper_cifar`` ``lr`` then ``lr / 10`` after step 1500, or ``constant``; ``lr`` (a
    number or a traced scalar) overrides ``config.lr``."""
    lr = config.lr if lr is None else lr
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


def _parts(config: Config, ds, seed: int, workers: int) -> list[np.ndarray]:
    """Each worker's training-set indices under ``config``'s partition, drawn with its
    ``data_seed`` if set, else with the run's ``seed``."""
    seed = seed if config.data_seed is None else config.data_seed
    parts = [np.asarray(p, dtype=np.int64).reshape(-1) for p in partition(
        ds.y_train, workers, method=config.partition, alpha=config.alpha, gamma=config.gamma,
        seed=seed)]
    empty = [i for i, p in enumerate(parts) if p.size == 0]
    if empty:
        raise ValueError(f"partition: workers {empty} have no samples (seed {seed})")
    return parts


class Experiment:
    """One compiled (attack, rule) experiment of a config, runnable for several runs at once.

    Run ``i`` has seed ``seeds[i]`` and config ``settings[i]`` (default: ``config``), which
    may differ from ``config`` only in :data:`VMAPPED_KEYS`; step hyperparameters that differ
    between runs are traced per run, the others stay compile-time constants.

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
        if len(self.settings) != self.n_seeds:
            raise ValueError(f"settings: one config per seed needed; got {len(self.settings)} "
                             f"for {self.n_seeds} seeds")
        for s in self.settings:
            if program_key(s) != program_key(config):
                changed = sorted(k for k in Config.__dataclass_fields__
                                 if getattr(s, k) != getattr(config, k) and k not in VMAPPED_KEYS)
                raise ValueError(f"settings: runs of one program may differ only in "
                                 f"{list(VMAPPED_KEYS)} (clip not to or from None); one differs "
                                 f"in {changed or ['clip']}")
        self.mesh = experiment_mesh(config)
        k = 1 if self.mesh is None else self.mesh.shape["workers"]
        if self.mesh is not None:  # pad to a multiple of the runs axis; extra runs dropped
            pad = -self.n_seeds % self.mesh.shape["runs"]
            self.seeds += [self.seeds[-1]] * pad
            self.settings += [self.settings[-1]] * pad
        ds = dataset if dataset is not None else config.load_data()
        self.dataset = ds
        lf = attack == "label_flipping" and config.f > 0
        #: workers holding data (the ``f`` Byzantine ones too under label flipping)
        self.workers = config.n if lf else config.honest
        self.loaded_workers: set[int] = set()  # worker rows gathered by this process
        self.data = self._worker_data(
            [_parts(c, ds, s, self.workers) for c, s in zip(self.settings, self.seeds)],
            self.workers + -self.workers % k, flip_from=config.honest)
        #: per-run values of the step hyperparameters that differ between runs, ``(runs,)``
        #: arrays (vmapped); the others stay Python constants, so a program of one setting is
        #: the one it was before runs could differ
        self.hyper = {key: self._put(np.array([getattr(c, key) for c in self.settings],
                                              np.float32))
                      for key in _STEP_KEYS
                      if len({getattr(c, key) for c in self.settings}) > 1}
        self.x_test = self._put(np.asarray(ds.x_test), replicated=True)
        self.y_test = self._put(np.asarray(ds.y_test), replicated=True)
        self.model = make_model(config.model, ds.num_classes, ds.x_train.shape[1:])
        self.rule = config.build_rule(rule_name)
        self.lf = lf
        self.server, self.sgd = self._optimizers({})
        self.aggregate = transforms.robust_aggregate(self.rule, mesh=self.mesh if k > 1 else None)
        runs = None if self.mesh is None else "runs"
        self._vmapped_chunk = jax.vmap(self._chunk, in_axes=(0, 0, 0, None), spmd_axis_name=runs)
        # on a mesh, jitted by init() once the state's layout is known
        self._run_chunk = None if self.mesh else jax.jit(self._vmapped_chunk, static_argnums=3)
        self._evaluate = jax.jit(jax.vmap(self._accuracy, in_axes=(0, 0, None, None),
                                          spmd_axis_name=runs))
        self._init = jax.jit(jax.vmap(self._init_one, spmd_axis_name=runs))

    # ------------------------------------------------------------------ pieces
    def _hyper(self, hyper, key: str):
        """This run's value of a step hyperparameter: traced when runs differ in it."""
        return hyper[key] if key in hyper else getattr(self.settings[0], key)

    def _optimizers(self, hyper):
        """The server chain (clip -> worker momentum -> attack) and the SGD step, built from
        this run's hyperparameters (``hyper``: the traced ones, see ``self.hyper``)."""
        c, f = self.config, self.config.f
        injected = "none" if self.lf else self.attack
        beta = self._hyper(hyper, "momentum") if c.algorithm == "dshb" else 0.0
        server = optax.chain(
            transforms.clip_by_worker_norm(self._hyper(hyper, "clip")) if c.clip else optax.identity(),
            transforms.worker_momentum(beta, c.n if self.lf else c.honest),
            transforms.inject_attack(injected, f if injected != "none" else 0, rule=self.rule,
                                     key=jax.random.key(0), **self._attack_options()),
        )
        return server, optax.sgd(learning_rate(c, lr=self._hyper(hyper, "lr")))

    def _attack_options(self):
        """``search=`` for the attacks that search (config ``attack_search``), else nothing."""
        from nnmjax.experiments.config import SEARCHING_ATTACKS

        if self.attack in SEARCHING_ATTACKS and self.config.attack_search != "grid":
            return {"search": self.config.attack_search}
        return {}

    def _loss(self, params, model_state, key, x, y, mask=None, *, weight_decay):
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
        return nll + 0.5 * weight_decay * l2, new

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

    def _state_shardings(self, state: RunState):
        """Where a state lives: seeds over the mesh's ``runs`` axis; per-worker momenta also
        over ``workers`` when it divides their number; the rest replicated over ``workers``.
        Pinned as the chunks' output layout, so every chunk compiles once."""
        seeds = NamedSharding(self.mesh, P("runs"))
        k = self.mesh.shape["workers"]

        def momentum(a):
            return NamedSharding(self.mesh, P("runs", "workers")) if a.shape[1] % k == 0 else seeds

        server = tuple(jax.tree.map(momentum, s) if isinstance(s, transforms.WorkerMomentumState)
                       else jax.tree.map(lambda _: seeds, s) for s in state.opt_state[0])
        rest = jax.tree.map(lambda _: seeds, state._replace(opt_state=(None,) + state.opt_state[1:]))
        return rest._replace(opt_state=(server,) + rest.opt_state[1:])

    def init(self) -> RunState:
        """Initial states for every seed (leading axis)."""
        keys = np.stack([np.asarray(jax.random.key_data(jax.random.key(s))) for s in self.seeds])
        state = self._init(jax.vmap(jax.random.wrap_key_data)(self._put(keys)))
        if self.mesh is not None and self._run_chunk is None:
            shardings = self._state_shardings(state)
            seeds = NamedSharding(self.mesh, P("runs"))
            self._run_chunk = jax.jit(self._vmapped_chunk, static_argnums=3,
                                      out_shardings=(shardings, (seeds, seeds)))
            state = jax.device_put(state, shardings)
        return state

    def _put(self, array: np.ndarray, *, replicated: bool = False):
        """``array`` on the device(s), its leading (seed) axis split over the mesh's ``runs``
        axis unless ``replicated``."""
        return self._build(array.shape, lambda index: array[index],
                           P() if replicated else P("runs"))

    def _build(self, shape, block, spec):
        """The array of ``shape`` whose block at ``index`` (a tuple of slices) is
        ``block(index)``, laid out on the mesh as ``spec``; each process builds only the blocks
        of its own devices."""
        if self.mesh is None:
            return jnp.asarray(block(tuple(slice(None) for _ in shape)))
        return jax.make_array_from_callback(shape, NamedSharding(self.mesh, spec), block)

    def _worker_data(self, parts: list[list[np.ndarray]], padded: int, *, flip_from: int):
        """Every seed's workers' data, ``(seeds, padded, rows, ...)``: worker ``i`` of seed
        ``s`` holds ``x_train[parts[s][i]]``, labels flipped for ``i >= flip_from``; workers
        ``>= len(parts[s])`` are empty padding. Only the blocks this process's devices hold
        are gathered."""
        ds, (x, y) = self.dataset, (self.dataset.x_train, self.dataset.y_train)
        rows = max(p.size for ps in parts for p in ps)
        empty = np.zeros((0,), np.int64)

        @functools.lru_cache(maxsize=None)
        def gathered(seeds: range, workers: range):
            self.loaded_workers.update(i for i in workers if i < self.workers)
            blocks = [gather_workers(x, y, [parts[s][i] if i < self.workers else empty
                                            for i in workers], rows=rows) for s in seeds]
            xs, ys, counts = (np.stack(b) for b in zip(*blocks))
            flip = np.array([i >= flip_from for i in workers])[None, :, None]
            return xs, np.where(flip, label_flip(ys, ds.num_classes), ys).astype(np.int32), counts

        def field(j, shape):
            def block(index):
                seeds, workers = (range(len(parts))[index[0]], range(padded)[index[1]])
                return gathered(seeds, workers)[j][(slice(None), slice(None)) + index[2:]]

            return self._build(shape, block, P("runs", "workers"))

        s = len(parts)
        return WorkerData(field(0, (s, padded, rows) + x.shape[1:]), field(1, (s, padded, rows)),
                          field(2, (s, padded)))

    def _grads(self, params, model_state, data: WorkerData, key, weight_decay):
        """Every worker's loss and gradient (one vmap) and the new BatchNorm statistics: the
        mean of the honest workers' updated running averages."""
        c, w = self.config, self.workers
        padded = data.y.shape[0]
        k_batch, k_drop = jax.random.split(key)
        drop = jax.random.split(k_drop, w)
        drop = jnp.concatenate([drop] + [drop[:1]] * (padded - w))
        grad = jax.value_and_grad(functools.partial(self._loss, weight_decay=weight_decay),
                                  has_aux=True)
        if c.algorithm == "dgd":
            mask = (jnp.arange(data.y.shape[1])[None, :] < data.counts[:, None]).astype(jnp.float32)
            (losses, stats), grads = jax.vmap(grad, in_axes=(None, None, 0, 0, 0, 0))(
                params, model_state, drop, data.x, data.y, mask)
        else:
            xb, yb = sample_batches(k_batch, data, c.batch_size, workers=w)
            (losses, stats), grads = jax.vmap(grad, in_axes=(None, None, 0, 0, 0))(
                params, model_state, drop, xb, yb)
        if self.mesh is not None and self.mesh.shape["workers"] > 1:
            # each device computed its own workers' gradients; drop the padding
            by_worker = NamedSharding(self.mesh, P("workers"))
            grads = jax.lax.with_sharding_constraint(grads, by_worker)
            losses, grads = losses[:w], jax.tree.map(lambda a: a[:w], grads)
        stats = jax.tree.map(lambda a: jnp.mean(a[: c.honest], axis=0), stats)
        return losses, grads, stats

    def _step(self, state: RunState, data: WorkerData, hyper):
        server, agg, opt = state.opt_state
        key, k_batch = jax.random.split(state.key)
        losses, grads, model_state = self._grads(state.params, state.model_state, data, k_batch,
                                                 self._hyper(hyper, "weight_decay"))
        server_chain, sgd = self._optimizers(hyper)
        rows, server = server_chain.update(grads, server, state.params)
        aggregate, agg = self.aggregate.update(rows, agg, state.params)
        honest, _ = ravel_workers(rows)
        honest = honest[: self.config.honest]
        flat, _ = ravel_workers(jax.tree.map(lambda a: a[None], aggregate))
        kappa = metrics.kappa_hat(flat[0], honest)
        updates, opt = sgd.update(aggregate, opt, state.params)
        params = optax.apply_updates(state.params, updates)
        new = RunState(params, (server, agg, opt), key, state.step + 1, model_state)
        return new, (jnp.mean(losses[: self.config.honest]), kappa)

    def _chunk(self, state: RunState, data: WorkerData, hyper, steps: int):
        return jax.lax.scan(lambda s, _: self._step(s, data, hyper), state, None, length=steps)

    def run_chunk(self, state: RunState, steps: int):
        """Advance every run by ``steps`` steps; returns ``(state, (loss, kappa))``, each
        ``(runs, steps)``."""
        if self._run_chunk is None:
            raise RuntimeError("on a mesh the state's layout is fixed by init(): call "
                               "state = experiment.init() before run_chunk")
        state, (loss, kappa) = self._run_chunk(state, self.data, self.hyper, int(steps))
        return state, (_fetch(loss)[: self.n_seeds], _fetch(kappa)[: self.n_seeds])

    def _accuracy(self, params, model_state, x, y):
        """Test accuracy, the test set in chunks of ``EVAL_CHUNK`` images (``lax.map``), so
        memory stays bounded whatever the test set's size and the number of vmapped seeds."""
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
        acc = self._evaluate(state.params, state.model_state, self.x_test, self.y_test)
        return _fetch(acc)[: self.n_seeds]


def experiment_mesh(config: Config):
    """The ``(runs, workers)`` mesh of ``config.mesh`` (``None`` without one): over this
    process's devices when they suffice (each process then runs its own slice of a grid),
    otherwise over every process's devices (all processes run the same programs)."""
    sizes = dict(config.mesh)
    if not sizes:
        return None
    devices = None if spans_processes(config) else jax.local_devices()
    return worker_mesh(sizes.get("workers", 1), runs=sizes.get("runs", 1), devices=devices)


def spans_processes(config: Config) -> bool:
    """Whether ``config``'s mesh needs more devices than this process has, so that every
    process of a ``jax.distributed`` run takes part in each of its programs."""
    sizes = dict(config.mesh)
    return sizes.get("runs", 1) * sizes.get("workers", 1) > jax.local_device_count()


def _fetch(a: jax.Array) -> np.ndarray:
    """``a`` as NumPy on every process, gathered when it spans several processes."""
    if not a.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)


def _rekey(server_state, key):
    """Give the inject_attack state of the server chain its own key."""
    out = []
    for s in server_state:
        if isinstance(s, transforms.InjectAttackState):
            s = s._replace(key=key)
        out.append(s)
    return tuple(out)


def build_experiment(config: Config, attack: str, rule_name: str, seeds, dataset=None, *,
                     settings=None) -> Experiment:
    """Compile-ready :class:`Experiment` for one (attack, rule) over ``seeds`` (with one config
    per seed in ``settings`` when the runs differ in :data:`VMAPPED_KEYS`)."""
    return Experiment(config, attack, rule_name, seeds, dataset=dataset, settings=settings)


def worker_data_bytes(runs, attack: str, dataset) -> int:
    """Bytes of the worker data an :class:`Experiment` of ``runs`` ((config, seed) pairs)
    holds on its devices: every run's workers padded to the largest part of any run."""
    config = runs[0][0]
    workers = config.n if attack == "label_flipping" and config.f > 0 else config.honest
    rows = max(p.size for c, s in runs for p in _parts(c, dataset, s, workers))
    image = int(np.prod(dataset.x_train.shape[1:])) * dataset.x_train.dtype.itemsize
    return len(runs) * workers * rows * (image + 4)

