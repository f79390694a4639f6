"""Pairwise geometry of the worker rows from one Gram matrix.

Every distance-based rule (NNM, Krum, Multi-Krum, GM, MDA, MoNNA, CAF, SMEA,
centered clipping) needs only the ``n x n`` Gram matrix ``G = x' x'^T`` of the rows
centred on the coordinate-wise median of all rows (for float32 accuracy): squared distances are
``G_ii + G_jj - 2 G_ij`` and an output that is a combination
``c^T x`` of the rows is formed with one final ``(n,) @ (n, d)`` product. So
each rule reads ``x`` twice (Gram and combination), whatever its iterations.

Rows whose squared norm is not finite (NaN, Inf, or values so large that the
norm overflows, e.g. 1e38) are *far*: their distance to every other row is
``+inf``, their Gram entries are zeroed, and rules give them zero weight.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nnmjax.robust._shard import dsum

#: Up to this many rows, combinations are unrolled sums that fuse with their consumer.
UNROLL_MAX_N = 32
#: Target size (elements) of one column block of the Gram pass: it stays in cache.
BLOCK_ELEMENTS = 1 << 19


def block_columns(n: int, d: int) -> int:
    """Columns per block: the largest power of two at most ``BLOCK_ELEMENTS / n``, clipped to
    ``[1024, 16384]`` (measured best on CPU for n = 17, 100, 1000), at most ``d``."""
    width = 1 << max(10, min(14, (BLOCK_ELEMENTS // n).bit_length() - 1))
    return min(width, d)


def column_sum(fn, arrays, width: int):
    """``sum_k fn(*[a[..., block k] for a in arrays])`` over blocks of ``width`` columns.

    A ``fori_loop`` over the full blocks plus one static tail: one compiled block body,
    whatever ``d`` (an unrolled chain of slices was 2-5x slower on CPU and compiled in time
    linear in ``d``).
    """
    d = arrays[0].shape[-1]
    full = d // width

    def block(start, size):
        return fn(*[jax.lax.dynamic_slice_in_dim(a, start, size, axis=a.ndim - 1) for a in arrays])

    out = None
    if full:
        first = block(0, width)
        out = jax.lax.fori_loop(1, full, lambda k, acc: acc + block(k * width, width), first)
    if d % width:
        tail = block(full * width, d % width)
        out = tail if out is None else out + tail
    return out


def row_norms(x):
    """``||x_i||``, ``inf`` for rows with non-finite entries or an overflowing norm."""
    norm = jnp.sqrt(dsum(jnp.sum(jnp.square(x), axis=1)))
    return jnp.where(jnp.isfinite(norm), norm, jnp.inf)


def gram(x, centre=None):
    """``(x - centre)(x - centre)^T``, accumulated over column blocks (the centred copy of
    a block exists only in cache)."""
    def block(xb, *cb):
        c = xb - cb[0] if cb else xb
        return jnp.matmul(c, c.T, precision=jax.lax.Precision.HIGHEST)

    arrays = (x,) if centre is None else (x, centre)
    return dsum(column_sum(block, arrays, block_columns(*x.shape)))


def robust_centre(x):
    """The coordinate-wise median of all rows (sanitised: NaN and +-Inf sort to the extremes).

    Distances are translation invariant; centring first keeps ``G_ii + G_jj - 2 G_ij``
    accurate in float32 when all rows share a large common component. Every row takes part,
    so with fewer than ``n / 2`` bad rows, wherever they sit, each coordinate of the centre
    lies within the range of the good rows' values (a centre read from a few fixed rows
    could be moved anywhere by bad rows placed on exactly those rows).

    Its gradient is stopped: it only fixes the frame, and every rule built on the Gram
    matrix is translation equivariant, so the derivative through the centre is zero up to
    round-off (differentiating it anyway tripled the reverse pass of the Gram at
    ``(17, 176050)``: 53 ms against 18).
    """
    from nnmjax.robust import _order

    return jax.lax.stop_gradient(_order.median(x))


def _distances(g):
    sq = jnp.diagonal(g)
    far = ~jnp.isfinite(sq)
    pair_far = far[:, None] | far[None, :]
    g = jnp.where(pair_far, 0.0, g)
    sq = jnp.where(far, 0.0, sq)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * g, 0.0)
    d2 = jnp.where(pair_far | ~jnp.isfinite(d2), jnp.inf, d2)
    d2 = jnp.where(jnp.eye(g.shape[0], dtype=bool), 0.0, d2)
    return g, sq, far, d2


class Geometry:
    """Gram matrix, far-row mask and squared distances of the rows of ``x``.

    ``gram = x' x'^T`` with ``x' = x - centre`` (zeroed on far rows), ``sqnorm_i =
    ||x'_i||^2`` and ``sqdist_ij = ||x_i - x_j||^2`` (``inf`` to and from far rows), with
    ``centre`` from :func:`robust_centre` (one pass over ``x``; the centring itself happens
    chunk by chunk inside the Gram pass).
    """

    def __init__(self, x):
        self.x = x
        self.centre = robust_centre(x)
        self.gram, self.sqnorm, self.far, self.sqdist = _distances(gram(x, self.centre))

    def dist_to_combination(self, c):
        """Squared distances ``||c^T x - x_i||^2`` for coefficients ``c`` summing to 1
        (``inf`` for far rows)."""
        gc = self.gram @ c
        d2 = c @ gc - 2.0 * gc + self.sqnorm
        return jnp.where(self.far, jnp.inf, jnp.maximum(d2, 0.0))

    def inner(self, v):
        """``(x'_i . v', ||v'||^2)`` for a point ``v`` (``v' = v - centre``); one pass over ``x``,
        zero on far rows."""
        vc = v - self.centre
        far = self.far[:, None]

        def block(xb, cb, vb):
            xc = jnp.where(far, 0.0, xb - cb)
            return jnp.matmul(xc, vb, precision=jax.lax.Precision.HIGHEST)

        b = column_sum(block, (self.x, self.centre, vc), block_columns(*self.x.shape))
        return dsum(b), dsum(jnp.dot(vc, vc, precision=jax.lax.Precision.HIGHEST))


def combine(c, x, far=None):
    """``c @ x`` for coefficients ``c`` of shape ``(n,)`` or ``(m, n)``.

    Rows that may hold non-finite entries must contribute exactly zero, never
    ``0 * inf = nan``: with ``far`` (the rule's mask of such rows, e.g.
    :attr:`Geometry.far`) a vector ``c`` drops them row by row inside the fused sum, and a
    matrix ``c`` zeroes them first only when there are some; without ``far`` every
    non-finite entry is zeroed when there is one (a pass to check; the cleaned copy only
    then, via ``lax.cond``). A vector ``c`` over few rows is an unrolled sum that fuses with
    its consumer; otherwise one matmul.
    """
    c = c.astype(x.dtype)
    n = x.shape[0]
    unrolled = c.ndim == 1 and n <= UNROLL_MAX_N

    def product(x):
        if unrolled:
            return sum(c[j] * x[j] for j in range(n))
        return jnp.matmul(c, x, precision=jax.lax.Precision.HIGHEST)

    if far is None:
        bad, clean = ~jnp.all(jnp.isfinite(x)), lambda x: jnp.where(jnp.isfinite(x), x, 0.0)
    elif unrolled:
        return sum(jnp.where(far[j], 0.0, c[j] * x[j]) for j in range(n))
    else:
        bad, clean = jnp.any(far), lambda x: jnp.where(far[:, None], 0.0, x)
    return jax.lax.cond(bad, lambda x: product(clean(x)), product, x)


def nearest(sqdist, k: int):
    """Indices ``(n, k)`` of each row's ``k`` nearest rows, itself first, ties to lower index."""
    n = sqdist.shape[0]
    d = jnp.where(jnp.eye(n, dtype=bool), -1.0, sqdist)
    return jnp.argsort(d, axis=1, stable=True)[:, :k]


def subset_indices(n: int, k: int, *, rule: str, max_subsets: int):
    """All ``k``-subsets of ``range(n)`` as a static ``(C(n,k), k)`` int array.

    Raises ``ValueError`` when ``C(n, k)`` exceeds ``max_subsets``.
    """
    import itertools
    import math

    import numpy as np

    count = math.comb(n, k)
    if count > max_subsets:
        raise ValueError(
            f"{rule} enumerates all C(n, n-f) = C({n}, {k}) = {count:,} subsets, more than "
            f"max_subsets={max_subsets:,}; use fewer workers, a smaller f, or raise max_subsets")
    return jnp.asarray(np.array(list(itertools.combinations(range(n), k)), dtype=np.int32))
