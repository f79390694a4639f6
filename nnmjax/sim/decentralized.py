"""One step of robust decentralized learning (``algorithm = "decentralized"``) in the
simulator.

The ``n`` nodes sit on the config's graph (:meth:`Config.graph`: ``topology``, ``degree``,
``topology_seed``, ``adjacency``), the last ``f`` Byzantine; every honest node holds its own
parameters (a leading node axis on the run's ``params`` and BatchNorm statistics, all
nodes starting from one initialisation). A step, for every honest node ``i`` at once:

1. its gradient on its own minibatch at its own parameters (one ``jax.vmap``), clipped
   (``clip``) and folded into its momentum ``m_i <- beta m_i + (1 - beta) g_i``
   (``momentum``, the chain of D-SHB without the attack);
2. a local step ``x_i = w_i - lr_t m_i`` (``lr`` on ``lr_schedule``);
3. robust gossip (:func:`nnmjax.optim.decentralized.robust_gossip`): ``w_i <- F(x_j : j
   in N_i)``, the rule told :attr:`Config.rule_f` Byzantine rows per neighbourhood and each
   Byzantine neighbour sending node ``i`` the attack computed from ``i``'s honest
   neighbours.

The step's second output is the honest nodes' consensus distance
(:func:`nnmjax.optim.decentralized.consensus_distance`) in place of ``kappa_hat``;
evaluation gives every honest node's test accuracy, recorded as their mean and worst.
The attacks act on what the nodes send, their half-step parameters ``x_j`` (ALIE: the
honest neighbours' mean plus ``z`` times their standard deviation, coordinate-wise). On a
complete graph without Byzantine nodes, with the mean (or Krum), a step is the D-SHB step
on the same minibatches, node for node (``tests/test_decentralized_sim.py``).

Examples:
    >>> from nnmjax.experiments.config import Config
    >>> from nnmjax.sim import build_experiment
    >>> c = Config(model="logreg", algorithm="decentralized", topology="ring", n=8, f=1,
    ...            tolerated_f=1, batch_size=4, steps=2)
    >>> exp = build_experiment(c, "alie", "nnm+cwtm", seeds=[1])
    >>> state, (loss, consensus) = exp.run_chunk(exp.init(), 2)
    >>> jax.tree.leaves(state.params)[0].shape[:2], exp.evaluate(state).shape
    ((1, 7), (1, 2))
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from nnmjax.optim import decentralized
from nnmjax.sim.step import RunState, StepSpec, learning_rate, server_chain, worker_grads
from nnmjax.sim.worker_data import RunData

__all__ = ["nodes", "decentralized_step"]


def nodes(spec: StepSpec, tree):
    """``tree`` (one model's parameters or statistics) copied to every honest node."""
    h = spec.config.honest
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (h,) + jnp.shape(a)), tree)


def decentralized_step(spec: StepSpec, state: RunState, data: RunData,
                       hyper: Mapping[str, jax.Array]
                       ) -> tuple[RunState, tuple[jax.Array, jax.Array]]:
    """One step of one run; returns the new state and ``(honest nodes' mean loss,
    consensus distance)``."""
    c, value = spec.config, spec.hyperparameter
    server, agg, opt = state.opt_state
    key, k_batch = jax.random.split(state.key)
    losses, grads, stats = worker_grads(spec, state.params, state.model_state, data, k_batch,
                                        value(hyper, "weight_decay"), per_worker=True)
    chain, _ = server_chain(spec, hyper)  # clipping and momentum; the attack is the gossip's
    moms, server = chain.update(grads, server)
    lr = learning_rate(c, lr=value(hyper, "lr"))(state.step)
    half = jax.tree.map(lambda w, m: w - lr * m, state.params, moms)
    params = decentralized.robust_gossip(
        half, spec.graph, spec.rule, byzantine=c.f, attack=spec.attack if c.f else "none",
        key=jax.random.fold_in(k_batch, 1), **spec.attack_options)
    new = RunState(params, (server, agg, opt), key, state.step + 1, stats)
    return new, (jnp.mean(losses[: c.honest]), decentralized.consensus_distance(params))
