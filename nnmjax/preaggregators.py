"""Pre-aggregation rules: pure functions ``(x: (n, d), f, ...) -> (m, d)``.

Composed before an aggregator, ``F(pre(x, f), f)``; see :func:`nnmjax.rule`.
None of them mutates its input (ByzFL's Clipping and ARC do).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nnmjax import _gram
from nnmjax._checks import (as_matrix, check_f, check_int, check_positive, keeps_dtype,
                             work_dtype)
from nnmjax._shard import dsum

__all__ = ["nnm", "mixing_matrix", "bucketing", "bucketing_matrix", "clipping", "arc",
           "PREAGGREGATORS", "bucket_size", "output_size"]


@keeps_dtype
def nnm(x, f: int):
    """Nearest Neighbor Mixing (paper Algorithm 2, eq. 1): each ``x_i`` becomes the average of
    its ``n - f`` nearest rows in Euclidean distance, itself included (ties to the lower
    index): ``y_i = (1/(n-f)) sum_{j=1}^{n-f} x_{i:j}``.

    If ``F`` is (f, kappa)-robust, ``F o NNM`` is (f, kappa')-robust with
    ``kappa' <= 8f/(n-f) (kappa + 1)`` (Lemma 1). Computed from the ``n x n`` Gram matrix
    and one ``(n, n) @ (n, d)`` mixing product: ``O(n^2 d)`` time, ``O(n d + n^2)`` memory
    (never an ``(n, n-f, d)`` gather). Rows at infinite distance (non-finite entries, or a
    squared norm that overflows) are nobody's neighbour and pass through unmixed, so the
    aggregator that follows sees them as the bad rows they are, wherever they sit.
    """
    x = as_matrix(x)
    n = x.shape[0]
    f = check_f(f, n, rule="nnm")
    geo = _gram.Geometry(x)
    mixed = _gram.combine(_mixing(geo.sqdist, f), x, far=geo.far)
    return jnp.where(geo.far[:, None], x, mixed)


def mixing_matrix(x, f: int):
    """The ``(n, n)`` NNM weights ``W`` with ``nnm(x, f) = W @ x``: ``W_ij = 1/(n-f)`` if ``x_j``
    is among the ``n - f`` nearest rows of ``x_i``."""
    x = as_matrix(x)
    return _mixing(_gram.Geometry(x.astype(work_dtype(x.dtype))).sqdist, f).astype(x.dtype)


def _mixing(sqdist, f: int):
    n = sqdist.shape[0]
    idx = _gram.nearest(sqdist, n - f)
    rows = jnp.arange(n)[:, None]
    return jnp.zeros((n, n), sqdist.dtype).at[rows, idx].set(1.0 / (n - f))


def bucket_size(n: int, f: int) -> int:
    """Karimireddy et al.'s default bucket size ``s = floor(n / (2f))`` (1 when ``f = 0``)."""
    return max(1, n // (2 * f)) if f > 0 else 1


@keeps_dtype
def bucketing(x, f: int, *, key=None, s: int | None = None):
    """Bucketing (Karimireddy et al., 2022; paper Appendix 10): shuffle the rows with a random
    permutation drawn from ``key``, then average consecutive groups of ``s`` rows
    (default ``s = floor(n / 2f)``); the last bucket holds the ``n mod s`` leftovers when
    ``s`` does not divide ``n``. Output ``ceil(n / s)`` rows, of which at most ``f`` are
    contaminated.
    """
    x = as_matrix(x)
    return _gram.combine(bucketing_matrix(x.shape[0], f, key=key, s=s, dtype=x.dtype), x)


def bucketing_matrix(n: int, f: int, *, key=None, s: int | None = None, dtype=jnp.float32):
    """The ``(ceil(n/s), n)`` weights ``W`` with ``bucketing(x, f, key=key) = W @ x``."""
    f = check_f(f, n, rule="bucketing")
    s = bucket_size(n, f) if s is None else check_int(s, name="s", rule="bucketing", low=1, high=n)
    if key is None:
        raise ValueError("bucketing is randomized: pass key=jax.random.key(...)")
    perm = jax.random.permutation(key, n)
    m = -(-n // s)
    bucket = jnp.arange(n) // s
    sizes = jnp.minimum(s, n - jnp.arange(m) * s).astype(dtype)
    weights = (bucket[None, :] == jnp.arange(m)[:, None]).astype(dtype) / sizes[:, None]
    return weights[:, jnp.argsort(perm)]


@keeps_dtype
def clipping(x, f: int = 0, *, c: float = 2.0):
    """Static clipping: ``x_i <- x_i * min(1, c / ||x_i||)``. Rows with non-finite norm become 0."""
    x = as_matrix(x)
    check_f(f, x.shape[0], rule="clipping", min_n=lambda f: f + 1)
    check_positive(c, name="c", rule="clipping")
    return _scale_rows(x, c)


def _row_norms(x):
    """``||x_i||``, ``inf`` for rows with non-finite entries or an overflowing norm."""
    norm = jnp.sqrt(dsum(jnp.sum(jnp.square(x), axis=1)))
    return jnp.where(jnp.isfinite(norm), norm, jnp.inf)


def _scale_rows(x, threshold):
    norm = _row_norms(x)
    bad = jnp.isinf(norm)
    scale = jnp.minimum(1.0, threshold / jnp.where(norm > 0, norm, 1.0))
    return jnp.where(bad[:, None], 0.0, x * jnp.where(bad, 0.0, scale)[:, None])


@keeps_dtype
def arc(x, f: int):
    """Adaptive robust clipping (Allouah et al., 2024): clip the ``k = floor(2 f (n - f) / n)``
    largest-norm rows to the norm of the largest unclipped row (ByzFL's ARC). Rows with
    non-finite norm count as the largest and are set to 0 (they cannot be rescaled)."""
    x = as_matrix(x)
    n = x.shape[0]
    f = check_f(f, n, rule="arc", min_n=lambda f: f)
    k = (2 * f * (n - f)) // n
    if k == 0:
        return x
    threshold = jnp.sort(_row_norms(x))[n - k - 1]
    return _scale_rows(x, threshold)


def output_size(name: str, n: int, f: int, **options) -> int:
    """Number of rows a pre-aggregator returns for ``n`` inputs."""
    if name == "bucketing":
        s = options.get("s") or bucket_size(n, f)
        return -(-n // s)
    return n


PREAGGREGATORS = {"nnm": nnm, "bucketing": bucketing, "clipping": clipping, "arc": arc}
