"""Empirical robustness of an aggregate (paper Definition 2 and eq. 26)."""
from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Real

from nnmjax.robust._checks import as_matrix, check_f

__all__ = ["kappa_hat", "worst_case_kappa", "kappa_bound"]


def _ratio(output, rows):
    """``||output - mean||^2 / mean_i ||row_i - mean||^2`` over the row axis (-2); 0/0 -> 0."""
    centre = jnp.mean(rows, axis=-2, keepdims=True)
    spread = jnp.mean(jnp.sum(jnp.square(rows - centre), axis=-1), axis=-1)
    err = jnp.sum(jnp.square(output - centre[..., 0, :]), axis=-1)
    return jnp.where(err == 0, 0.0, err / spread)


def kappa_hat(output: Real[ArrayLike, " d"], honest: Real[ArrayLike, "h d"], *,
              squared: bool = False) -> Float[Array, ""]:
    """Empirical robustness coefficient of an aggregate (paper eq. 26).

    ``kappa_hat^2 = ||R - m_bar||^2 / ((1/|H|) sum_{i in H} ||m_i - m_bar||^2)`` with ``m_bar``
    the honest mean. Returns ``kappa_hat`` (the square root, as plotted in the paper's
    Figure 2), or the ratio itself with ``squared=True`` (comparable to kappa in
    Definition 2). ``inf`` when the honest inputs are identical and ``R`` differs; 0 when
    ``R = m_bar``.

    Args:
        output: the aggregate ``R``, shape ``(d,)``.
        honest: ``(|H|, d)`` honest inputs ``m_i``.
        squared: return ``kappa_hat^2`` instead of ``kappa_hat``.

    Returns:
        A scalar array.

    Raises:
        ValueError: if ``honest`` is not a non-empty real ``(|H|, d)`` array.

    Examples:
        >>> import jax.numpy as jnp, numpy as np
        >>> from nnmjax import aggregators, metrics
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> honest = x[:4]                                   # mean [1, 1, 1], spread 1.5
        >>> r2 = metrics.kappa_hat(jnp.array([1., 1., 1.5]), honest, squared=True)
        >>> print(np.round(np.asarray(r2), 4))
        0.1667
        >>> print(np.round(np.asarray(metrics.kappa_hat(aggregators.cwtm(x, 1), honest)), 4))
        0.4714
    """
    honest = as_matrix(honest, name="honest")
    r = _ratio(jnp.asarray(output), honest)
    return r if squared else jnp.sqrt(r)


def worst_case_kappa(output: Real[ArrayLike, " d"], x: Real[ArrayLike, "n d"], f: int, *,
                     max_subsets: int = 100_000) -> Float[Array, ""]:
    """The smallest kappa for which ``(x, output)`` satisfies Definition 2.

    ``max_S ||F(x) - mean_S||^2 / ((1/|S|) sum_{i in S} ||x_i - mean_S||^2)`` over every
    ``S`` of size ``n - f``. Enumerates ``C(n, f)`` subsets.

    Args:
        output: the aggregate ``F(x)``, shape ``(d,)``.
        x: the ``(n, d)`` inputs the rule saw.
        f: number of Byzantine rows; needs ``2f < n``.
        max_subsets: largest number ``C(n, f)`` of subsets enumerated.

    Returns:
        A scalar array: the largest ratio over the subsets.

    Raises:
        ValueError: if ``x`` is not a non-empty real ``(n, d)`` array, ``f`` is invalid for
            ``n``, or ``C(n, f) > max_subsets``.

    Examples:
        >>> import jax.numpy as jnp, numpy as np
        >>> from nnmjax import aggregators, metrics
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> print(np.round(np.asarray(metrics.worst_case_kappa(aggregators.cwtm(x, 1), x, 1)), 4))
        0.2739
        >>> print(np.round(np.asarray(metrics.worst_case_kappa(aggregators.mean(x), x, 1)), 4))
        6.08
    """
    x = as_matrix(x)
    n = x.shape[0]
    f = check_f(f, n, rule="worst_case_kappa")
    if math.comb(n, f) > max_subsets:
        raise ValueError(f"C({n}, {f}) = {math.comb(n, f):,} subsets exceed max_subsets={max_subsets:,}")
    subsets = jnp.asarray(list(itertools.combinations(range(n), n - f)))
    return jnp.max(_ratio(jnp.asarray(output)[None, :], x[subsets]))


def kappa_bound(rule: str, n: int, f: int) -> float:
    """The paper's proven robustness coefficient for ``rule`` (Appendix 8.1, Lemma 1).

    With ``r = f/(n-2f)``: ``cwtm`` ``6 r (1 + r)`` (Proposition 2); ``krum`` ``6 (1 + r)``
    (Proposition 3); ``gm`` and ``cwmed`` ``4 (1 + r)^2`` (Propositions 4, 5);
    ``nnm+F``: ``8f/(n-f) (kappa_F + 1)`` (Lemma 1).

    Args:
        rule: ``"cwtm"``, ``"krum"``, ``"gm"``, ``"cwmed"`` or ``"nnm+"`` one of them.
        n: number of inputs.
        f: number of Byzantine inputs, ``2f < n``.

    Returns:
        The coefficient kappa, a float.

    Raises:
        ValueError: if no coefficient is proven for ``rule``.

    Examples:
        >>> from nnmjax.robust.metrics import kappa_bound
        >>> kappa_bound("krum", 5, 1)
        8.0
        >>> round(kappa_bound("cwtm", 17, 4), 4), round(kappa_bound("nnm+cwtm", 17, 4), 4)
        (3.8519, 11.943)
    """
    r = f / (n - 2 * f)
    base = {"cwtm": 6 * r * (1 + r), "krum": 6 * (1 + r), "gm": 4 * (1 + r) ** 2,
            "cwmed": 4 * (1 + r) ** 2}
    if rule in base:
        return base[rule]
    if rule.startswith("nnm+") and rule[4:] in base:
        return 8 * f / (n - f) * (base[rule[4:]] + 1)
    raise ValueError(f"no proven kappa for {rule!r}; known: {sorted(base)} and nnm+ each")
