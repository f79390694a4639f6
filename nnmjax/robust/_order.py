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
``NETWORK_MAX_N`` rows we sort integer keys whose order is the floats' order
(:func:`sort_columns`). On accelerators that is XLA's sort; on the CPU XLA's sort
costs about 40 ns per element (0.56 s at (1000, 1e4)), so the sort runs in NumPy's
vectorised sort on the host, called from the compiled program, blocks of columns on a
thread per core (:func:`host_sort`; CWTM and CWMed sum their window on the host,
:func:`window_sum`: 24 ms at (1000, 1e4), ``nnmjax bench --cases 1000:1e4:200``). The
derivative of every sort (network or not) is the sorting permutation, from each entry's
rank in a stable sort (:func:`ranks`): pairwise comparisons in one fused pass for small
``n``, else the same host path on CPU (XLA's stable argsort took 0.32 s at (17, 176050)).
"""
from __future__ import annotations

import concurrent.futures
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

try:
    from jax.experimental.buffer_callback import buffer_callback as _buffer_callback
except ImportError:  # jax without it: host_sort copies through pure_callback
    _buffer_callback = None

NETWORK_MAX_N = 128
FUSED_MAX_N = 64
STAGE = 96
#: Whether sorts and ranks lowered for the CPU run in NumPy (:func:`host_sort`); set it to
#: ``False`` to keep every sort inside the compiled program (e.g. to export it).
HOST_SORT = True
#: Columns per task of :func:`host_sort`.
HOST_BLOCK = 256
#: Largest ``n`` whose :func:`ranks` come from pairwise comparisons (``n^2`` per coordinate).
RANKS_MAX_N = 32


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
    sorting permutation, from each entry's rank (:func:`ranks`; differentiating the network itself
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
    """``jnp.sort(sanitize(x), axis=0)``, computed as a sort of the integer keys of ``x``
    (exact: the keys map back to the same floats; ``-0.0`` sorts before ``0.0``): NumPy's
    sort in a program lowered for the CPU (:func:`host_sort`), else XLA's along the rows of
    the keys' transpose. Differentiable: the derivative is the sorting permutation."""
    keys = _on_host_or_device(host_sort, lambda k: jnp.sort(k.T, axis=1).T,
                              _ordered_key(sanitize(x)))
    return _from_key(keys, x.dtype)


@sort_columns.defjvp
def _sort_columns_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return sort_columns(x), _sorted_tangent(x, dx)


def _sorted_tangent(x, dx):
    """The tangent of a coordinate-wise sort: ``dx`` placed at each entry's rank in its
    column's stable sort of the sanitised values (:func:`ranks`), zero at non-finite
    entries. Written as a scatter to the ranks, so that reverse mode (its transpose) is a
    gather: 3-5 ms at (17, 176050) where the transpose of a gather, a scatter, takes 15."""
    r = ranks(x)
    cols = jnp.arange(x.shape[1])[None, :]
    return jnp.zeros_like(dx).at[r, cols].add(jnp.where(jnp.isfinite(x), dx, 0.0),
                                              unique_indices=True)


def ranks(x):
    """``r[i, k]``, the position of ``x[i, k]`` in the stable sort of column ``k`` of
    :func:`sanitize` (``x``): ``#{j : v_jk < v_ik} + #{j < i : v_jk = v_ik}``.

    Pairwise comparisons in one fused pass for ``n <= RANKS_MAX_N`` (each row against all
    rows at once: ``n`` operations over ``(n, d)``, which trace and compile faster than
    ``n^2`` operations of one row against another); past it NumPy's stable
    argsort of the integer keys lowered for the CPU (:func:`host_sort`, which also puts
    ``-0.0`` before ``0.0``), XLA's elsewhere.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> print(np.asarray(ranks(jnp.array([[3.0, 1.0], [1.0, 1.0], [2.0, 0.0]]))).tolist())
        [[2, 1], [0, 2], [1, 0]]
    """
    n = x.shape[0]
    if n <= RANKS_MAX_N:
        v = sanitize(x)
        i = jnp.arange(n).reshape((n,) + (1,) * (x.ndim - 1))
        r = jnp.zeros(x.shape, jnp.int32)
        for j in range(n):  # row j against every row: n ops over (n, d), one fusion
            r = r + ((v[j] < v) | ((v[j] == v) & (j < i))).astype(jnp.int32)
        return r
    return _on_host_or_device(
        lambda v: host_sort(_ordered_key(v), ranks=True),
        lambda v: jnp.argsort(jnp.argsort(v, axis=0, stable=True), axis=0).astype(jnp.int32),
        sanitize(x))


def _on_host_or_device(host, device, *args):
    """``host(*args)`` (NumPy, called from the program) where the program is lowered for
    the CPU, :data:`HOST_SORT` is set and there is one process; else ``device(*args)``. The
    platform of the lowering decides (``lax.platform_dependent``), not the default backend
    at trace time."""
    if not (HOST_SORT and jax.process_count() == 1):
        return device(*args)
    return jax.lax.platform_dependent(*args, cpu=host, default=device)


def host_sort(keys, *, ranks: bool = False):
    """``keys`` ``(n, d)`` (integers) sorted along axis 0 by NumPy, or with ``ranks`` each
    entry's position in its column's stable sort (int32), called from the compiled program
    (jit, vmap and ``shard_map`` apply; a vmapped batch is one call).

    The host sorts blocks of :data:`HOST_BLOCK` columns, each transposed to contiguous
    rows, on a thread per core (NumPy's sort releases the GIL; :func:`_host_call`).

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> print(np.asarray(host_sort(jnp.array([[3, 1], [1, 2], [2, 0]]))).tolist())
        [[1, 0], [2, 1], [3, 2]]
    """
    result = jax.ShapeDtypeStruct(keys.shape, jnp.int32 if ranks else keys.dtype)
    return _host_call(functools.partial(_sort_blocks, ranks=ranks), result, keys)


def _host_call(task, result, operand):
    """``task(operand, out)`` (NumPy arrays, ``out`` filled in place) as one operation of
    the compiled program, writing straight into XLA's output buffer
    (``jax.experimental.buffer_callback``), or through :func:`jax.pure_callback`, which
    copies both ways, where that is missing. Under ``vmap`` both get a leading batch
    axis."""
    if _buffer_callback is None:
        def copied(a):
            a = np.asarray(a)
            out = np.empty(a.shape[:a.ndim - operand.ndim] + result.shape, result.dtype)
            task(a, out)
            return out

        return jax.pure_callback(copied, result, operand, vmap_method="expand_dims")

    def in_place(ctx, out, a):
        task(np.asarray(a), np.asarray(out))

    return _buffer_callback(in_place, result, vmap_method="expand_dims")(operand)


@functools.lru_cache(maxsize=1)
def _pool():
    return concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1)


