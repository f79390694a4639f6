"""One round of robust federated averaging (``algorithm = "fedavg"``) in the simulator.

Each round (McMahan et al., 2017, with a robust server as ByzFL's ``FedAvg``):

1. the server samples ``m_h = max(1, floor(p (n - f)))`` of the honest clients without
   replacement and ``m_b = floor(p f)`` Byzantine ones (``p = participation``;
   :func:`nnmjax.optim.federated.round_sizes`);
2. every sampled client runs ``local_steps`` SGD steps (``lr`` on ``lr_schedule`` at the
   round, ``local_momentum``, a fresh optimizer state each round) from the global model on
   its own minibatches, one ``jax.vmap`` over clients of a ``lax.scan`` over steps
   (:func:`nnmjax.optim.federated.local_updates`; lowered for the CPU a ``lax.map``, one
   client at a time, which XLA runs faster there), and sends ``Delta_i = w_i - w``;
3. the Byzantine clients send attacked updates (computed from the honest ones as in D-SHB;
   under label flipping they train on flipped labels instead);
4. the server passes ``-Delta_i`` through the same chain as D-SHB's gradients (clipping,
   attack, the robust rule told ``floor(p f)`` -- :attr:`Config.rule_f`) and moves the
   model by ``server_lr`` (on ``server_lr_schedule``) times the robust aggregate.

With one local step, full participation, ``server_lr = 1`` and no clipping a round is a
robust D-SHB step with momentum 0 on the same minibatches (``tests/test_fedavg_sim.py``):
local step ``t`` draws its minibatches from ``fold_in(k, t)`` and step 0 from the round's
key ``k`` itself, as a D-SHB step does.

Examples:
    >>> from nnmjax.experiments.config import Config
    >>> from nnmjax.sim import build_experiment
    >>> c = Config(model="logreg", algorithm="fedavg", n=7, f=2, local_steps=3,
    ...            participation=0.6, batch_size=4, steps=2)
    >>> c.round_sizes, c.rule_f
    ((3, 1), 1)
    >>> exp = build_experiment(c, "alie", "nnm+cwtm", seeds=[1])
    >>> state, (loss, kappa) = exp.run_chunk(exp.init(), 2)
    >>> loss.shape
    (1, 2)
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from nnmjax._platform import sequential_on_cpu
from nnmjax.models.losses import average_batch_stats
from nnmjax.optim import federated
from nnmjax.sim.step import (RunState, StepSpec, draw_batches, learning_rate, runs_one_by_one,
                             server_update, worker_loss)
from nnmjax.sim.worker_data import RunData

__all__ = ["participants", "local_keys", "fedavg_round"]


def participants(spec: StepSpec, key: jax.Array) -> jax.Array:
    """The worker rows of the round's clients: ``m_h`` honest ones drawn without
    replacement (sorted), then, under label flipping (the Byzantine clients hold data),
    ``m_b`` of the Byzantine rows ``n - f .. n - 1``."""
    c = spec.config
    m_h, m_b = spec.rows
    k_h, k_b = jax.random.split(key)
    picked, _ = federated.sample_clients(k_h, c.honest, c.f, c.participation)
    if spec.label_flipping and m_b:
        byz = c.honest + jnp.sort(jax.random.choice(k_b, c.f, (m_b,), replace=False))
        picked = jnp.concatenate([picked, byz])
    return picked


def local_keys(key: jax.Array, steps: int) -> jax.Array:
    """The keys of a round's local steps: ``key`` for step 0 and ``fold_in(key, t)`` for
    step ``t`` (so one local step draws as a D-SHB step)."""
    return jnp.stack([key] + [jax.random.fold_in(key, t) for t in range(1, steps)])


def fedavg_round(spec: StepSpec, state: RunState, data: RunData,
                 hyper: Mapping[str, jax.Array]) -> tuple[RunState, tuple[jax.Array, jax.Array]]:
    """One FedAvg round of one run; returns the new state and ``(honest clients' mean local
    loss, kappa_hat)``."""
    c, value = spec.config, spec.hyperparameter
    key, k_batch = jax.random.split(state.key)
    if c.participation < 1:
        k_pick, k_batch = jax.random.split(k_batch)
        picked = participants(spec, k_pick)
        data = data._replace(index=jax.tree.map(lambda a: a[picked], data.index))
    clients = data.index.counts.shape[0]
    drop, xb, yb = jax.vmap(lambda k: draw_batches(spec, data, k, clients))(
        local_keys(k_batch, c.local_steps))
    batches = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), (drop, xb, yb))  # (clients, T)
    lr = learning_rate(c, lr=value(hyper, "lr"))(state.step)

    def clients_train(params, model_state, batches, lr, weight_decay):
        # every traced value an argument (none closed over), for sequential_vmap
        def loss_fn(params, model_state, batch):
            k, x, y = batch
            return worker_loss(spec.model, params, model_state, k, x, y,
                               weight_decay=weight_decay)

        def train(clients_per_call):  # on the CPU one client at a time, else all at once
            return lambda params, model_state, batches: federated.local_updates(
                loss_fn, params, batches, model_state=model_state,
                optimizer=optax.sgd(lr, momentum=c.local_momentum or None),
                clients_per_call=clients_per_call)

        return jax.lax.platform_dependent(params, model_state, batches, cpu=train(1),
                                          default=train(None))

    if runs_one_by_one(spec):
        clients_train = sequential_on_cpu(clients_train)
    local = clients_train(state.params, state.model_state, batches, lr,
                          value(hyper, "weight_decay"))
    params, opt_state, kappa = server_update(
        spec, state, federated.pseudo_gradients(local.updates), hyper)
    m_h = spec.rows[0]
    stats = average_batch_stats(jax.tree.map(lambda a: a[:m_h], local.model_state))
    new = RunState(params, opt_state, key, state.step + 1, stats)
    return new, (jnp.mean(local.loss[:m_h]), kappa)
