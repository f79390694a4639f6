"""Robust aggregation rules: pure functions ``(x: (n, d), f) -> (d,)``.

Every rule validates its arguments before tracing (``ValueError`` naming the
argument), is ``jax.jit``- and ``jax.vmap``-able, never mutates its input and,
with at most ``f`` rows holding NaN, +-Inf or huge values, returns a finite
vector (non-finite entries are treated as extreme values by the
coordinate-wise rules, non-finite rows as infinitely far by the distance
rules). The robustness coefficients quoted below are those of Definition 2
of Allouah et al., "Fixing by Mixing" (AISTATS 2023):
``||F(x) - mean_S||^2 <= kappa / |S| * sum_{i in S} ||x_i - mean_S||^2``
for every ``S`` of size ``n - f``.

Cost (``n`` rows, ``d`` coordinates, float32; no rule forms an ``n x n x d`` or
``n x (n - f) x d`` intermediate):

============================  ==========================================  =====================
rule                          time                                        memory beyond ``x``
============================  ==========================================  =====================
mean                          one pass                                    ``O(d)``
cwmed, cwtm, meamed           ``n <= 64``: one fused pass through a       ``O(d)``
                              sorting network (module ``_order``),
                              ``O(n log^2 n)`` min/max per coordinate;
                              ``n <= 128``: the network in stages;        ``O(n d)``
                              ``n > 128``: on CPU, NumPy's sort of        ``O(n d)``
                              blocks of columns on the host (CWTM and
                              CWMed sum their window there,
                              ``_order.window_sum``); else XLA's sort
                              of integer keys (``_order.sort_columns``)
krum, multikrum, gm, nnm,     the ``n x n`` Gram matrix, ``O(n^2 d)``     ``O(n^2 + n C)``
mda, smea, caf                (a loop over blocks of ``C`` columns,
                              ``C = 2^19 / n`` clipped to [1024,
                              16384]), then work in ``n``-dim
                              coefficient space, then
                              one combination pass ``O(m n d)``           ``O(m d)`` (``m`` rows out)
cclip, monna                  two passes per iteration (distances to one  ``O(n + d)``
                              point, then a weighted sum)
============================  ==========================================  =====================

Past the Gram pass: Krum / Multi-Krum / NNM sort ``n x n`` distances (``O(n^2 log n)``);
GM runs ``max_iter`` ``O(n^2)`` iterations; MDA and SMEA enumerate ``C(n, f)`` subsets
(``O(C(n, f) (n - f)^2)`` memory; refused past ``max_subsets``, so in practice small
``n``); CAF runs at most ``n`` rounds of ``eigh`` (``n <= 128``) or of warm-started power
iterations (``O(n^2)`` each, larger ``n``). So at ``n = 1000`` every rule but MDA/SMEA
runs (the tests run each one there), and at ``d = 1e7`` a rule needs ``x`` plus at most
one more ``(n, d)`` array (sort path, ``(m, d)`` outputs) and ``O(n^2 + n C)`` besides:
at ``(17, 1e7)`` about 0.7 GB for ``x`` and under 0.7 GB more.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Real

from nnmjax.robust import _gram, _order, _spectral, linalg
from nnmjax.robust.detection import dnc, signguard
from nnmjax.robust._checks import as_matrix, check_f, check_int, check_positive, keeps_dtype
from nnmjax.robust._shard import dsum

__all__ = ["mean", "cwmed", "cwtm", "gm", "krum", "multikrum", "mda", "meamed",
           "cclip", "monna", "caf", "smea", "cge", "bulyan", "dnc", "signguard", "AGGREGATORS"]


def _prepare(x, f, rule, min_n=None):
    """Validate ``x`` as an ``(n, d)`` matrix and ``f`` for ``rule``; return both."""
    x = as_matrix(x)
    f = check_f(f, x.shape[0], rule=rule, min_n=min_n)
    return x, f


@keeps_dtype
def mean(x: Real[ArrayLike, "n d"], f: int = 0) -> Float[Array, " d"]:
    """Average of the rows, ``(1/n) sum_i x_i``.

    Not robust (kappa is unbounded for f >= 1; ``nnmjax audit`` finds infinite ratios).

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: ignored (any non-negative integer); accepted for the common ``(x, f)`` signature.

    Returns:
        The ``(d,)`` aggregate, in ``x``'s floating dtype (float32 for integer ``x``).

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array or ``f`` is negative.

    Examples:
        One Byzantine row (the last) drags the average far from the honest mean ``[1, 1, 1]``:

        >>> import jax.numpy as jnp, numpy as np
        >>> from nnmjax import aggregators
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> print(np.round(np.asarray(aggregators.mean(x)), 4))
        [ 2.6 -1.   2.6]
    """
    x = as_matrix(x)
    check_f(f, x.shape[0], rule="mean", min_n=lambda f: 1)
    return _order.sum_rows(_rows(x), 0, x.shape[0]) / x.shape[0]


def _rows(x):
    """``x`` as a list of rows for the sorting network (``n <= NETWORK_MAX_N``), else ``x``."""
    n = x.shape[0]
    return [x[i] for i in range(n)] if n <= _order.NETWORK_MAX_N else x


@keeps_dtype
def cwmed(x: Real[ArrayLike, "n d"], f: int = 0) -> Float[Array, " d"]:
    """Coordinate-wise median (paper eq. 13).

    ``[CWMed(x)]_k = Median(x_1k, ..., x_nk)``; the two middle values are averaged for even
    ``n``. (f, kappa)-robust with ``kappa = 4 (1 + f/(n-2f))^2`` (Proposition 5).

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: number of Byzantine rows to tolerate; needs ``2f < n``.

    Returns:
        The ``(d,)`` aggregate, in ``x``'s floating dtype (float32 for integer ``x``).

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array, or ``f`` is not an
            integer with ``0 <= f`` and ``2f < n``.

    Examples:
        >>> import jax.numpy as jnp, numpy as np
        >>> from nnmjax import aggregators
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> print(np.round(np.asarray(aggregators.cwmed(x, 1)), 4))
        [1. 1. 1.]
        >>> print(np.asarray(aggregators.cwmed(jnp.array([[0.], [1.], [5.], [9.]]))))
        [3.]
    """
    x, f = _prepare(x, f, "cwmed")
    return _order.median(x)


@keeps_dtype
def cwtm(x: Real[ArrayLike, "n d"], f: int) -> Float[Array, " d"]:
    """Coordinate-wise trimmed mean (paper Appendix 8.1.1).

    Per coordinate, drop the ``f`` smallest and ``f`` largest values and average the
    remaining ``n - 2f``: ``[CWTM(x)]_k = (1/(n-2f)) sum_{i=f+1}^{n-f} x_{(i),k}`` with
    ``x_{(1),k} <= ... <= x_{(n),k}`` the sorted ``k``-th coordinates.
    (f, kappa)-robust with ``kappa = 6f/(n-2f) (1 + f/(n-2f))`` (Proposition 2).

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: number of Byzantine rows to tolerate; needs ``2f < n``.

    Returns:
        The ``(d,)`` aggregate, in ``x``'s floating dtype (float32 for integer ``x``).

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array, or ``f`` is not an
            integer with ``0 <= f`` and ``2f < n``.

    Examples:
        >>> import jax.numpy as jnp, numpy as np
        >>> from nnmjax import aggregators
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> print(np.round(np.asarray(aggregators.cwtm(x, 1)), 4))
        [1.3333 0.6667 1.3333]
    """
    x, f = _prepare(x, f, "cwtm")
    n = x.shape[0]
    if f == 0:
        return mean(x)
    return _order.window_sum(x, f, n - f) / (n - 2 * f)


@keeps_dtype
def meamed(x: Real[ArrayLike, "n d"], f: int) -> Float[Array, " d"]:
    """Mean around the median (Xie et al., 2018).

    Per coordinate, the average of the ``m = n - f`` values closest to the coordinate-wise
    median ``med``.

    Those values are a window ``s[k : k + m]`` of the sorted values ``s`` (``0 <= k <= f``),
    and sliding the window from ``k`` to ``k + 1`` swaps ``s[k]`` for ``s[k + m]``, closer to
    the median exactly when ``s[k] + s[k + m] < 2 med``. That sum grows with ``k``
    (``s[k] <= med <= s[k + m]``), so the optimal window starts at
    ``k* = #{j < f : s[j] + s[j + m] < 2 med}`` and the output is
    ``(1/m) (sum_{f <= i < m} s[i] + sum_{j < f} (s[j + m] if j < k* else s[j]))``.
    Equidistant values on both sides of the median (``s[j] + s[j + m] = 2 med``) go to the
    lower one. The choice depends on the values only, never on which workers sent them:
    ``f`` identical Byzantine copies at the boundary distance give up their place to
    every strictly closer value (as ByzFL's MeaMed).

    No robustness coefficient is proven; ``nnmjax audit`` at ``n = 17`` finds Definition 2
    ratios of 0.28, 0.63, 1.20, 1.76 at ``f = 1..4`` and 30.2 at ``f = 8``
    (``docs/audit.md``).

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: number of Byzantine rows to tolerate; needs ``2f < n``.

    Returns:
        The ``(d,)`` aggregate, in ``x``'s floating dtype (float32 for integer ``x``).

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array, or ``f`` is not an
            integer with ``0 <= f`` and ``2f < n``.

    Examples:
        ``meamed([[0.], [1.], [2.], [9.], [9.]], 2)`` averages 1, 2 and 0 (the median 2 is
        closer to 0 than to 9):

        >>> import jax.numpy as jnp, numpy as np
        >>> from nnmjax import aggregators
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> print(np.asarray(aggregators.meamed(jnp.array([[0.], [1.], [2.], [9.], [9.]]), 2)))
        [1.]
        >>> print(np.round(np.asarray(aggregators.meamed(x, 1)), 4))
        [1. 1. 1.]
    """
    x, f = _prepare(x, f, "meamed")
    return mean(x) if f == 0 else _closest_to_median(x, x.shape[0] - f)


def _closest_to_median(x, m: int):
    """Per coordinate, the mean of the ``m`` values closest to the median (``1 <= m <= n``;
    the window rule of :func:`meamed`, also Bulyan's aggregation with ``m = n - 2f``)."""
    n = x.shape[0]
    f = n - m
    s = _order.sorted_rows(x)
    med = s[n // 2] if n % 2 else 0.5 * s[n // 2 - 1] + 0.5 * s[n // 2]
    # halves: sanitised extremes (+-max of the dtype) must not overflow the comparison
    shift = [0.5 * s[j] + 0.5 * s[j + m] < med for j in range(f)]  # true exactly for j < k*
    total = _order.sum_rows(s, f, m) if f < m else 0.0  # ranks always in the window
    for i in range(n):
        # s[i] is in the window [k*, k* + m) iff i >= k* (not shift[i]) and i - m < k*
        # (shift[i - m]); for i >= f the first holds, for i < m the second
        conditions = ([] if i >= f else [~shift[i]]) + ([] if i < m else [shift[i - m]])
        if conditions:
            total = total + jnp.where(functools.reduce(jnp.logical_and, conditions), s[i], 0.0)
    return total / m


@keeps_dtype
def krum(x: Real[ArrayLike, "n d"], f: int) -> Float[Array, " d"]:
    """Krum in the paper's variant (Appendix 8.1.2).

    Output ``x_k`` with ``k = argmin_i sum_{j in N_i} ||x_i - x_j||^2``, ``N_i`` the ``n - f``
    nearest neighbours of ``x_i`` (itself included); ties to the lower index.
    (f, kappa)-robust with ``kappa = 6 (1 + f/(n-2f))`` (Proposition 3).

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: number of Byzantine rows to tolerate; needs ``2f < n``.

    Returns:
        The ``(d,)`` aggregate, in ``x``'s floating dtype (float32 for integer ``x``).

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array, or ``f`` is not an
            integer with ``0 <= f`` and ``2f < n``.

    Examples:
        The selected row is ``x[3]``, the most central honest one:

        >>> import jax.numpy as jnp, numpy as np
        >>> from nnmjax import aggregators
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> print(np.round(np.asarray(aggregators.krum(x, 1)), 4))
        [1. 1. 1.]
    """
    x, f = _prepare(x, f, "krum")
    geo = _gram.Geometry(x)
    return x[jnp.argmin(_krum_scores(geo.sqdist, f))]


def _krum_scores(sqdist, f):
    """Krum scores: each row's sum of squared distances to its ``n - f`` nearest rows."""
    n = sqdist.shape[0]
    return jnp.sum(jnp.sort(sqdist, axis=1)[:, : n - f], axis=1)


@keeps_dtype
def multikrum(x: Real[ArrayLike, "n d"], f: int, *, m: int | None = None) -> Float[Array, " d"]:
    """Multi-Krum (Blanchard et al., 2017): average of the ``m`` rows with the lowest Krum scores.

    The Krum score of ``x_i`` is the sum of squared distances to its ``n - f`` nearest rows
    (see :func:`krum`); default ``m = n - f``, as ByzFL; ties to the lower index.

    No robustness coefficient is proven; ``nnmjax audit`` at ``n = 17`` finds Definition 2
    ratios of 0.26, 0.60, 1.08, 1.70 at ``f = 1..4`` and 26.1 at ``f = 8``
    (``docs/audit.md``).

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: number of Byzantine rows to tolerate; needs ``2f < n``.
        m: number of rows averaged, in ``[1, n]`` (default ``n - f``).

    Returns:
        The ``(d,)`` aggregate, in ``x``'s floating dtype (float32 for integer ``x``).

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array, or ``f`` is not an
            integer with ``0 <= f`` and ``2f < n``.
        ValueError: if ``m`` is not an integer in ``[1, n]``.

    Examples:
        >>> import jax.numpy as jnp, numpy as np
        >>> from nnmjax import aggregators
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> print(np.round(np.asarray(aggregators.multikrum(x, 1)), 4))
        [1. 1. 1.]
        >>> print(np.round(np.asarray(aggregators.multikrum(x, 1, m=2)), 4))
        [1.  0.5 1. ]
    """
    x, f = _prepare(x, f, "multikrum")
    n = x.shape[0]
    m = n - f if m is None else check_int(m, name="m", rule="multikrum", low=1, high=n)
    geo = _gram.Geometry(x)
    order = jnp.argsort(_krum_scores(geo.sqdist, f), stable=True)[:m]
    c = jnp.zeros((n,), x.dtype).at[order].set(1.0 / m)
    return _gram.combine(c, x, far=geo.far)


@keeps_dtype
def gm(x: Real[ArrayLike, "n d"], f: int = 0, *, nu: float = 1e-6, max_iter: int = 200,
       tol: float = 1e-6, init: str = "medoid") -> Float[Array, " d"]:
    """Geometric median ``argmin_z sum_i ||z - x_i||`` (paper Appendix 8.1.3).

    Computed by smoothed Weiszfeld (Pillutla et al., 2022):
    ``z <- sum_i w_i x_i / sum_i w_i``, ``w_i = 1 / max(nu, ||z - x_i||)``.

    Iterates in the span of the rows via the centred Gram matrix, so each of the
    ``max_iter`` iterations costs ``O(n^2)``, not a pass over ``x``. Stops (freezes) once
    a step moves ``z`` by at most ``tol`` times the mean distance ``(1/n) sum_i ||z - x_i||``
    (``tol=0``: run all ``max_iter`` iterations). ``init="medoid"`` starts at the average
    of the ``n - f`` nearest rows of the medoid (the row with the smallest sum of distances
    to its ``n - f`` nearest rows); ``init="zero"`` starts at the origin (ByzFL's
    ``GeometricMedian()`` is ``nu=0.1, max_iter=3, tol=0, init="zero"``).
    Differentiable (a fixed-length ``lax.scan``).
    (f, kappa)-robust with ``kappa = 4 (1 + f/(n-2f))^2`` (Proposition 4).

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: number of Byzantine rows (``2f < n``); only used by ``init="medoid"``.
        nu: smoothing floor on the distances, ``> 0``.
        max_iter: number of Weiszfeld iterations, ``>= 1``.
        tol: relative stopping tolerance, ``>= 0``.
        init: ``"medoid"`` or ``"zero"``.

    Returns:
        The ``(d,)`` aggregate, in ``x``'s floating dtype (float32 for integer ``x``).

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array, or ``f`` is not an
            integer with ``0 <= f`` and ``2f < n``.
        ValueError: if ``nu <= 0``, ``max_iter < 1``, ``tol < 0`` or ``init`` is neither
            ``"medoid"`` nor ``"zero"``.

    Examples:
        >>> import jax.numpy as jnp, numpy as np
        >>> from nnmjax import aggregators
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> print(np.round(np.asarray(aggregators.gm(x, 1)), 4))
        [1. 1. 1.]
        >>> z = aggregators.gm(x, nu=0.1, max_iter=3, tol=0.0, init="zero")   # ByzFL's setting
        >>> print(np.round(np.asarray(z), 2))
        [1.06 0.66 1.15]
    """
    x, f = _prepare(x, f, "gm")
    check_positive(nu, name="nu", rule="gm")
    check_int(max_iter, name="max_iter", rule="gm", low=1)
    check_positive(tol, name="tol", rule="gm", allow_zero=True)
    if init not in ("medoid", "zero"):
        raise ValueError(f"init must be 'medoid' or 'zero' for gm; got {init!r}")
    n = x.shape[0]
    geo = _gram.Geometry(x)
    live = (~geo.far).astype(x.dtype)

    def weights(d2):
        w = live / jnp.maximum(nu, jnp.sqrt(d2))
        return w / jnp.sum(w)

    if init == "zero":
        b, vv = geo.inner(jnp.zeros_like(geo.centre))
        c = weights(jnp.where(geo.far, jnp.inf, jnp.maximum(geo.sqnorm - 2 * b + vv, 0.0)))
        iters = max_iter - 1
    else:
        score = jnp.sum(jnp.sort(jnp.sqrt(geo.sqdist), axis=1)[:, : n - f], axis=1)
        nbrs = _gram.nearest(geo.sqdist, n - f)[jnp.argmin(score)]
        c = jnp.zeros((n,), x.dtype).at[nbrs].set(1.0 / (n - f))
        iters = max_iter

    def body(carry, _):
        c, done = carry
        d2 = geo.dist_to_combination(c)
        c_new = weights(d2)
        delta = c_new - c
        step2 = delta @ geo.gram @ delta
        scale = jnp.sum(jnp.where(geo.far, 0.0, jnp.sqrt(d2))) / jnp.sum(live)
        stop = done | ((tol > 0) & (step2 <= jnp.square(tol * scale)))
        return (jnp.where(done, c, c_new), stop), None

    if iters > 0:
        (c, _), _ = jax.lax.scan(body, (c, jnp.array(False)), None, length=iters)
    return _gram.combine(c, x, far=geo.far)


def _sqdist_to(x, v):
    """``||x_i - v||^2`` in one pass; ``inf`` for rows with non-finite entries (their sum is
    ``inf`` or ``nan``) or whose distance overflows."""
    d2 = dsum(jnp.sum(jnp.square(x - v), axis=1))
    return jnp.where(jnp.isfinite(d2), d2, jnp.inf)


@keeps_dtype
def monna(x: Real[ArrayLike, "n d"], f: int, *, idx: int = 0) -> Float[Array, " d"]:
    """MoNNA (Farhadkhani et al., 2023): average of the ``n - f`` nearest neighbours of ``x[idx]``.

    The trusted row ``x[idx]`` is included among its neighbours; ties to the lower index.
    Distances to one row only: two passes over ``x``.

    Its guarantee needs ``x[idx]`` honest (a node trusts its own vector): with a Byzantine
    row there, no coefficient holds, and ``nnmjax audit``, which places the Byzantine rows
    anywhere, finds unbounded ratios (``docs/audit.md``).

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: number of Byzantine rows to tolerate; needs ``2f < n``.
        idx: index of the trusted row, in ``[0, n - 1]``.

    Returns:
        The ``(d,)`` aggregate, in ``x``'s floating dtype (float32 for integer ``x``).

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array, or ``f`` is not an
            integer with ``0 <= f`` and ``2f < n``.
        ValueError: if ``idx`` is not an integer in ``[0, n - 1]``.

    Examples:
        >>> import jax.numpy as jnp, numpy as np
        >>> from nnmjax import aggregators
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> print(np.round(np.asarray(aggregators.monna(x, 1, idx=2)), 4))
        [1. 1. 1.]
    """
    x, f = _prepare(x, f, "monna")
    n = x.shape[0]
    idx = check_int(idx, name="idx", rule="monna", low=0, high=n - 1)
    d2 = _sqdist_to(x, x[idx])
    nbrs = jnp.argsort(d2.at[idx].set(-1.0), stable=True)[: n - f]
    c = jnp.zeros((n,), x.dtype).at[nbrs].set(1.0 / (n - f))
    return _gram.combine(c, x, far=jnp.isinf(d2))


@keeps_dtype
def cclip(x: Real[ArrayLike, "n d"], f: int = 0, *, tau: float = 100.0, n_iter: int = 1,
          init: Real[ArrayLike, " d"] | None = None) -> Float[Array, " d"]:
    """Centered clipping (Karimireddy et al., 2021).

    ``n_iter`` iterations from ``init`` (default the origin; in training, the previous
    aggregate) of ``v <- v + (1/n) sum_i (x_i - v) min(1, tau / ||x_i - v||)``.

    Two passes over ``x`` per iteration. Rows with non-finite entries get weight zero.
    ByzFL's defaults: ``tau=100, n_iter=1``.

    Not (f, kappa)-robust for any kappa from a fixed ``init``: the output moves by up to
    ``f tau / n`` whatever the honest spread, so Definition 2 fails when the honest rows
    coincide (``nnmjax audit`` finds infinite ratios, ``docs/audit.md``); its guarantees
    are of another kind (Karimireddy et al., 2021, from the previous aggregate).

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: number of Byzantine rows (``2f < n``); validated, not used by the iteration.
        tau: clipping radius, ``> 0``.
        n_iter: number of iterations, ``>= 1``.
        init: ``(d,)`` starting point (default zeros).

    Returns:
        The ``(d,)`` aggregate, in ``x``'s floating dtype (float32 for integer ``x``).

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array, or ``f`` is not an
            integer with ``0 <= f`` and ``2f < n``.
        ValueError: if ``tau <= 0``, ``n_iter < 1`` or ``init`` does not have shape ``(d,)``.

    Examples:
        With ``tau`` larger than every distance, one iteration from the origin is the mean:

        >>> import jax.numpy as jnp, numpy as np
        >>> from nnmjax import aggregators
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> print(np.round(np.asarray(aggregators.cclip(x, 1)), 4))
        [ 2.6 -1.   2.6]
        >>> v = aggregators.cclip(x, 1, tau=1.0, n_iter=3, init=jnp.ones(3))
        >>> print(np.round(np.asarray(v), 2))
        [1.1  0.66 1.22]
    """
    x, f = _prepare(x, f, "cclip")
    check_positive(tau, name="tau", rule="cclip")
    check_int(n_iter, name="n_iter", rule="cclip", low=1)
    n, d = x.shape
    v = jnp.zeros((d,), x.dtype) if init is None else jnp.asarray(init, x.dtype)
    if v.shape != (d,):
        raise ValueError(f"init must have shape ({d},) for cclip; got {v.shape}")
    for _ in range(n_iter):
        d2 = _sqdist_to(x, v)
        s = jnp.where(jnp.isfinite(d2), jnp.minimum(1.0, tau / jnp.sqrt(d2)), 0.0)
        v = v * (1.0 - jnp.sum(s) / n) + _gram.combine(s / n, x, far=jnp.isinf(d2))
    return v


@keeps_dtype
def mda(x: Real[ArrayLike, "n d"], f: int, *, max_subsets: int = 200_000) -> Float[Array, " d"]:
    """Minimum-diameter averaging (El Mhamdi et al., 2018; Rousseeuw's MVE idea).

    The average of the ``n - f`` rows whose largest pairwise distance is smallest:
    ``(1/(n-f)) sum_{i in S*} x_i`` with ``S* = argmin_{|S| = n-f} max_{i,j in S} ||x_i - x_j||``
    (first such subset in lexicographic order, as ByzFL).

    No robustness coefficient is proven; ``nnmjax audit`` at ``n = 17`` finds Definition 2
    ratios of 0.26, 0.60, 1.08, 1.70 at ``f = 1..4`` and 16.2 at ``f = 8``
    (``docs/audit.md``). Ties between subsets are common, since one pair sets a subset's
    diameter, so which of the tied subsets is averaged depends on the workers' order: every
    one of them keeps MDA's guarantee, but a Byzantine worker can choose among them by
    choosing its position. Enumerates ``C(n, f)`` subsets (static; refused past
    ``max_subsets``).

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: number of Byzantine rows to tolerate; needs ``2f < n``.
        max_subsets: largest number ``C(n, f)`` of subsets enumerated.

    Returns:
        The ``(d,)`` aggregate, in ``x``'s floating dtype (float32 for integer ``x``).

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array, or ``f`` is not an
            integer with ``0 <= f`` and ``2f < n``.
        ValueError: if ``C(n, f) > max_subsets``.

    Examples:
        >>> import jax.numpy as jnp, numpy as np
        >>> from nnmjax import aggregators
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> print(np.round(np.asarray(aggregators.mda(x, 1)), 4))
        [1. 1. 1.]
    """
    x, f = _prepare(x, f, "mda")
    n = x.shape[0]
    subsets = _gram.subset_indices(n, n - f, rule="mda", max_subsets=max_subsets)
    geo = _gram.Geometry(x)
    diam = jnp.max(geo.sqdist[subsets[:, :, None], subsets[:, None, :]], axis=(1, 2))
    best = subsets[jnp.argmin(diam)]
    return _gram.combine(jnp.zeros((n,), x.dtype).at[best].set(1.0 / (n - f)), x, far=geo.far)


@keeps_dtype
def smea(x: Real[ArrayLike, "n d"], f: int, *, max_subsets: int = 200_000) -> Float[Array, " d"]:
    """Smallest maximum eigenvalue averaging (Allouah et al., 2024).

    The average of the ``n - f`` rows whose empirical covariance has the smallest top
    eigenvalue, ``argmin_S lambda_max(P G_S P)`` with ``G_S`` the subset's Gram matrix and
    ``P = I - 11^T / (n - f)`` its centring; for ``d < n - f`` the same top eigenvalue of
    the ``d x d`` scatter matrix ``sum_{i in S} (x_i - mu_S)(x_i - mu_S)^T``, from one
    product of the subsets' membership matrix with the rows' outer products. The arg-min is
    exact (ties to the first subset; no random power iteration decides it): power-iteration
    lower bounds rule out most subsets and ``eigvalsh`` runs only on those that could still
    win (``_spectral``), so a call costs ``O(C(n, f) m^3)`` (``m = min(d, n - f)``) for the
    matrices and bounds plus a few hundred small eigendecompositions, all of them only when
    the subsets tie. ``C(n, f)`` subsets are
    enumerated statically and refused past ``max_subsets``. No robustness coefficient in
    Definition 2's sense is proven here; ``nnmjax audit`` at ``n = 17`` finds ratios of
    0.26, 0.60, 0.75, 0.94 at ``f = 1..4``
    (``docs/audit.md``).

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: number of Byzantine rows to tolerate; needs ``2f < n``.
        max_subsets: largest number ``C(n, f)`` of subsets enumerated.

    Returns:
        The ``(d,)`` aggregate, in ``x``'s floating dtype (float32 for integer ``x``).

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array, or ``f`` is not an
            integer with ``0 <= f`` and ``2f < n``.
        ValueError: if ``C(n, f) > max_subsets``.

    Examples:
        >>> import jax.numpy as jnp, numpy as np
        >>> from nnmjax import aggregators
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> print(np.round(np.asarray(aggregators.smea(x, 1)), 4))
        [1. 1. 1.]
    """
    x, f = _prepare(x, f, "smea")
    n, d = x.shape
    k = n - f
    subsets = _gram.subset_indices(n, k, rule="smea", max_subsets=max_subsets)
    geo = _gram.Geometry(x)
    if d < k:  # the d x d scatter matrices, one product with the subsets' membership
        xc = jnp.where(geo.far[:, None], 0.0, x - geo.centre)
        member = jnp.sum(jax.nn.one_hot(subsets, n, dtype=x.dtype), axis=1)
        highest = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
        second = highest(member, (xc[:, :, None] * xc[:, None, :]).reshape(n, d * d))
        total = highest(member, xc)
        m = second.reshape(-1, d, d) - total[:, :, None] * total[:, None, :] / k
    else:  # the k x k centred Gram matrices: the same non-zero eigenvalues
        centre = jnp.eye(k, dtype=x.dtype) - 1.0 / k
        m = centre @ geo.gram[subsets[:, :, None], subsets[:, None, :]] @ centre
    best = subsets[_spectral.argmin_top_eigenvalue(m, jnp.any(geo.far[subsets], axis=1))]
    return _gram.combine(jnp.zeros((n,), x.dtype).at[best].set(1.0 / k), x, far=geo.far)


@keeps_dtype
def caf(x: Real[ArrayLike, "n d"], f: int) -> Float[Array, " d"]:
    """Covariance-bound agnostic filter (Allouah et al., 2024).

    With weights ``c`` (all 1), while ``sum(c) > n - 2f``: ``mu = sum c_i x_i / sum c``;
    ``(lam, v)`` = top eigenpair of ``sum c_i (x_i - mu)(x_i - mu)^T / sum c``; remember ``mu``
    if ``lam`` is the smallest so far; ``c_i <- c_i (1 - tau_i / max tau)`` with
    ``tau_i = ((x_i - mu) . v)^2``. Output the remembered ``mu``.

    The eigenpair is deterministic, unlike ByzFL's single random power iteration: exact
    (``eigh`` of the ``n x n`` weighted, centred Gram matrix) up to ``CAF_EIGH_MAX_N`` rows;
    past that, ``CAF_POWER_ITERS`` power iterations per round started from the previous
    round's eigenvector (the first from the rows' centred squared norms), with the centred
    Gram matrix applied as ``O(n^2)`` products and never formed: as accurate as ``eigh``
    when the top eigenvalue stands out, approximate (like ByzFL's) when the top two are
    close.
    Cost: the Gram pass ``O(n^2 d)``, at most ``n`` rounds of ``O(n^3)`` (eigh) or
    ``O(CAF_POWER_ITERS n^2)``, one combination pass; memory ``O(n d + n^2)``. ``max tau`` is
    taken over rows that still have weight, so every round zeroes at least one row and at most
    ``n`` rounds run (ByzFL takes it over all rows, including already-zeroed ones, which can
    take many more rounds and end elsewhere).

    ``nnmjax audit`` at ``n = 17`` finds Definition 2 ratios of 0.10, 0.22, 0.38, 0.65 at
    ``f = 1..4`` and 13.8 at ``f = 8`` (``docs/audit.md``; CAF cannot be differentiated in
    reverse mode, so only the smoothed surrogate searches it).

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: number of Byzantine rows to tolerate; needs ``2f < n``.

    Returns:
        The ``(d,)`` aggregate, in ``x``'s floating dtype (float32 for integer ``x``).

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array, or ``f`` is not an
            integer with ``0 <= f`` and ``2f < n``.

    Examples:
        >>> import jax.numpy as jnp, numpy as np
        >>> from nnmjax import aggregators
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> print(np.round(np.asarray(aggregators.caf(x, 1)), 2))
        [0.99 0.99 1.01]
    """
    x, f = _prepare(x, f, "caf")
    n = x.shape[0]
    geo = _gram.Geometry(x)
    live = (~geo.far).astype(x.dtype)
    ones = jnp.ones((n,), x.dtype)

    def centred(w, v):
        """``K v`` with ``K = (I - 1 w^T) G (I - w 1^T)``: O(n^2), K never formed."""
        gv = geo.gram @ (v - w * jnp.sum(v))
        return gv - ones * (w @ gv)

    def top_pair(w, u0):
        """Top eigenpair of ``diag(sqrt w) K diag(sqrt w)``: ``eigh`` up to CAF_EIGH_MAX_N rows,
        else ``CAF_POWER_ITERS`` power iterations from the previous round's vector."""
        sq = jnp.sqrt(jnp.maximum(w, 0.0))
        if n <= CAF_EIGH_MAX_N:
            k = jax.vmap(lambda e: centred(w, e))(jnp.eye(n, dtype=x.dtype))
            lams, us = linalg.eigh(sq[:, None] * k * sq[None, :])
            return lams[-1], us[:, -1]

        def step(u, _):
            v = sq * centred(w, sq * u)
            return v / jnp.maximum(jnp.linalg.norm(v), jnp.finfo(x.dtype).tiny), None

        u, _ = jax.lax.scan(step, u0, None, length=CAF_POWER_ITERS)
        return u @ (sq * centred(w, sq * u)), u

    def body(carry, _):
        c, best_w, best_lam, done, u = carry
        csum = jnp.sum(c)
        active = (~done) & (csum > n - 2 * f)
        w = c / jnp.where(csum > 0, csum, 1.0)
        lam, u = top_pair(w, u)
        sq = jnp.sqrt(jnp.maximum(w, 0.0))
        tau = jnp.square(centred(w, sq * u) / jnp.sqrt(jnp.maximum(lam, jnp.finfo(x.dtype).tiny)))
        tau = jnp.where(c > 0, tau, 0.0)
        tmax = jnp.max(tau)
        improve = active & (lam < best_lam)
        best_w = jnp.where(improve, w, best_w)
        best_lam = jnp.where(improve, lam, best_lam)
        step = active & (tmax > 0)
        shrunk = jnp.where(tau >= tmax, 0.0, c * (1.0 - tau / jnp.where(tmax > 0, tmax, 1.0)))
        c = jnp.where(step, jnp.maximum(shrunk, 0.0), c)
        return (c, best_w, best_lam, done | ~step, u), None

    u0 = jnp.where(geo.far, 0.0, geo.sqnorm) / jnp.maximum(
        jnp.linalg.norm(jnp.where(geo.far, 0.0, geo.sqnorm)), jnp.finfo(x.dtype).tiny)
    init = (live, live / jnp.sum(live), jnp.array(jnp.inf, x.dtype), jnp.array(False), u0)
    # at most n rounds; stop as soon as the weights fall to n - 2f
    _, best_w, _, _, _ = jax.lax.while_loop(lambda carry: ~carry[3],
                                            lambda carry: body(carry, None)[0], init)
    return _gram.combine(best_w, x, far=geo.far)


#: CAF's exact eigenpairs (``eigh``, O(n^3) per round) up to this many rows; power
#: iterations (O(n^2) each) past it.
@keeps_dtype
def cge(x: Real[ArrayLike, "n d"], f: int) -> Float[Array, " d"]:
    """Comparative gradient elimination (Liu, Gupta and Vaidya, 2021; ByzPy's CGE).

    Sort the rows by Euclidean norm and average the ``n - f`` smallest:
    ``CGE(x) = (1/(n-f)) sum_{i in K} x_i``, ``K`` the ``n - f`` rows of least
    ``||x_i||``, ties to the lower index. Not translation equivariant: it presumes honest
    inputs of comparable norms near zero (gradients). A row with a non-finite norm is
    eliminated first.

    No robustness coefficient is proven in the sense of Definition 2 (the paper's rules are
    translation equivariant; CGE is not). ``nnmjax audit`` at ``n = 17`` finds Definition 2
    ratios of 0.23, 0.44, 0.63, 0.78, 2.27 at ``f = 1..5`` and unbounded ones at
    ``f >= 6`` (``docs/audit.md``).

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: number of Byzantine rows to tolerate; needs ``2f < n``.

    Returns:
        The ``(d,)`` aggregate, in ``x``'s floating dtype (float32 for integer ``x``).

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array, or ``f`` is not an
            integer with ``0 <= f`` and ``2f < n``.

    Examples:
        The row of norm ``sqrt(243)`` is eliminated:

        >>> import jax.numpy as jnp, numpy as np
        >>> from nnmjax import aggregators
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> print(np.round(np.asarray(aggregators.cge(x, 1)), 4))
        [1. 1. 1.]
    """
    x, f = _prepare(x, f, "cge")
    n = x.shape[0]
    norms = _gram.row_norms(x)
    keep = jnp.argsort(norms, stable=True)[: n - f]
    c = jnp.zeros((n,), x.dtype).at[keep].set(1.0 / (n - f))
    return _gram.combine(c, x, far=jnp.isinf(norms))


@keeps_dtype
def bulyan(x: Real[ArrayLike, "n d"], f: int) -> Float[Array, " d"]:
    """Bulyan (El Mhamdi, Guerraoui and Rouhault, ICML 2018) over Krum.

    Selection: ``theta = n - 2f`` times, pick the Krum winner among the rows not yet picked
    (``argmin_i`` of the sum of squared distances to its ``max(r - f - 2, 1)`` nearest
    other remaining rows, ``r`` the number remaining; ties to the lower index) and remove
    it, as Flower's ``aggregate_bulyan``.
    Aggregation: per coordinate, the average of the ``beta = theta - 2f`` selected values
    closest to their median (:func:`meamed` of the selection with ``2f``). Needs
    ``n >= 4f + 3``. Rows with a non-finite norm are infinitely far and never picked while
    a finite row remains.

    No robustness coefficient in the sense of Definition 2 is proven; ``nnmjax audit`` at
    ``n = 17`` finds ratios of 0.43, 0.89, 1.92 at ``f = 1, 2, 3`` (the largest ``f`` it
    accepts there; ``docs/audit.md``).

    Args:
        x: ``(n, d)`` array, one row per worker (integers are cast to float32).
        f: number of Byzantine rows to tolerate; needs ``n >= 4f + 3``.

    Returns:
        The ``(d,)`` aggregate, in ``x``'s floating dtype (float32 for integer ``x``).

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array, or ``f`` is not an
            integer with ``0 <= f`` and ``n >= 4f + 3``.

    Examples:
        With ``n = 7``, ``f = 1``: five rows are picked (the far row is not), and each
        coordinate averages the three picked values closest to its median:

        >>> import jax.numpy as jnp, numpy as np
        >>> from nnmjax import aggregators
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [1, 2, 1], [0, 1, 1],
        ...                [9, -9, 9]], jnp.float32)
        >>> print(np.round(np.asarray(aggregators.bulyan(x, 1)), 4))
        [1. 1. 1.]
    """
    x, f = _prepare(x, f, "bulyan", min_n=lambda f: 4 * f + 3)
    n = x.shape[0]
    theta = n - 2 * f
    sqdist = _gram.Geometry(x).sqdist
    others = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, sqdist)
    # each row's distances sorted once; a pick clears its entry in every row (O(n^2) a round)
    by_row = jnp.argsort(others, axis=1, stable=True)
    near = jnp.take_along_axis(others, by_row, axis=1)
    rank = jnp.argsort(by_row, axis=1)  # rank[r, j]: where row j sits in row r's order
    rows = jnp.arange(n)

    def pick(t, carry):
        alive, chosen, order = carry
        k = jnp.maximum(n - t - f - 2, 1)  # r - f - 2 neighbours (at least 1), r = n - t
        first_k = alive & (jnp.cumsum(alive, axis=1) <= k)
        score = jnp.sum(jnp.where(first_k, near, 0.0), axis=1)
        score = jnp.where(chosen | jnp.isnan(score), jnp.inf, score)
        i = jnp.argmin(score)
        # only infinite scores left (far rows): the first row not yet picked
        i = jnp.where(jnp.isinf(score[i]), jnp.argmin(chosen), i)
        return (alive.at[rows, rank[:, i]].set(False), chosen.at[i].set(True),
                order.at[t].set(i.astype(order.dtype)))

    _, _, order = jax.lax.fori_loop(0, theta, pick, (jnp.ones((n, n), bool), jnp.zeros((n,), bool),
                                                     jnp.zeros((theta,), jnp.int32)))
    return _closest_to_median(x[order], theta - 2 * f)


CAF_EIGH_MAX_N = 128
CAF_POWER_ITERS = 100


#: Aggregator name -> function ``(x: (n, d), f, **options) -> (d,)``.
AGGREGATORS = {
    "mean": mean, "cwmed": cwmed, "cwtm": cwtm, "gm": gm, "krum": krum,
    "multikrum": multikrum, "mda": mda, "meamed": meamed, "cclip": cclip,
    "monna": monna, "caf": caf, "smea": smea, "cge": cge, "bulyan": bulyan,
    "dnc": dnc, "signguard": signguard,
}
