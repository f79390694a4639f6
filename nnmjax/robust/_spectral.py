"""The exact arg-min of the top eigenvalue over many small symmetric PSD matrices (SMEA).

``argmin_s lambda_max(M_s)`` over ``C`` matrices ``M_s`` (``k x k``) without an
eigendecomposition of every one: a Rayleigh quotient after ``POWER_ITERS`` power
iterations is a lower bound ``L_s <= lambda_max(M_s)`` for every matrix (at ``O(k^2)`` per
iteration), and the exact top eigenvalues (``eigvalsh``) are computed for the ``CHUNK``
matrices of smallest ``L_s``, then in equal rounds of at most ``LARGE_CHUNK`` matrices of
smallest ``L_s`` not yet computed (``lax.top_k``, no sort) until the smallest bound left
exceeds the best exact value found by the relative margin ``MARGIN`` (far above float32
rounding of either quantity, both relative to ``lambda_max`` for a PSD matrix). Every
matrix left out then has ``lambda_max`` above the minimum, so the result is the full
``jnp.argmin`` of the exact top eigenvalues: ties to the lowest index, a NaN first. When
many matrices tie (identical Byzantine rows make identical submatrices) or every bound is
weak, later rounds run; in the worst case all of them, as many ``eigvalsh`` as the
unpruned search plus the bounds.

The exact eigenvalues come from :func:`nnmjax.robust.linalg.eigvalsh` (LAPACK in chunks
that never wait on XLA's CPU thread pool).

Only the index is returned, and it is computed on ``lax.stop_gradient`` of the matrices:
the arg-min is piecewise constant, and the ``lax.while_loop`` then needs no reverse-mode
derivative (``jax.grad`` through SMEA works).

Under ``jax.vmap``, in a program lowered for the CPU, the instances of more than ``CHUNK``
matrices run one after another (``jax.custom_batching.sequential_vmap``), each with its own
rounds: a batched ``while_loop`` runs every instance for as many rounds as the slowest one
needs, and the exact eigenvalues are computed in chunks either way
(:mod:`nnmjax.robust.linalg`). The index is the same.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nnmjax._platform import sequential_on_cpu
from nnmjax.robust import linalg

#: Exact top eigenvalues computed in the first round ...
CHUNK = 256
#: ... and at most in each later round (few rounds where many subsets nearly tie).
LARGE_CHUNK = 2048
#: Power iterations behind each lower bound.
POWER_ITERS = 16
#: Relative margin between a lower bound and the best exact value before a matrix is pruned.
MARGIN = 1e-3
#: Matrices per block of the power iterations on the CPU (:func:`_lower_bounds`).
BOUND_BLOCK = 256


def _key(v):
    """Order of the arg-min: NaN first (as ``jnp.argmin``), then by value."""
    return jnp.where(jnp.isnan(v), -jnp.inf, v)


def _lower_bounds(m):
    """Rayleigh quotients ``(C,)`` after :data:`POWER_ITERS` power iterations from the unit
    vector of each matrix's largest diagonal entry (whose quotient is at least
    ``lambda_max / k``). In a program lowered for the CPU, in blocks of :data:`BOUND_BLOCK`
    matrices (``lax.map``), each block in cache for all its iterations."""
    count = m.shape[0]
    if count <= BOUND_BLOCK:
        return _power_bounds(m)
    blocks = -(-count // BOUND_BLOCK)

    def blocked(m):
        pad = jnp.zeros((blocks * BOUND_BLOCK - count,) + m.shape[1:], m.dtype)
        grouped = jnp.concatenate([m, pad]).reshape((blocks, BOUND_BLOCK) + m.shape[1:])
        return jax.lax.map(_power_bounds, grouped).reshape(-1)[:count]

    return jax.lax.platform_dependent(m, cpu=blocked, default=_power_bounds)


def _power_bounds(m):
    """:func:`_lower_bounds` of ``m`` in one batch."""
    k = m.shape[-1]
    v = jax.nn.one_hot(jnp.argmax(jnp.diagonal(m, axis1=1, axis2=2), axis=1), k, dtype=m.dtype)

    def step(v, _):
        w = jnp.einsum("cij,cj->ci", m, v)
        norm = jnp.linalg.norm(w, axis=1, keepdims=True)
        return jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1.0), v), None

    v, _ = jax.lax.scan(step, v, None, length=POWER_ITERS)
    return jnp.einsum("ci,cij,cj->c", v, m, v) / jnp.sum(v * v, axis=1)


def argmin_top_eigenvalue(m, excluded):
    """``jnp.argmin`` over ``s`` of ``lambda_max(m[s])``, ``+inf`` where ``excluded[s]``.

    Args:
        m: ``(C, k, k)`` symmetric positive semi-definite matrices.
        excluded: ``(C,)`` booleans: matrices that count as ``+inf``.

    Returns:
        The index (int32 scalar), exactly as ``jnp.argmin(jnp.where(excluded, inf,
        eigvalsh(m)[:, -1]))``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from nnmjax.robust._spectral import argmin_top_eigenvalue
        >>> m = jnp.stack([jnp.diag(jnp.array([3.0, 1.0])), jnp.diag(jnp.array([2.0, 2.0])),
        ...                jnp.diag(jnp.array([0.5, 0.1]))])
        >>> int(argmin_top_eigenvalue(m, jnp.array([False, False, True])))
        1
    """
    m = jax.lax.stop_gradient(m)
    if m.shape[0] <= CHUNK:  # no while_loop: one batched search serves every instance
        return _argmin(m, excluded)
    return sequential_on_cpu(_argmin)(m, excluded)


def _argmin(m, excluded):
    """:func:`argmin_top_eigenvalue` of one instance (batched by ``vmap`` off the CPU)."""
    count = m.shape[0]

    def exact(idx):
        return _key(jnp.where(excluded[idx], jnp.inf, linalg.eigvalsh(m[idx])[:, -1]))

    if count <= CHUNK:
        return jnp.argmin(exact(jnp.arange(count))).astype(jnp.int32)
    # finite (excluded and overflowed matrices at the largest float), so that a computed
    # matrix (ranked -inf below) never ties with one left and every round takes new ones
    big = jnp.finfo(m.dtype).max
    bounds = jnp.where(excluded, big, jnp.minimum(_key(_lower_bounds(m)), big))

    def more(state):
        done, best, _ = state
        nxt = jnp.min(jnp.where(done, jnp.inf, bounds))
        return ~jnp.all(done) & (nxt <= best + MARGIN * jnp.abs(best))

    def chunk(size):
        def take(state):
            done, best, best_idx = state
            _, idx = jax.lax.top_k(jnp.where(done, -jnp.inf, -bounds), size)
            ok = ~done[idx]
            val = jnp.where(ok, exact(idx), jnp.inf)
            low = jnp.min(val)
            j = jnp.min(jnp.where(ok & (val == low), idx, count))
            better = (low < best) | ((low == best) & (j < best_idx))
            return (done.at[idx].set(True), jnp.where(better, low, best),
                    jnp.where(better, j, best_idx))
        return take

    state = chunk(CHUNK)((jnp.zeros((count,), bool), jnp.array(jnp.inf, m.dtype),
                          jnp.int32(count)))
    rest = count - CHUNK
    size = -(-rest // -(-rest // LARGE_CHUNK))  # equal rounds that end with the last matrix
    _, _, best_idx = jax.lax.while_loop(more, chunk(size), state)
    return best_idx

