"""Pre-aggregation rules: pure functions ``(x: (n, d), f, ...) -> (m, d)``.

Composed before an aggregator, ``F(pre(x, f), f)``; see :func:`nnmjax.rule`.
None of them mutates its input (ByzFL's Clipping and ARC do).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from nnmjax.robust import _gram
from nnmjax.robust._checks import (as_matrix, check_f, check_int, check_positive, keeps_dtype,
                             work_dtype)

__all__ = ["nnm", "mixing_matrix", "bucketing", "bucketing_matrix", "clipping", "arc",
           "PREAGGREGATORS", "bucket_size", "output_size"]


@keeps_dtype
def nnm(x: Real[ArrayLike, "n d"], f: int) -> Float[Array, "n d"]:
    """Nearest Neighbor Mixing (paper Algorithm 2, eq. 1): mix each row with its neighbours.

    Each ``x_i`` becomes the average of its ``n - f`` nearest rows in Euclidean distance,
    itself included (ties to the lower index): ``y_i = (1/(n-f)) sum_{j=1}^{n-f} x_{i:j}``,
    with ``x_{i:j}`` the ``j``-th nearest row to ``x_i``.

    If ``F`` is (f, kappa)-robust, ``F o NNM`` is (f, kappa')-robust with
    ``kappa' <= 8f/(n-f) (kappa + 1)`` (Lemma 1). Computed from the ``n x n`` Gram matrix
    and one ``(n, n) @ (n, d)`` mixing product: ``O(n^2 d)`` time, ``O(n d + n^2)`` memory
    (never an ``(n, n-f, d)`` gather). Rows at infinite distance (non-finite entries, or a
    squared norm that overflows) are nobody's neighbour and pass through unmixed, so the
    aggregator that follows sees them as the bad rows they are, wherever they sit.

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: number of Byzantine rows; needs ``2f < n``.

    Returns:
        The ``(n, d)`` mixed rows, in ``x``'s floating dtype.

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array, or ``f`` is not an
            integer with ``0 <= f`` and ``2f < n``.

    Examples:
        The four honest rows become their mean; the Byzantine row is pulled halfway in:

        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from nnmjax import preaggregators
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> print(np.round(np.asarray(preaggregators.nnm(x, 1)), 4))
        [[ 1.    1.    1.  ]
         [ 1.    1.    1.  ]
         [ 1.    1.    1.  ]
         [ 1.    1.    1.  ]
         [ 2.75 -1.75  3.25]]
    """
    x = as_matrix(x)
    n = x.shape[0]
    f = check_f(f, n, rule="nnm")
    geo = _gram.Geometry(x)
    mixed = _gram.combine(_mixing(geo.sqdist, f), x, far=geo.far)
    return jnp.where(geo.far[:, None], x, mixed)


def mixing_matrix(x: Real[ArrayLike, "n d"], f: int) -> Float[Array, "n n"]:
    """The ``(n, n)`` NNM weights ``W`` with ``nnm(x, f) = W @ x`` (for finite rows).

    ``W_ij = 1/(n-f)`` if ``x_j`` is among the ``n - f`` nearest rows of ``x_i`` (itself
    included, ties to the lower index), else 0.

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: number of Byzantine rows, ``0 <= f < n``.

    Returns:
        The ``(n, n)`` row-stochastic weights, in ``x``'s floating dtype.

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from nnmjax import preaggregators
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> print(np.asarray(preaggregators.mixing_matrix(x, 1)) * 4)
        [[1. 1. 1. 1. 0.]
         [1. 1. 1. 1. 0.]
         [1. 1. 1. 1. 0.]
         [1. 1. 1. 1. 0.]
         [1. 1. 0. 1. 1.]]
    """
    x = as_matrix(x)
    return _mixing(_gram.Geometry(x.astype(work_dtype(x.dtype))).sqdist, f).astype(x.dtype)


def _mixing(sqdist, f: int):
    """NNM weights from squared distances: ``1/(n-f)`` on each row's ``n - f`` nearest rows."""
    n = sqdist.shape[0]
    idx = _gram.nearest(sqdist, n - f)
    rows = jnp.arange(n)[:, None]
    return jnp.zeros((n, n), sqdist.dtype).at[rows, idx].set(1.0 / (n - f))


def bucket_size(n: int, f: int) -> int:
    """Karimireddy et al.'s default bucket size ``s = floor(n / (2f))`` (1 when ``f = 0``).

    Args:
        n: number of input rows.
        f: number of Byzantine rows.

    Returns:
        The bucket size, at least 1.

    Examples:
        >>> from nnmjax.robust.preaggregators import bucket_size
        >>> bucket_size(17, 4), bucket_size(5, 1), bucket_size(5, 0)
        (2, 2, 1)
    """
    return max(1, n // (2 * f)) if f > 0 else 1


@keeps_dtype
def bucketing(x: Real[ArrayLike, "n d"], f: int, *, key: PRNGKeyArray,
              s: int | None = None) -> Float[Array, "m d"]:
    """Bucketing (Karimireddy et al., 2022; paper Appendix 10): average random buckets of rows.

    Shuffle the rows with a random permutation drawn from ``key``, then average consecutive
    groups of ``s`` rows (default ``s = floor(n / 2f)``); the last bucket holds the
    ``n mod s`` leftovers when ``s`` does not divide ``n``. Output ``ceil(n / s)`` rows, of
    which at most ``f`` are contaminated.

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: number of Byzantine rows; needs ``2f < n``.
        key: ``jax.random`` key of the permutation (required).
        s: bucket size in ``[1, n]`` (default :func:`bucket_size`).

    Returns:
        The ``(ceil(n / s), d)`` bucket averages, in ``x``'s floating dtype.

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array, or ``f`` is not an
            integer with ``0 <= f`` and ``2f < n``.
        ValueError: if ``key`` is missing or ``s`` is not an integer in ``[1, n]``.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from nnmjax import preaggregators
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> y = preaggregators.bucketing(x, 1, key=jax.random.key(0))   # s = 2: 3 buckets
        >>> y.shape
        (3, 3)
        >>> print(np.round(np.asarray(jnp.sum(y * jnp.array([2., 2., 1.])[:, None], 0)), 4))
        [13. -5. 13.]
    """
    x = as_matrix(x)
    return _gram.combine(bucketing_matrix(x.shape[0], f, key=key, s=s, dtype=x.dtype), x)


def bucketing_matrix(n: int, f: int, *, key: PRNGKeyArray, s: int | None = None,
                     dtype=jnp.float32) -> Float[Array, "m n"]:
    """The ``(ceil(n/s), n)`` weights ``W`` with ``bucketing(x, f, key=key, s=s) = W @ x``.

    Args:
        n: number of input rows.
        f: number of Byzantine rows; needs ``2f < n``.
        key: ``jax.random`` key of the permutation (required).
        s: bucket size in ``[1, n]`` (default :func:`bucket_size`).
        dtype: dtype of the weights.

    Returns:
        The ``(ceil(n / s), n)`` weights: row ``b`` is ``1/|bucket b|`` on the rows of bucket ``b``.

    Raises:
        ValueError: if ``f`` is invalid for ``n``, ``s`` is not an integer in ``[1, n]`` or
            ``key`` is missing.

    Examples:
        >>> import jax, numpy as np
        >>> from nnmjax.robust.preaggregators import bucketing_matrix
        >>> w = np.asarray(bucketing_matrix(5, 1, key=jax.random.key(0)))
        >>> w.shape, w.sum(axis=1).tolist(), (w > 0).sum(axis=0).tolist()
        ((3, 5), [1.0, 1.0, 1.0], [1, 1, 1, 1, 1])
    """
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
def clipping(x: Real[ArrayLike, "n d"], f: int = 0, *, c: float = 2.0) -> Float[Array, "n d"]:
    """Static clipping: ``x_i <- x_i * min(1, c / ||x_i||)``.

    Rows with non-finite norm become 0.

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: number of Byzantine rows, ``0 <= f < n`` (validated only).
        c: clipping threshold on the row norms, ``> 0``.

    Returns:
        The ``(n, d)`` clipped rows, in ``x``'s floating dtype.

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array, ``f`` is not an
            integer in ``[0, n - 1]`` or ``c <= 0``.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from nnmjax import preaggregators
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> y = preaggregators.clipping(x, 1, c=2.0)
        >>> print(np.round(np.asarray(jnp.linalg.norm(y, axis=1)), 4))
        [2.     1.4142 2.     1.7321 2.    ]
    """
    x = as_matrix(x)
    check_f(f, x.shape[0], rule="clipping", min_n=lambda f: f + 1)
    check_positive(c, name="c", rule="clipping")
    return _scale_rows(x, c)


def _scale_rows(x, threshold):
    """Clip every row to norm ``threshold``; rows with non-finite norm become 0."""
    norm = _gram.row_norms(x)
    bad = jnp.isinf(norm)
    scale = jnp.minimum(1.0, threshold / jnp.where(norm > 0, norm, 1.0))
    return jnp.where(bad[:, None], 0.0, x * jnp.where(bad, 0.0, scale)[:, None])


@keeps_dtype
def arc(x: Real[ArrayLike, "n d"], f: int) -> Float[Array, "n d"]:
    """Adaptive robust clipping (Allouah et al., 2024): clip the ``floor(2f (n-f) / n)`` largest rows.

    The ``k`` largest-norm rows are clipped to the norm of the largest unclipped row (ByzFL's
    ARC). Rows with non-finite norm count as the largest and are set to 0 (they cannot be
    rescaled).

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: number of Byzantine rows, ``0 <= f <= n``.

    Returns:
        The ``(n, d)`` clipped rows, in ``x``'s floating dtype (``x`` itself when ``k = 0``).

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array or ``f`` is not an
            integer in ``[0, n]``.

    Examples:
        ``k = floor(2 * 1 * 4 / 5) = 1``: the Byzantine row is clipped to the norm
        ``sqrt(8)`` of ``x[2]``:

        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from nnmjax import preaggregators
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> print(np.round(np.asarray(preaggregators.arc(x, 1)), 4))
        [[ 0.     1.     2.   ]
         [ 1.     0.     1.   ]
         [ 2.     2.     0.   ]
         [ 1.     1.     1.   ]
         [ 1.633 -1.633  1.633]]
    """
    x = as_matrix(x)
    n = x.shape[0]
    f = check_f(f, n, rule="arc", min_n=lambda f: f)
    k = (2 * f * (n - f)) // n
    if k == 0:
        return x
    threshold = jnp.sort(_gram.row_norms(x))[n - k - 1]
    return _scale_rows(x, threshold)


def output_size(name: str, n: int, f: int, **options) -> int:
    """Number of rows a pre-aggregator returns for ``n`` inputs.

    Args:
        name: pre-aggregator name (a key of ``PREAGGREGATORS``).
        n: number of input rows.
        f: number of Byzantine rows.
        **options: the pre-aggregator's options (``s`` for bucketing).

    Returns:
        ``ceil(n / s)`` for ``"bucketing"``, ``n`` for the others.

    Examples:
        >>> from nnmjax.robust.preaggregators import output_size
        >>> output_size("nnm", 5, 1), output_size("bucketing", 5, 1)
        (5, 3)
        >>> output_size("bucketing", 5, 1, s=5)
        1
    """
    if name == "bucketing":
        s = options.get("s") or bucket_size(n, f)
        return -(-n // s)
    return n


#: Pre-aggregator name -> function ``(x: (n, d), f, **options) -> (m, d)``.
PREAGGREGATORS = {"nnm": nnm, "bucketing": bucketing, "clipping": clipping, "arc": arc}
