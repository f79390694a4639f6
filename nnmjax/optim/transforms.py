"""optax GradientTransformations over stacked per-worker updates.

The robust D-SHB server (paper Algorithm 3) is one ``optax.chain``::

    optax.chain(
        clip_by_worker_norm(2.0),             # (h, ...) -> (h, ...)
        worker_momentum(0.9, num_workers=h),  # m_i <- beta m_i + (1 - beta) g_i   (eq. 3)
        inject_attack("alie", f),             # (h, ...) -> (h + f, ...)
        robust_aggregate(nnmjax.rule("nnm+cwtm", f)),  # (n, ...) -> (...)
        optax.sgd(schedule),                  # theta <- theta - gamma_t R_t
    )

The updates entering the chain are a pytree whose leaves carry a leading
worker axis (``jax.vmap(jax.grad(loss))`` over the honest workers);
``robust_aggregate`` removes that axis, so any optax optimizer can follow.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from nnmjax.robust import attacks as _attacks
from nnmjax.robust._checks import check_count
from nnmjax.robust.rules import Rule
from nnmjax.scale.sharding import on_columns
from nnmjax.optim.tree import num_workers as _count_workers
from nnmjax.optim.tree import ravel_workers

__all__ = ["clip_by_worker_norm", "worker_momentum", "inject_attack", "robust_aggregate",
           "WorkerMomentumState", "InjectAttackState", "RobustAggregateState"]


def _concrete(value) -> bool:
    """Whether a hyperparameter can be checked now (not a tracer: a vmapped sweep's value)."""
    return not isinstance(value, jax.core.Tracer)


def clip_by_worker_norm(max_norm: float | Float[Array, ""]) -> optax.GradientTransformation:
    """Rescale each worker's update to global l2 norm at most ``max_norm``.

    ``g_i <- g_i min(1, max_norm / ||g_i||)``, ``||g_i||`` over all leaves of worker ``i``
    (the paper's gradient clipping, Table 3). Stateless; leaves keep their shape ``(h, ...)``.

    Args:
        max_norm: clipping threshold, ``> 0`` (may be a tracer in a vmapped sweep).

    Returns:
        An ``optax.GradientTransformation``.

    Raises:
        ValueError: if a concrete ``max_norm`` is not ``> 0``.

    Examples:
        >>> import jax.numpy as jnp, numpy as np, optax, nnmjax
        >>> from nnmjax import transforms
        >>> params = {"w": jnp.zeros(3)}
        >>> grads = {"w": jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1]], jnp.float32)}
        >>> tx = transforms.clip_by_worker_norm(2.0)
        >>> clipped, _ = tx.update(grads, tx.init(params))
        >>> print(np.round(np.asarray(jnp.linalg.norm(clipped["w"], axis=1)), 4))
        [2.     1.4142 2.     1.7321]
    """
    if _concrete(max_norm) and not max_norm > 0:
        raise ValueError(f"max_norm must be > 0; got {max_norm!r}")

    def update_fn(updates, state, params=None):
        del params
        sq = sum(jnp.sum(jnp.square(leaf).reshape(leaf.shape[0], -1), axis=1)
                 for leaf in jax.tree.leaves(updates))
        norm = jnp.sqrt(sq)
        scale = jnp.minimum(1.0, max_norm / jnp.where(norm > 0, norm, 1.0))
        return jax.tree.map(
            lambda u: u * scale.reshape((-1,) + (1,) * (u.ndim - 1)).astype(u.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class WorkerMomentumState(NamedTuple):
    """State of :func:`worker_momentum`.

    Attributes:
        momentum: per-worker momenta ``m`` (leaves ``(h, ...)``).
    """

    momentum: Any


def worker_momentum(beta: float | Float[Array, ""],
                    num_workers: int) -> optax.GradientTransformation:
    """Local momentum of each honest worker (paper eq. 3).

    ``m_t^(i) = beta m_{t-1}^(i) + (1 - beta) g_t^(i)``, ``m_0 = 0``. Emits the momenta.

    Args:
        beta: momentum coefficient in ``[0, 1)`` (may be a tracer in a vmapped sweep).
        num_workers: number ``h`` of honest workers (leading axis of the updates).

    Returns:
        An ``optax.GradientTransformation``.

    Raises:
        ValueError: if a concrete ``beta`` is outside ``[0, 1)``, ``num_workers`` is not a
            positive ``int``, or (at update time) the updates have another number of workers.

    Examples:
        >>> import jax.numpy as jnp, numpy as np, optax, nnmjax
        >>> from nnmjax import transforms
        >>> params = {"w": jnp.zeros(3)}
        >>> grads = {"w": jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1]], jnp.float32)}
        >>> tx = transforms.worker_momentum(0.9, num_workers=4)
        >>> state = tx.init(params)
        >>> m, state = tx.update(grads, state)
        >>> m, state = tx.update(grads, state)
        >>> print(np.round(np.asarray(m["w"][0]), 4))        # (1 - 0.9^2) * [0, 1, 2]
        [0.   0.19 0.38]
    """
    if _concrete(beta) and not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1); got {beta!r}")
    if not (isinstance(num_workers, int) and num_workers > 0):
        raise ValueError(f"num_workers must be a positive integer; got {num_workers!r}")

    def init_fn(params):
        return WorkerMomentumState(jax.tree.map(
            lambda p: jnp.zeros((num_workers,) + jnp.shape(p), jnp.result_type(p)), params))

    def update_fn(updates, state, params=None):
        del params
        if _count_workers(updates) != num_workers:
            raise ValueError(f"worker_momentum was built for {num_workers} workers; "
                             f"updates have {_count_workers(updates)}")
        m = jax.tree.map(lambda m, g: beta * m + (1.0 - beta) * g, state.momentum, updates)
        return m, WorkerMomentumState(m)

    return optax.GradientTransformation(init_fn, update_fn)



class InjectAttackState(NamedTuple):
    """State of :func:`inject_attack`.

    Attributes:
        key: ``jax.random`` key, split at every step, for randomized attacks and rules.
        attack_state: the state of a stateful attack (a :class:`nnmjax.robust.attacks.MimicState`),
            else ``None``.
    """

    key: jax.Array
    attack_state: Any


def _state_key(key, randomized: bool, what: str) -> jax.Array:
    """The key a transform's state starts from: required where the transform draws random
    numbers (``ValueError`` before anything is traced); elsewhere it is only carried, never
    drawn from, and defaults to ``jax.random.key(0)``."""
    if key is None and randomized:
        raise ValueError(f"{what} is randomized: pass key=jax.random.key(...)")
    return jax.random.key(0) if key is None else key


_STATEFUL = {"mimic"}
_KEYED = {"gaussian"}


def inject_attack(attack: str | Callable, f: int, *, key: PRNGKeyArray | None = None,
                  rule: Rule | Callable | None = None,
                  **options: Any) -> optax.GradientTransformation:
    """Append ``f`` Byzantine rows computed from the honest ones: ``(h, ...) -> (h + f, ...)``.

    ``attack`` is a name of :data:`nnmjax.robust.attacks.ATTACKS` (or a callable
    ``(honest (h, d), f) -> (f, d)``); ``options`` go to it (``eta=...``). The optimal
    attacks search against ``rule`` (the defence that follows; randomized rules are given
    a key from this transform's state). Mimic keeps its state here; ``key`` seeds
    randomized and stateful attacks. ``"none"`` appends nothing.

    Args:
        attack: attack name, ``"none"``, or a callable ``(honest, f) -> (f, d)``.
        f: number of Byzantine rows, a non-negative ``int``.
        key: ``jax.random`` key of the state, keyword-only; required for randomized and
            stateful attacks (``gaussian``, ``mimic``, and the searching attacks against a
            randomized rule), unused by the others.
        rule: the defence, required by ``"optimal_alie"``, ``"optimal_foe"`` and ``"adaptive"``.
        **options: keyword options of the attack.

    Returns:
        An ``optax.GradientTransformation``.

    Raises:
        ValueError: if ``f`` is not a non-negative ``int``, the attack name is unknown, or a
            searching attack gets no ``rule``.

    Examples:
        >>> import jax.numpy as jnp, numpy as np, optax, nnmjax
        >>> from nnmjax import transforms
        >>> params = {"w": jnp.zeros(3)}
        >>> grads = {"w": jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1]], jnp.float32)}
        >>> tx = transforms.inject_attack("sign_flipping", 1)
        >>> rows, _ = tx.update(grads, tx.init(params))
        >>> rows["w"].shape, np.asarray(rows["w"][-1]).tolist()
        ((5, 3), [-1.0, -1.0, -1.0])
    """
    f = check_count(f)
    name = attack if isinstance(attack, str) else getattr(attack, "__name__", "custom")
    if isinstance(attack, str) and attack != "none" and attack not in _attacks.ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; known: {', '.join(['none', *sorted(_attacks.ATTACKS)])}")
    if name in _attacks.SEARCHING_ATTACKS and rule is None:
        raise ValueError(f"{name} searches against the defence in use: pass rule=nnmjax.rule(...)")
    fn = _attacks.ATTACKS.get(name) if isinstance(attack, str) else attack
    randomized = (name in _STATEFUL or name in _KEYED or (
        name in _attacks.SEARCHING_ATTACKS and getattr(rule, "randomized", False)))
    key = _state_key(key, randomized, f"inject_attack({name!r})")

    def init_fn(params):
        attack_state = None
        if name in _STATEFUL:
            d = sum(jnp.size(p) for p in jax.tree.leaves(params))
            attack_state = _attacks.mimic_init(jax.random.fold_in(key, 1), d)
        return InjectAttackState(key, attack_state)

    def update_fn(updates, state, params=None):
        del params
        if name == "none" or f == 0:
            return updates, state
        x, unravel = ravel_workers(updates)
        k_next, k_use = jax.random.split(state.key)
        attack_state = state.attack_state
        if name in _STATEFUL:
            byz, attack_state = fn(x, f, state=attack_state, **options)
        elif name in _KEYED:
            byz = fn(x, f, key=k_use, **options)
        elif name in _attacks.SEARCHING_ATTACKS:
            byz = fn(x, f, rule=rule, key=k_use, **options)
        else:
            byz = fn(x, f, **options)
        rows = jnp.concatenate([x, byz.astype(x.dtype)], axis=0)
        out = jax.vmap(unravel)(rows)
        return out, InjectAttackState(k_next, attack_state)

    return optax.GradientTransformation(init_fn, update_fn)


class RobustAggregateState(NamedTuple):
    """State of :func:`robust_aggregate`.

    Attributes:
        key: ``jax.random`` key, split at every step, for randomized rules.
        previous: the previous ``(d,)`` aggregate for a rule ending in ``cclip``, else ``None``.
    """

    key: jax.Array
    previous: Any


def robust_aggregate(rule: Rule | Callable, *, key: PRNGKeyArray | None = None, mesh=None,
                     axis: str = "workers") -> optax.GradientTransformation:
    """Aggregate stacked worker updates ``(n, ...) -> (...)`` with ``rule``.

    The rule runs on the raveled ``(n, d)`` matrix (:func:`nnmjax.optim.tree.ravel_workers`) and
    its ``(d,)`` output is unraveled to the parameters' structure. Randomized rules draw a
    fresh subkey each step; a rule ending in ``cclip`` is started from the previous aggregate
    (Karimireddy et al.'s usage).

    With a ``mesh`` (:mod:`nnmjax.scale.sharding`) the rule runs on the matrix's columns split over
    ``mesh``'s ``axis``: coordinate-wise rules without communication, distance-based ones
    with one all-reduce of the ``n x n`` Gram matrix (:func:`nnmjax.scale.sharding.on_columns`).

    Args:
        rule: a :class:`nnmjax.robust.rules.Rule` or any callable ``(n, d) -> (d,)``.
        key: ``jax.random`` key of the state, keyword-only; required when ``rule`` is
            randomized (e.g. ``bucketing+...``), unused otherwise.
        mesh: optional ``jax.sharding.Mesh`` to run the rule on.
        axis: the mesh axis the columns are split over.

    Returns:
        An ``optax.GradientTransformation``.

    Examples:
        One robust D-SHB server step, with ALIE injected before NNM + CWTM:

        >>> import jax.numpy as jnp, numpy as np, optax, nnmjax
        >>> from nnmjax import transforms
        >>> params = {"w": jnp.zeros(3)}
        >>> grads = {"w": jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1]], jnp.float32)}
        >>> tx = optax.chain(transforms.inject_attack("alie", 1),
        ...                  transforms.robust_aggregate(nnmjax.rule("nnm+cwtm", 1)),
        ...                  optax.sgd(0.1))
        >>> step, _ = tx.update(grads, tx.init(params))
        >>> print(np.round(np.asarray(step["w"]), 4))
        [-0.1121 -0.1121 -0.1121]
    """
    randomized = getattr(rule, "randomized", False)
    stateful = isinstance(rule, Rule) and rule.stages[-1] == "cclip"
    key = _state_key(key, randomized, f"robust_aggregate({getattr(rule, 'name', rule)!r})")

    def apply(x, k_use, *previous):
        kwargs = {"key": k_use} if randomized else {}
        if stateful:
            return Rule(rule.name, rule.f, {**rule.options, "init": previous[0]},
                        rule.pre_options)(x, **kwargs)
        return rule(x, **kwargs)

    if mesh is not None:
        apply = on_columns(apply, mesh, axis=axis)

    def init_fn(params):
        previous = None
        if stateful:
            d = sum(jnp.size(p) for p in jax.tree.leaves(params))
            previous = jnp.zeros((d,), jnp.float32)
        return RobustAggregateState(key, previous)

    def update_fn(updates, state, params=None):
        del params
        x, unravel = ravel_workers(updates)
        k_next, k_use = jax.random.split(state.key)
        agg = apply(x, k_use, *([state.previous] if stateful else []))
        return unravel(agg), RobustAggregateState(k_next, agg if stateful else None)

    return optax.GradientTransformation(init_fn, update_fn)
