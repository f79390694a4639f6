"""Robust federated averaging in your own loop: every client's local steps in one call.

Robust FedAvg (McMahan et al., 2017, with a robust server as in ByzFL's ``FedAvg``): each
round the sampled clients start from the global parameters ``w``, take ``local_steps`` steps
of their own optimizer on their own minibatches and send their model update
``Delta_i = w_i - w``. The server aggregates the updates robustly and moves the global
model by ``server_lr`` times the aggregate. In optax terms the clients' *pseudo-gradients*
``-Delta_i`` go through the same server chain as D-SHB's gradients
(:mod:`nnmjax.optim.transforms`: ``inject_attack``, ``robust_aggregate``) followed by
``optax.sgd(server_lr)``, which gives ``w + server_lr F(Delta)`` for every rule that commutes
with negation (all of the library's but the clipping ones, whose thresholds are symmetric
anyway).

:func:`local_updates` runs the clients' local steps: one ``jax.vmap`` over clients of a
``lax.scan`` over steps. With one local SGD step of learning rate ``lr`` and
``server_lr = 1`` a round is exactly a robust D-GD step of learning rate ``lr`` on the same
minibatches (``tests/test_federated.py``).

Examples:
    >>> import jax, jax.numpy as jnp, optax, nnmjax
    >>> from nnmjax.optim import federated, transforms as T
    >>> def loss_fn(w, batch):
    ...     x, y = batch
    ...     return jnp.mean((x @ w - y) ** 2)
    >>> clients, steps, f = 7, 3, 2
    >>> x = jax.random.normal(jax.random.key(0), (clients, steps, 8, 4))
    >>> y = x @ jnp.ones(4)
    >>> server = optax.chain(T.inject_attack("alie", f),
    ...                      T.robust_aggregate(nnmjax.rule("nnm+cwtm", f)), optax.sgd(1.0))
    >>> w = jnp.zeros(4)
    >>> state = server.init(w)
    >>> for _ in range(20):
    ...     local = federated.local_updates(loss_fn, w, (x, y), optimizer=optax.sgd(0.05))
    ...     step, state = server.update(federated.pseudo_gradients(local.updates), state, w)
    ...     w = optax.apply_updates(w, step)
    >>> bool(jnp.linalg.norm(w - 1.0) < 0.1)
    True
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["LocalResult", "local_updates", "pseudo_gradients", "round_sizes", "sample_clients"]


class LocalResult(NamedTuple):
    """The clients' results of one round (:func:`local_updates`).

    Attributes:
        updates: the model updates ``Delta_i = w_i - w``, a pytree like the parameters
            with a leading client axis.
        loss: ``(clients,)`` each client's mean loss over its local steps.
        model_state: each client's model state after its local steps (e.g. BatchNorm
            running statistics; leading client axis), ``None`` when none was given.
    """

    updates: Any
    loss: Float[Array, " clients"]
    model_state: Any = None


def local_updates(loss_fn: Callable, params, batches, *,
                  optimizer: optax.GradientTransformation, model_state=None,
                  clients_per_call: int | None = None) -> LocalResult:
    """Every client's local training from ``params``: one vmap over clients of a scan over
    local steps.

    Client ``i`` runs ``w <- w + optimizer(grad loss_fn(w, batch_{i,t}))`` for
    ``t = 0 .. T - 1`` from ``w = params`` with a fresh optimizer state (e.g.
    ``optax.sgd(lr, momentum=0.9)``: momentum within the round, as ByzFL's clients'
    ``torch.optim.SGD``) and returns ``Delta_i = w_T - params``.

    Args:
        loss_fn: ``(params, batch) -> scalar`` loss; with ``model_state``,
            ``(params, model_state, batch) -> (loss, new_model_state)``.
        params: the global parameters (a pytree).
        batches: a pytree whose leaves have leading axes ``(clients, T, ...)``: client ``i``'s
            ``t``-th minibatch is ``jax.tree.map(lambda a: a[i, t], batches)``.
        optimizer: the clients' optax optimizer.
        model_state: the global model state (e.g. flax's ``batch_stats``) each client starts
            from and carries through its steps; ``None``: the model has none.
        clients_per_call: ``None`` (default): every client in one ``jax.vmap``; ``k``: a
            ``lax.map`` over blocks of ``k`` vmapped clients. Each client has its own
            parameters, so a vmap of convolutions is a grouped convolution, which XLA's CPU
            backend runs slower than one client at a time (``k = 1``: 408 against 517 ms
            for 13 clients x 5 steps of ByzFL's ``cnn_mnist`` on 2 Intel Xeon cores,
            ``python benchmarks/algorithms.py --local-updates``); the result is the same up
            to rounding.

    Returns:
        A :class:`LocalResult`.

    Raises:
        ValueError: if the leaves of ``batches`` do not share two leading axes, or a client
            has no local step (``T = 0``).

    Examples:
        One SGD step of rate 0.5 on ``(w - 3)^2`` from 0: ``Delta = 0.5 * 6 = 3``:

        >>> import jax.numpy as jnp, optax
        >>> from nnmjax.optim import federated
        >>> res = federated.local_updates(lambda w, b: jnp.sum((w - b) ** 2), jnp.zeros(()),
        ...                               jnp.full((2, 1), 3.0), optimizer=optax.sgd(0.5))
        >>> res.updates.tolist(), res.loss.tolist()
        ([3.0, 3.0], [9.0, 9.0])
    """
    leaves = jax.tree.leaves(batches)
    if not leaves or any(jnp.ndim(a) < 2 for a in leaves) or len(
            {tuple(jnp.shape(a)[:2]) for a in leaves}) != 1:
        raise ValueError("batches: every leaf needs the same leading (clients, local_steps) axes")
    if jnp.shape(leaves[0])[1] == 0:
        raise ValueError("batches: local_steps must be >= 1 (the second axis is empty)")

    stateful = model_state is not None

    def value_and_grad(w, state, batch):
        if stateful:
            return jax.value_and_grad(loss_fn, has_aux=True)(w, state, batch)
        loss, grads = jax.value_and_grad(loss_fn)(w, batch)
        return (loss, None), grads

    def one_client(client_batches):
        def step(carry, batch):
            w, state, opt_state = carry
            (loss, state), grads = value_and_grad(w, state, batch)
            updates, opt_state = optimizer.update(grads, opt_state, w)
            return (optax.apply_updates(w, updates), state, opt_state), loss

        (w, state, _), losses = jax.lax.scan(
            step, (params, model_state, optimizer.init(params)), client_batches)
        return jax.tree.map(jnp.subtract, w, params), jnp.mean(losses), state

    if clients_per_call is None:
        updates, loss, state = jax.vmap(one_client)(batches)
    else:
        updates, loss, state = jax.lax.map(one_client, batches, batch_size=clients_per_call)
    return LocalResult(updates, loss, state)


def pseudo_gradients(updates):
    """``-Delta_i``: the model updates as the gradients the server chain expects (its
    ``optax.sgd(server_lr)`` then moves the parameters by ``+server_lr F(Delta)``)."""
    return jax.tree.map(jnp.negative, updates)


def round_sizes(honest: int, byzantine: int, participation: float) -> tuple[int, int]:
    """How many clients of each kind take part in a round: ``max(1, floor(p honest))``
    honest and ``floor(p byzantine)`` Byzantine ones (``int()`` as ByzFL's count).

    Raises:
        ValueError: if ``participation`` is outside ``(0, 1]`` or ``honest < 1``.

    Examples:
        >>> from nnmjax.optim import federated
        >>> federated.round_sizes(13, 4, 0.5), federated.round_sizes(13, 4, 1.0)
        ((6, 2), (13, 4))
    """
    if not 0 < participation <= 1:
        raise ValueError(f"participation must be in (0, 1]; got {participation!r}")
    if honest < 1:
        raise ValueError(f"honest must be >= 1; got {honest!r}")
    return max(1, int(participation * honest)), int(participation * byzantine)


def sample_clients(key: PRNGKeyArray, honest: int, byzantine: int,
                   participation: float) -> tuple[Array, int]:
    """The clients of one round: ``floor(participation honest)`` honest clients drawn
    without replacement (at least one) and the number of Byzantine clients that take part,
    ``floor(participation byzantine)`` (``int()`` as ByzFL's count).

    The Byzantine share of every round is fixed, so that the rule's ``f`` is the same each
    round (ByzFL draws from all clients, and the number of Byzantine ones varies).

    Args:
        key: ``jax.random`` key.
        honest: the number of honest clients.
        byzantine: the number of Byzantine clients.
        participation: the sampled fraction, in ``(0, 1]``.

    Returns:
        ``(indices, f)``: the sampled honest clients' indices (sorted) and the round's
        number of Byzantine clients.

    Raises:
        ValueError: if ``participation`` is outside ``(0, 1]`` or ``honest < 1``.

    Examples:
        >>> import jax
        >>> from nnmjax.optim import federated
        >>> idx, f = federated.sample_clients(jax.random.key(0), 13, 4, 0.5)
        >>> idx.shape, f
        ((6,), 2)
    """
    m, f = round_sizes(honest, byzantine, participation)
    return jnp.sort(jax.random.choice(key, honest, (m,), replace=False)), f
