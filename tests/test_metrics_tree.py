"""Empirical robustness metrics (paper Definition 2, eq. 26, Appendix 8 bounds) and the
pytree <-> (n, d) helpers."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnmjax
from nnmjax.robust import attacks as atk
from nnmjax.robust import metrics
from nnmjax.optim import tree


def data(seed, n=9, d=5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d) + rng.normal(size=d)
    return x.astype(np.float32)


def kappa_hat_ref(out, honest):
    honest = np.asarray(honest, np.float64)
    m = honest.mean(axis=0)
    return np.sum((np.asarray(out, np.float64) - m) ** 2) / np.mean(np.sum((honest - m) ** 2, 1))


def worst_case_kappa_ref(out, x, f):
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    return max(kappa_hat_ref(out, x[list(s)]) for s in itertools.combinations(range(n), n - f))


# --------------------------------------------------------------------------- kappa_hat


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kappa_hat_eq26(seed):
    honest = data(seed)
    out = honest.mean(0) + np.random.default_rng(seed).normal(size=5).astype(np.float32)
    sq = kappa_hat_ref(out, honest)
    assert float(metrics.kappa_hat(out, honest, squared=True)) == pytest.approx(sq, rel=1e-5)
    assert float(metrics.kappa_hat(out, honest)) == pytest.approx(np.sqrt(sq), rel=1e-5)


def test_kappa_hat_zero_at_the_honest_mean_and_scale_free():
    honest = data(3)
    assert float(metrics.kappa_hat(honest.mean(0), honest)) == pytest.approx(0.0, abs=1e-3)
    out = honest[0]
    k1 = float(metrics.kappa_hat(out, honest))
    k2 = float(metrics.kappa_hat(out * 10 + 3, honest * 10 + 3))
    assert k1 == pytest.approx(k2, rel=1e-4)


def test_kappa_hat_identical_honest_inputs():
    honest = np.ones((4, 3), np.float32)
    assert np.isposinf(float(metrics.kappa_hat(np.zeros(3, np.float32), honest)))


def test_kappa_hat_jits_and_vmaps():
    hs = np.stack([data(s) for s in range(3)])
    outs = hs[:, 0]
    got = jax.jit(jax.vmap(metrics.kappa_hat))(outs, hs)
    for i in range(3):
        assert float(got[i]) == pytest.approx(np.sqrt(kappa_hat_ref(outs[i], hs[i])), rel=1e-5)


def test_kappa_hat_bad_rank():
    with pytest.raises(ValueError):
        metrics.kappa_hat(np.zeros(3), np.zeros(3))


# --------------------------------------------------------------------------- worst_case_kappa


@pytest.mark.parametrize("seed,f", [(0, 2), (1, 3), (2, 0)])
def test_worst_case_kappa_matches_brute_force(seed, f):
    x = data(seed)
    out = x[:7].mean(0) + 0.3
    got = float(metrics.worst_case_kappa(out, x, f))
    assert got == pytest.approx(worst_case_kappa_ref(out, x, f), rel=1e-4)


def test_worst_case_kappa_refuses_too_many_subsets():
    with pytest.raises(ValueError, match="max_subsets"):
        metrics.worst_case_kappa(np.zeros(2), np.zeros((30, 2), np.float32), 10, max_subsets=1000)
    with pytest.raises(ValueError):
        metrics.worst_case_kappa(np.zeros(2), np.zeros((4, 2), np.float32), 2)


# --------------------------------------------------------------------------- kappa_bound


@pytest.mark.parametrize("n,f", [(17, 4), (17, 8), (9, 2), (10, 0), (11, 5)])
def test_kappa_bound_values(n, f):
    """Appendix 8.1 (Props. 2-5) and Lemma 1."""
    r = f / (n - 2 * f)
    expected = {
        "cwtm": 6 * f / (n - 2 * f) * (1 + f / (n - 2 * f)),
        "krum": 6 * (1 + r),
        "gm": 4 * (1 + r) ** 2,
        "cwmed": 4 * (1 + r) ** 2,
    }
    for name, k in expected.items():
        assert metrics.kappa_bound(name, n, f) == pytest.approx(k)
        assert metrics.kappa_bound("nnm+" + name, n, f) == pytest.approx(8 * f / (n - f) * (k + 1))


def test_kappa_bound_known_numbers():
    # n = 17, f = 4: f/(n-2f) = 4/9
    assert metrics.kappa_bound("cwtm", 17, 4) == pytest.approx(24 / 9 * 13 / 9)
    assert metrics.kappa_bound("krum", 17, 4) == pytest.approx(6 * 13 / 9)
    assert metrics.kappa_bound("gm", 17, 4) == pytest.approx(4 * (13 / 9) ** 2)
    assert metrics.kappa_bound("nnm+cwmed", 17, 4) == pytest.approx(32 / 13 * (4 * (13 / 9) ** 2 + 1))


@pytest.mark.parametrize("name", ["mean", "nnm+mean", "caf", "bucketing+cwtm", "nnm+nnm+cwtm"])
def test_kappa_bound_unknown_rule(name):
    with pytest.raises(ValueError):
        metrics.kappa_bound(name, 17, 4)


def _attacked(seed, n, f):
    rng = np.random.default_rng(seed)
    honest = data(seed, n=n - f)
    kind = seed % 4
    if kind == 0:
        byz = atk.alie(honest, f, eta=float(rng.uniform(0.5, 10)))
    elif kind == 1:
        byz = atk.foe(honest, f, eta=float(rng.uniform(1.5, 5)))
    elif kind == 2:
        byz = honest[0] + 1e-2 * rng.normal(size=(f, honest.shape[1]))
    else:
        byz = honest.mean(0) + 20 * rng.normal(size=(f, honest.shape[1]))
    return np.concatenate([honest, np.asarray(byz, np.float32)])[rng.permutation(n)]


_BASE_RULES = {name: jax.jit(nnmjax.rule(name, 2)) for name in ["cwtm", "krum", "gm", "cwmed"]}


@pytest.mark.parametrize("name", sorted(_BASE_RULES))
def test_aggregators_respect_their_proven_kappa(name):
    """Propositions 2-5 checked on attacked inputs with the brute-force Definition 2."""
    n, f = 9, 2
    for seed in range(8):
        x = _attacked(seed, n, f)
        assert worst_case_kappa_ref(_BASE_RULES[name](x), x, f) <= metrics.kappa_bound(name, n, f)


def test_lower_bound_proposition6():
    """No rule beats kappa >= f/(n-2f) (Proposition 6): the proven bounds are above it."""
    n, f = 9, 2
    for name in ["cwtm", "krum", "gm", "cwmed"]:
        assert metrics.kappa_bound(name, n, f) >= f / (n - 2 * f)


# --------------------------------------------------------------------------- tree


def _worker_tree(n):
    rng = np.random.default_rng(0)
    return {
        "dense": {"w": jnp.asarray(rng.normal(size=(n, 3, 2)), jnp.float32),
                  "b": jnp.asarray(rng.normal(size=(n, 2)), jnp.float32)},
        "conv": [jnp.asarray(rng.normal(size=(n, 2, 2, 1)), jnp.float32),
                 (jnp.asarray(rng.normal(size=(n,)), jnp.float32),)],
    }


def test_ravel_workers_round_trip():
    n = 5
    t = _worker_tree(n)
    x, unravel = tree.ravel_workers(t)
    assert x.shape == (n, 3 * 2 + 2 + 2 * 2 + 1)
    assert tree.num_workers(t) == n
    for i in range(n):
        back = unravel(x[i])
        expected = jax.tree.map(lambda leaf: leaf[i], t)
        assert jax.tree.structure(back) == jax.tree.structure(expected)
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(expected)):
            assert a.shape == b.shape
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        # each row is that worker's flattened pytree
        flat = np.concatenate([np.ravel(np.asarray(leaf)) for leaf in jax.tree.leaves(expected)])
        np.testing.assert_array_equal(np.asarray(x[i]), flat)


def test_ravel_workers_with_a_rule_and_unravel_the_aggregate():
    n = 9
    t = _worker_tree(n)
    x, unravel = tree.ravel_workers(t)
    agg_tree = unravel(nnmjax.rule("nnm+cwtm", 2)(x))
    assert jax.tree.structure(agg_tree) == jax.tree.structure(jax.tree.map(lambda l: l[0], t))
    assert agg_tree["dense"]["w"].shape == (3, 2)


def test_ravel_workers_under_jit():
    t = _worker_tree(4)
    x_jit = jax.jit(lambda tr: tree.ravel_workers(tr)[0])(t)
    np.testing.assert_array_equal(np.asarray(x_jit), np.asarray(tree.ravel_workers(t)[0]))


def test_mismatched_leading_axes_raise():
    t = _worker_tree(4)
    t["dense"]["b"] = jnp.zeros((5, 2))
    with pytest.raises(ValueError, match="leading"):
        tree.ravel_workers(t)
    with pytest.raises(ValueError):
        tree.num_workers(t)


def test_scalar_leaf_and_empty_tree_raise():
    with pytest.raises(ValueError):
        tree.ravel_workers({"a": jnp.zeros((3, 2)), "s": jnp.float32(1.0)})
    with pytest.raises(ValueError):
        tree.ravel_workers({})
