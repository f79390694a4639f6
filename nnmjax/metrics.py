"""Empirical robustness of an aggregate (paper Definition 2 and eq. 26)."""
from __future__ import annotations

import itertools
import math

import jax.numpy as jnp

from nnmjax._checks import as_matrix, check_f

__all__ = ["kappa_hat", "worst_case_kappa", "kappa_bound"]


def _ratio(output, rows):
    """``||output - mean||^2 / mean_i ||row_i - mean||^2`` over the row axis (-2); 0/0 -> 0."""
    centre = jnp.mean(rows, axis=-2, keepdims=True)
    spread = jnp.mean(jnp.sum(jnp.square(rows - centre), axis=-1), axis=-1)
    err = jnp.sum(jnp.square(output - centre[..., 0, :]), axis=-1)
    return jnp.where(err == 0, 0.0, err / spread)


def kappa_hat(output, honest, *, squared: bool = False):
    """Paper eq. (26): ``kappa_hat^2 = ||R - m_bar||^2 / ((1/|H|) sum_i ||m_i - m_bar||^2)`` with
    ``m_bar`` the honest mean. Returns ``kappa_hat`` (the square root, as plotted in the
    paper's Figure 2), or the ratio itself with ``squared=True`` (comparable to kappa in
    Definition 2). ``inf`` when the honest inputs are identical and ``R`` differs."""
    honest = as_matrix(honest, name="honest")
    r = _ratio(jnp.asarray(output), honest)
    return r if squared else jnp.sqrt(r)


def worst_case_kappa(output, x, f: int, *, max_subsets: int = 100_000):
    """``max_S ||F(x) - mean_S||^2 / ((1/|S|) sum_{i in S} ||x_i - mean_S||^2)`` over every
    ``S`` of size ``n - f``: the smallest kappa for which this input satisfies Definition 2.
    Enumerates ``C(n, f)`` subsets (``ValueError`` past ``max_subsets``)."""
    x = as_matrix(x)
    n = x.shape[0]
    f = check_f(f, n, rule="worst_case_kappa")
    if math.comb(n, f) > max_subsets:
        raise ValueError(f"C({n}, {f}) = {math.comb(n, f):,} subsets exceed max_subsets={max_subsets:,}")
    subsets = jnp.asarray(list(itertools.combinations(range(n), n - f)))
    return jnp.max(_ratio(jnp.asarray(output)[None, :], x[subsets]))


def kappa_bound(rule: str, n: int, f: int) -> float:
    """The paper's proven robustness coefficient for ``rule`` (Appendix 8.1, Lemma 1):
    ``cwtm`` 6f/(n-2f)(1+f/(n-2f)); ``krum`` 6(1+f/(n-2f)); ``gm``, ``cwmed`` 4(1+f/(n-2f))^2;
    ``nnm+F``: 8f/(n-f) (kappa_F + 1)."""
    r = f / (n - 2 * f)
    base = {"cwtm": 6 * r * (1 + r), "krum": 6 * (1 + r), "gm": 4 * (1 + r) ** 2,
            "cwmed": 4 * (1 + r) ** 2}
    if rule in base:
        return base[rule]
    if rule.startswith("nnm+") and rule[4:] in base:
        return 8 * f / (n - f) * (base[rule[4:]] + 1)
    raise ValueError(f"no proven kappa for {rule!r}; known: {sorted(base)} and nnm+ each")