def _sort_blocks(keys, out, *, ranks: bool):
    """The host side of :func:`host_sort`: ``(..., n, d)`` NumPy keys sorted (or ranked)
    along axis ``-2`` into ``out``."""
    n, d = keys.shape[-2:]
    flat, flat_out = keys.reshape(-1, n, d), out.reshape(-1, n, d)
    positions = np.broadcast_to(np.arange(n, dtype=np.int32), (HOST_BLOCK, n))

    def one(task):
        b, j = task
        rows = np.ascontiguousarray(flat[b, :, j:j + HOST_BLOCK].T)
        if ranks:
            done = np.empty(rows.shape, np.int32)
            np.put_along_axis(done, np.argsort(rows, axis=1, kind="stable"),
                              positions[:rows.shape[0]], axis=1)
        else:
            done = np.sort(rows, axis=1)
        flat_out[b, :, j:j + HOST_BLOCK] = done.T

    _run_blocks(one, flat.shape[0], d)


def _run_blocks(one, batch: int, d: int):
    """``one((b, j))`` for every batch index ``b`` and block start ``j``, on the pool."""
    list(_pool().map(one, [(b, j) for b in range(batch) for j in range(0, d, HOST_BLOCK)]))


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


def window_sum(x, start: int, stop: int, *, scale: float = 1.0):
    """``sum_{start <= r < stop} scale * s[r]`` per coordinate, ``s`` the rows of ``x``
    sorted coordinate-wise after :func:`sanitize` (CWTM's window, CWMed's middle).

    The sorting network and :func:`sum_rows` for ``n <= NETWORK_MAX_N``; past it on the CPU
    backend the host sorts each block of columns and sums its window while the block is in
    cache (:func:`host_window_sum`), else :func:`sort_columns` and :func:`sum_rows`.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> print(np.asarray(window_sum(jnp.array([[3.0], [1.0], [9.0], [2.0]]), 1, 3)))
        [5.]
    """
    if x.shape[0] <= NETWORK_MAX_N:
        return sum_rows([r if scale == 1.0 else scale * r for r in sorted_rows(x)], start, stop)
    return _on_host_or_device(lambda v: host_window_sum(v, start, stop, scale),
                              lambda v: sum_rows(scale * sort_columns(v), start, stop), x)


def median(x):
    """The coordinate-wise median of the rows of ``x`` after :func:`sanitize`: the middle
    row of the sorted rows, or the mean of the two middle ones for even ``n`` (halves
    added, so the dtype's extremes do not overflow).

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> print(np.asarray(median(jnp.array([[0.0], [1.0], [5.0], [9.0]]))))
        [3.]
    """
    n = x.shape[0]
    if n % 2:
        return window_sum(x, n // 2, n // 2 + 1)
    return window_sum(x, n // 2 - 1, n // 2 + 1, scale=0.5)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def host_window_sum(x, start: int, stop: int, scale: float):
    """:func:`window_sum` computed by NumPy on the host, blocks of :data:`HOST_BLOCK`
    columns on a thread per core (sanitise, sort, sum the window). Differentiable: the
    derivative sums the window of the sorting permutation's tangent."""
    result = jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
    task = functools.partial(_window_blocks, start=start, stop=stop, scale=scale)
    return _host_call(task, result, x)


@host_window_sum.defjvp
def _host_window_sum_jvp(start, stop, scale, primals, tangents):
    (x,), (dx,) = primals, tangents
    return (host_window_sum(x, start, stop, scale),
            scale * sum_rows(_sorted_tangent(x, dx), start, stop))


def _window_blocks(x, out, *, start, stop, scale):
    """The host side of :func:`host_window_sum` on ``(..., n, d)`` NumPy floats."""
    big = np.finfo(x.dtype).max
    n, d = x.shape[-2:]
    flat, flat_out = x.reshape(-1, n, d), out.reshape(-1, d)

    def one(task):
        b, j = task
        rows = np.ascontiguousarray(flat[b, :, j:j + HOST_BLOCK].T)
        np.nan_to_num(rows, copy=False, nan=big, posinf=big, neginf=-big)
        rows.sort(axis=1)
        window = rows[:, start:stop] if scale == 1.0 else scale * rows[:, start:stop]
        with np.errstate(over="ignore", invalid="ignore"):  # sums of sanitised extremes
            flat_out[b, j:j + HOST_BLOCK] = window.sum(axis=1)

    _run_blocks(one, flat.shape[0], d)


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
