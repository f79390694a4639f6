"""Rules that detect outlying rows and average the rest: DnC and SignGuard.

Both draw randomness (coordinate subsets), so both take a keyword-only ``key`` and are
listed in :data:`nnmjax.robust.rules.RANDOMIZED`. Rows whose norm is not finite (NaN,
+-Inf, or overflowing values) are removed before anything else and never enter a mean.
Neither rule has a proven robustness coefficient in the sense of Definition 2 of the
paper. ``nnmjax audit`` at ``n = 17`` (``docs/audit.md``) finds, for ``f = 1..8``, DnC
ratios of 0.26, 0.60, 3.11, 1.70, 6.82, 69.9, 14.9, 70.0, and unbounded SignGuard ratios
at every ``f``: next to ``n - f`` identical rows away from the origin, rows beside them
pass the norm and sign filters and move the average. Those of NNM + DnC equal NNM +
Multi-Krum's at every ``f`` (0.26 to 30.2); NNM + SignGuard is unbounded at every ``f``
too.

* :func:`dnc`: Divide-and-Conquer (Shejwalkar and Houmansadr, NDSS 2021, Algorithm 2):
  on random coordinate subsets, score each row by its squared projection on the top
  singular vector of the centred rows and remove the highest scores.
* :func:`signguard`: SignGuard (Xu et al., 2022): a norm filter around the median norm,
  mean-shift clustering of the rows' sign statistics, and the mean of the rows both keep,
  clipped to the median norm.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from nnmjax.robust import _gram, linalg
from nnmjax.robust._checks import as_matrix, check_f, check_int, check_positive, keeps_dtype

__all__ = ["dnc", "signguard", "mean_shift_labels", "estimate_bandwidth"]


def _masked_mean(x, weights):
    """``sum_i w_i x_i / sum_i w_i`` over rows with ``w_i > 0`` (zeros when none): rows of
    zero weight contribute exactly nothing, even non-finite ones."""
    total = jnp.sum(weights)
    c = jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), 0.0)
    return _gram.combine(c, x, far=weights <= 0)


@keeps_dtype
def dnc(x: Real[ArrayLike, "n d"], f: int, *, key: PRNGKeyArray, sub_dim: int = 10_000,
        num_iters: int = 5, filter_frac: float = 1.0) -> Float[Array, " d"]:
    """Divide-and-Conquer (Shejwalkar and Houmansadr, NDSS 2021, Algorithm 2).

    ``num_iters`` times: draw ``b = min(sub_dim, d)`` coordinates without replacement,
    centre the rows' sub-vectors on their mean ``mu``, take the top right singular vector
    ``v`` of the centred ``(n, b)`` matrix and score ``s_i = <x_i[idx] - mu, v>^2``; keep
    the ``n - floor(filter_frac f)`` rows of lowest score (ties to the lower index). The
    output is the mean of the rows kept in every iteration (zeros when none is). The
    scores come from the ``n x n`` Gram matrix of the centred sub-vectors:
    ``s_i = lambda_max u_i^2`` with ``(lambda_max, u)`` its top eigenpair. Defaults are
    those of Blades' ``DnC`` (fedlib).

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: number of Byzantine rows to tolerate; needs ``2f < n``.
        key: ``jax.random`` key for the coordinate subsets (keyword-only, required).
        sub_dim: coordinates per subset, ``>= 1``.
        num_iters: number of subsets, ``>= 1``.
        filter_frac: rows removed per subset, as a multiple of ``f`` (``>= 0``).

    Returns:
        The ``(d,)`` aggregate, in ``x``'s floating dtype (float32 for integer ``x``).

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array, ``f`` is not an
            integer with ``0 <= f`` and ``2f < n``, or an option is out of range.

    Examples:
        The far row has the largest score on every subset:

        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from nnmjax.robust import detection
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> print(np.round(np.asarray(detection.dnc(x, 1, key=jax.random.key(0))), 4))
        [1. 1. 1.]
    """
    x = as_matrix(x)
    n, d = x.shape
    f = check_f(f, n, rule="dnc")
    sub_dim = check_int(sub_dim, name="sub_dim", rule="dnc", low=1)
    num_iters = check_int(num_iters, name="num_iters", rule="dnc", low=1)
    filter_frac = check_positive(filter_frac, name="filter_frac", rule="dnc", allow_zero=True)
    remove = min(int(filter_frac * f), n - 1)
    b = min(sub_dim, d)
    far = jnp.isinf(_gram.row_norms(x))
    clean = jnp.where(far[:, None], 0.0, x)
    finite = (~far).astype(x.dtype)
    keep = ~far
    for sub in jax.random.split(key, num_iters):
        idx = jax.random.choice(sub, d, (b,), replace=False) if b < d else jnp.arange(d)
        s = clean[:, idx]
        mu = (finite @ s) / jnp.maximum(jnp.sum(finite), 1.0)
        c = jnp.where(far[:, None], 0.0, s - mu)
        lam, u = linalg.eigh(jnp.matmul(c, c.T, precision=jax.lax.Precision.HIGHEST))
        score = jnp.where(far, jnp.inf, lam[-1] * jnp.square(u[:, -1]))
        good = jnp.zeros((n,), bool).at[jnp.argsort(score, stable=True)[: n - remove]].set(True)
        keep = keep & good
    return _masked_mean(x, keep.astype(x.dtype))


def estimate_bandwidth(points: Real[ArrayLike, "n k"], quantile: float = 0.5, *,
                       valid: ArrayLike | None = None) -> Float[Array, ""]:
    """scikit-learn's ``estimate_bandwidth`` on all points: the mean over points of the
    distance to their ``max(1, floor(m quantile))``-th nearest point, the point itself
    counted first, ``m`` the number of points (scikit-learn subsamples 50 points past 50;
    this uses all). With ``valid`` (a boolean ``(n,)`` mask) only the valid points count.

    Examples:
        >>> import jax.numpy as jnp
        >>> from nnmjax.robust import detection
        >>> float(detection.estimate_bandwidth(jnp.array([[0.], [1.], [3.], [7.]])))
        2.0
    """
    points = jnp.asarray(points)
    n = points.shape[0]
    valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)
    m = jnp.sum(valid)
    k = jnp.maximum(1, jnp.floor(m * quantile).astype(jnp.int32))
    dist = jnp.sqrt(jnp.maximum(_sqdist(points), 0.0))
    dist = jnp.where(valid[None, :], dist, jnp.inf)
    kth = jnp.take_along_axis(jnp.sort(dist, axis=1), jnp.full((n, 1), k - 1), axis=1)[:, 0]
    return jnp.sum(jnp.where(valid, kth, 0.0)) / jnp.maximum(m, 1)


def _sqdist(p):
    """Squared Euclidean distances between the rows of a small ``(n, k)`` array."""
    return jnp.sum(jnp.square(p[:, None, :] - p[None, :, :]), axis=-1)


def mean_shift_labels(points: Real[ArrayLike, "n k"], bandwidth, *,
                      max_iter: int = 300) -> Array:
    """Flat-kernel mean-shift clustering of a few points (scikit-learn's ``MeanShift`` with
    ``cluster_all=False``, every point a seed): labels ``(n,)``, ``-1`` for a point farther
    than ``bandwidth`` from every centre.

    From each point, move to the mean of the points within ``bandwidth`` (up to a relative
    ``1e-5``, so that distances equal to it in exact arithmetic count) until the move is
    at most ``1e-3 bandwidth`` (or ``max_iter`` moves); rank the centres by the number of
    points within ``bandwidth`` (ties: the lexicographically larger centre first, as
    scikit-learn); keep a centre unless it lies
    within ``bandwidth`` of a centre kept before it; label each point by its nearest kept
    centre (the earlier on ties). Label ``j`` is the ``j``-th kept centre, so label 0 has the
    densest centre.

    Examples:
        >>> import jax.numpy as jnp
        >>> from nnmjax.robust import detection
        >>> p = jnp.array([[0.], [0.1], [0.2], [5.], [5.1], [20.]])
        >>> detection.mean_shift_labels(p, 0.5).tolist()
        [0, 0, 0, 1, 1, 2]
    """
    points = jnp.asarray(points, jnp.float32)
    n = points.shape[0]
    # "within bandwidth" up to a relative 1e-5: features are often fractions k/b, whose
    # distances equal the bandwidth exactly in exact arithmetic; rounding must not decide
    bw = jnp.asarray(bandwidth, points.dtype) * (1 + 1e-5)

    def within(centres):
        d2 = jnp.sum(jnp.square(centres[:, None, :] - points[None, :, :]), axis=-1)
        return (d2 <= bw * bw).astype(points.dtype)

    def shift(carry):
        centres, done, it = carry
        w = within(centres)
        count = jnp.sum(w, axis=1, keepdims=True)
        new = jnp.where(count > 0, (w @ points) / jnp.maximum(count, 1.0), centres)
        moved = jnp.sqrt(jnp.sum(jnp.square(new - centres), axis=1))
        new = jnp.where(done[:, None], centres, new)
        return new, done | (moved <= 1e-3 * bw) | (count[:, 0] == 0), it + 1

    centres, _, _ = jax.lax.while_loop(
        lambda c: (~jnp.all(c[1])) & (c[2] < max_iter), shift,
        (points, jnp.zeros((n,), bool), 0))
    intensity = jnp.sum(within(centres), axis=1)
    # scikit-learn's order: intensity, then the centre's coordinates, both descending
    order = jnp.lexsort(tuple(-centres[:, j] for j in reversed(range(centres.shape[1])))
                        + (-intensity,))
    ranked = centres[order]
    near = _sqdist(ranked) <= bw * bw

    def suppress(i, kept):
        shadowed = jnp.any(kept & near[i] & (jnp.arange(n) < i))
        return kept.at[i].set(~shadowed)

    kept = jax.lax.fori_loop(0, n, suppress, jnp.zeros((n,), bool))
    d2 = jnp.sum(jnp.square(points[:, None, :] - ranked[None, :, :]), axis=-1)
    d2 = jnp.where(kept[None, :], d2, jnp.inf)
    nearest = jnp.argmin(d2, axis=1)
    rank = jnp.cumsum(kept) - 1  # label of each kept centre
    return jnp.where(jnp.min(d2, axis=1) <= bw * bw, rank[nearest], -1)


@keeps_dtype
def signguard(x: Real[ArrayLike, "n d"], f: int = 0, *, key: PRNGKeyArray,
              lower: float = 0.1, upper: float = 3.0, fraction: float = 0.1,
              quantile: float = 0.5) -> Float[Array, " d"]:
    """SignGuard (Xu, Huang, Zhang and Zhang, 2022), as its authors' ``signguard_multiclass``.

    1. Norm filter: ``S1 = {i : lower M < ||x_i|| < upper M}``, ``M`` the median norm.
    2. Sign clustering: on a contiguous block of ``floor(fraction d)`` coordinates at a
       random offset, each row's fractions of positive, zero and negative entries, each
       divided by its maximum over the rows (``+ 1e-8``); :func:`mean_shift_labels` with
       the bandwidth of :func:`estimate_bandwidth` (``quantile``); ``S2`` the largest
       cluster (ties to the denser centre).
    3. Output: the mean over ``S1 ∩ S2`` of the rows clipped to norm ``M``,
       ``x_i min(1, M / ||x_i||)``; zeros when the intersection is empty.

    ``f`` is accepted for the common ``(x, f)`` signature and unused: the rule needs no
    bound on the Byzantine rows. Rows with a non-finite norm are removed (the authors set
    NaN entries to zero instead).

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: ignored (any non-negative integer with ``2f < n``).
        key: ``jax.random`` key for the block's offset (keyword-only, required).
        lower: the norm filter's lower factor, ``>= 0``.
        upper: the norm filter's upper factor, ``> lower``.
        fraction: the block's share of the coordinates, in ``(0, 1]``.
        quantile: the bandwidth's quantile, in ``(0, 1]``.

    Returns:
        The ``(d,)`` aggregate, in ``x``'s floating dtype (float32 for integer ``x``).

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array, ``f`` is invalid, or
            an option is out of range.

    Examples:
        The honest rows all have norm ``M = 3``; the last row's norm is above ``3 M``:

        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from nnmjax.robust import detection
        >>> x = jnp.array([[1, 2, 2], [2, 1, 2], [2, 2, 1], [2, 2, 1], [30, -30, 30]], jnp.float32)
        >>> print(np.round(np.asarray(detection.signguard(x, 1, key=jax.random.key(0))), 4))
        [1.75 1.75 1.5 ]
    """
    x = as_matrix(x)
    n, d = x.shape
    check_f(f, n, rule="signguard")
    check_positive(lower, name="lower", rule="signguard", allow_zero=True)
    if not upper > lower:
        raise ValueError(f"upper must be > lower for signguard; got lower={lower!r}, upper={upper!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1] for signguard; got fraction={fraction!r}")
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1] for signguard; got quantile={quantile!r}")
    norms = _gram.row_norms(x)
    far = jnp.isinf(norms)
    s = jnp.sort(norms)  # non-finite norms last
    med = s[n // 2] if n % 2 else 0.5 * s[n // 2 - 1] + 0.5 * s[n // 2]
    s1 = (norms > lower * med) & (norms < upper * med)
    width = max(1, int(fraction * d))
    start = jax.random.randint(key, (), 0, d - width + 1)
    block = jax.lax.dynamic_slice_in_dim(jnp.where(far[:, None], 0.0, x), start, width, axis=1)
    feats = jnp.stack([jnp.mean(block > 0, axis=1), jnp.mean(block == 0, axis=1),
                       jnp.mean(block < 0, axis=1)], axis=1)
    feats = feats / (jnp.max(jnp.where(far[:, None], 0.0, feats), axis=0) + 1e-8)
    feats = jnp.where(far[:, None], 1e9, feats)  # removed rows: a cluster of their own
    bandwidth = estimate_bandwidth(feats, quantile, valid=~far)
    labels = mean_shift_labels(feats, bandwidth)
    counts = jnp.sum((labels[:, None] == jnp.arange(n)[None, :]) & ~far[:, None], axis=0)
    s2 = labels == jnp.argmax(counts)
    chosen = s1 & s2 & ~far
    scale = jnp.minimum(1.0, med / jnp.where(norms > 0, norms, 1.0))
    weights = jnp.where(chosen, scale, 0.0)
    total = jnp.sum(chosen)
    c = jnp.where(total > 0, weights / jnp.maximum(total, 1), 0.0)
    return _gram.combine(c, x, far=~chosen)
