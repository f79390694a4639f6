"""Order statistics along the worker axis, written to fuse on every backend.

XLA's ``jnp.sort`` along the worker axis of an ``(n, d)`` array is slow on CPU
(~0.9 s at (17, 1e6), docs/design.md). For small ``n`` we instead apply Batcher's
odd-even merge sorting network, row against row: every compare-exchange is a
``minimum``/``maximum`` of two ``(d,)`` rows, so the whole network (and the
reduction that follows) fuses into a single pass over ``x``. XLA prunes the
comparators an output does not need (a median keeps only a selection network).
XLA's CPU fusion degrades past ~500 comparators (n ~ 64), so for
``64 < n <= NETWORK_MAX_N`` the network runs in stages of ``STAGE`` comparators
separated by ``optimization_barrier`` (one materialisation per stage; measured
~30-50 ms at (100, 1e5) against ~900 ms for ``jnp.sort``). Past
``NETWORK_MAX_N`` rows we sort integer keys along the minor axis of the transposed matrix
(:func:`sort_columns`): XLA's CPU sort compares integers several times faster than floats
and runs best along contiguous rows (0.43 s at (1000, 1e4) against 1.9 s for ``jnp.sort``
of the floats along axis 0; ``python benchmarks/aggregators.py``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

NETWORK_MAX_N = 128
FUSED_MAX_N = 64
STAGE = 96


@functools.lru_cache(maxsize=None)
def batcher_pairs(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators ``(a, b)``, ``a < b``, of Batcher's odd-even merge sort on ``n`` wires.

    Built for the next power of two and pruned of wires ``>= n`` (equivalent
    to padding with ``+inf``, which never moves).
    """
    p2 = 1
    while p2 < n:
        p2 *= 2
    pairs = []
    p = 1
    while p < p2:
        k = p
        while k >= 1:
            for j in range(k % p, p2 - k, 2 * k):
                for i in range(min(k, p2 - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple((a, b) for a, b in pairs if b < n)


def sanitize(x):
    """Map NaN to ``+max`` and ``+-inf`` to ``+-max`` of the dtype.

    A non-finite Byzantine entry then sorts to an extreme, where trimming and
    medians discard it; honest (finite) entries are unchanged.
    """
    big = jnp.finfo(x.dtype).max
    return jnp.nan_to_num(x, nan=big, posinf=big, neginf=-big)


def sorted_rows(x):
    """The rows of ``x`` sorted coordinate-wise: ``s[0] <= ... <= s[n-1]``, after
    :func:`sanitize` (NaN to the top, infinities to the dtype's extremes).

    Returns a list of ``(d,)`` rows (network path, ``n <= NETWORK_MAX_N``; each row is
    sanitised as it enters the network, so that fuses too) or an ``(n, d)`` array (sort
    path); both index the same way. Differentiable: the network's derivative is the
    sorting permutation, taken from one ``argsort`` (differentiating the network itself
    compiles for seconds: its transposed min/max chains do not fuse).
    """
    n = x.shape[0]
    if n > NETWORK_MAX_N:
        return sort_columns(x)
    return list(_network(x))


def _ordered_key(x):
    """The signed integers of ``x``'s width whose order is the order of the (non-NaN) floats
    ``x``: the bit pattern, with the magnitude bits of negative values inverted."""
    itype = jnp.dtype(f"int{jnp.finfo(x.dtype).bits}")
    i = jax.lax.bitcast_convert_type(x, itype)
    return jnp.where(i < 0, i ^ jnp.iinfo(itype).max, i)


def _from_key(k, dtype):
    """The inverse of :func:`_ordered_key`."""
    return jax.lax.bitcast_convert_type(jnp.where(k < 0, k ^ jnp.iinfo(k.dtype).max, k), dtype)


@jax.custom_jvp
def sort_columns(x):
    """``jnp.sort(sanitize(x), axis=0)``, computed as a sort of the integer keys of
    ``x.T`` along its rows (exact: the keys map back to the same floats; ``-0.0`` sorts
    before ``0.0``). Differentiable: the derivative is the sorting permutation."""
    keys = jnp.sort(_ordered_key(sanitize(x)).T, axis=1)
    return _from_key(keys, x.dtype).T


@sort_columns.defjvp
def _sort_columns_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return sort_columns(x), _sorted_tangent(x, dx)


def _sorted_tangent(x, dx):
    """The tangent of a coordinate-wise sort: ``dx`` permuted like ``x`` sorts (one stable
    ``argsort``), zero at non-finite entries."""
    order = jnp.argsort(sanitize(x), axis=0, stable=True)
    return jnp.take_along_axis(jnp.where(jnp.isfinite(x), dx, 0.0), order, axis=0)


@jax.custom_jvp
def _network(x):
    n = x.shape[0]
    rows = [sanitize(x[i]) for i in range(n)]
    pairs = batcher_pairs(n)
    stage = max(1, len(pairs)) if n <= FUSED_MAX_N else STAGE
    for start in range(0, len(pairs), stage):
        if start:
            rows = list(jax.lax.optimization_barrier(tuple(rows)))
        for a, b in pairs[start:start + stage]:
            rows[a], rows[b] = jnp.minimum(rows[a], rows[b]), jnp.maximum(rows[a], rows[b])
    return tuple(rows)


@_network.defjvp
def _network_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    ds = _sorted_tangent(x, dx)
    return _network(x), tuple(ds[i] for i in range(x.shape[0]))


def sum_rows(rows, start: int, stop: int):
    """``sum(rows[start:stop])`` for a list of rows (one fused sum) or an array (a 0/1 weight
    vector times ``rows``: XLA's CPU reduction over the leading axis took 0.6-0.7 s at
    ``(1000, 1e5)`` and ``(100, 1e6)`` against 12-14 ms for the product; rows outside
    ``[start, stop)`` of an array must be finite, as sorted, sanitised rows are)."""
    if isinstance(rows, list):
        return functools.reduce(jnp.add, rows[start:stop])
    i = jnp.arange(rows.shape[0])
    w = ((i >= start) & (i < stop)).astype(rows.dtype)
    return jnp.matmul(w, rows, precision=jax.lax.Precision.HIGHEST)
