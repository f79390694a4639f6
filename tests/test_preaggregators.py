"""Pre-aggregators: NNM (paper Algorithm 2, Lemma 1, Lemma 5), Bucketing (Appendix 10),
static clipping and ARC, against small float64 NumPy references."""
from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnmjax
from nnmjax.robust import aggregators as agg
from nnmjax.robust import attacks as atk
from nnmjax.robust import metrics
from nnmjax.robust import preaggregators as pre
from retrace import assert_compiles_once

# --------------------------------------------------------------------------- references


def nnm_ref(x, f):
    """Each row -> mean of its n - f nearest rows (itself included, ties to the lower index)."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    d2 = np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
    out = np.empty_like(x)
    for i in range(n):
        di = d2[i].copy()
        di[i] = -1.0
        out[i] = x[np.argsort(di, kind="stable")[: n - f]].mean(axis=0)
    return out


def nnm_weights_ref(x, f):
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    d2 = np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
    w = np.zeros((n, n))
    for i in range(n):
        di = d2[i].copy()
        di[i] = -1.0
        w[i, np.argsort(di, kind="stable")[: n - f]] = 1.0 / (n - f)
    return w


F32_MAX = float(np.finfo(np.float32).max)


def _norm32(row):
    """The row's norm, or inf when float32 arithmetic cannot hold it: non-finite entries, or
    a squared norm that overflows float32 (e.g. entries of 1e38). The library documents that
    such rows become 0."""
    row = np.asarray(row, np.float64)
    if not np.all(np.isfinite(row)):
        return np.inf
    sq = float(np.sum(row ** 2))
    return np.sqrt(sq) if sq <= F32_MAX else np.inf


def worst_case_kappa_ref(out, x, f):
    """Definition 2 by brute force: max over S, |S| = n - f, of
    ||out - xbar_S||^2 / ((1/|S|) sum_S ||x_i - xbar_S||^2)."""
    x = np.asarray(x, np.float64)
    out = np.asarray(out, np.float64)
    n = x.shape[0]
    worst = 0.0
    for s in itertools.combinations(range(n), n - f):
        xs = x[list(s)]
        m = xs.mean(axis=0)
        worst = max(worst, np.sum((out - m) ** 2) / np.mean(np.sum((xs - m) ** 2, axis=1)))
    return worst


def clip_ref(x, c):
    x = np.asarray(x, np.float64)
    out = np.zeros_like(x)
    for i, row in enumerate(x):
        norm = _norm32(row)
        if not np.isfinite(norm):
            continue
        out[i] = row * min(1.0, c / norm) if norm > 0 else row
    return out


def arc_ref(x, f):
    """Clip the k = floor(2f(n-f)/n) largest-norm rows to the largest unclipped norm;
    non-finite rows count as the largest and become 0."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    k = (2 * f * (n - f)) // n
    if k == 0:
        return x.copy()
    norms = np.array([_norm32(row) for row in x])
    order = np.argsort(norms, kind="stable")
    threshold = norms[order[n - k - 1]]
    out = np.zeros_like(x)
    for i in range(n):
        if not np.isfinite(norms[i]):
            continue
        out[i] = x[i] if norms[i] <= threshold else x[i] * (threshold / norms[i])
    return out


def data(seed, n=9, d=6, scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d) + rng.normal(size=d)
    return (scale * x).astype(np.float32)


# One jitted entry point per (function, static args): compile once, reuse across tests.
nnm_jit = jax.jit(pre.nnm, static_argnums=1)
bucketing_jit = jax.jit(pre.bucketing, static_argnums=1, static_argnames="s")

# --------------------------------------------------------------------------- NNM


@pytest.mark.parametrize("n,f", [(9, 2), (9, 0), (9, 4), (5, 1), (40, 12)])
@pytest.mark.parametrize("seed", [0, 1])
def test_nnm_matches_reference(n, f, seed):
    x = data(seed, n=n)
    np.testing.assert_allclose(np.asarray(nnm_jit(x, f)), nnm_ref(x, f), rtol=1e-5, atol=1e-5)


def test_nnm_eager_equals_jit():
    x = data(3, n=5, d=3)
    np.testing.assert_allclose(np.asarray(pre.nnm(x, 2)), nnm_ref(x, 2),
                               rtol=1e-6, atol=1e-6)


def test_nnm_ties_go_to_the_lower_index():
    # Row 0 is equidistant from rows 1 and 2; with n - f = 2 it must pick row 1.
    x = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], np.float32)
    y = np.asarray(nnm_jit(x, 1))
    np.testing.assert_allclose(y, nnm_ref(x, 1), atol=1e-6)
    np.testing.assert_allclose(y[0], [0.5, 0.0], atol=1e-6)


def test_nnm_with_duplicate_rows_includes_itself():
    x = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [4.0, 0.0], [4.0, 0.0]], np.float32)
    np.testing.assert_allclose(np.asarray(nnm_jit(x, 2)), nnm_ref(x, 2), atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nnm_permutation_equivariance(seed):
    x = data(seed)
    perm = np.random.default_rng(seed + 100).permutation(x.shape[0])
    np.testing.assert_allclose(np.asarray(nnm_jit(x[perm], 2)), np.asarray(nnm_jit(x, 2))[perm],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nnm_translation_equivariance(seed):
    x = data(seed)
    shift = np.random.default_rng(seed + 200).normal(size=x.shape[1]).astype(np.float32) * 3
    np.testing.assert_allclose(np.asarray(nnm_jit(x + shift, 2)),
                               np.asarray(nnm_jit(x, 2)) + shift, rtol=1e-5, atol=1e-4)


def test_nnm_rows_with_large_common_component():
    # Spread ~1 around a common offset of 1000 (relative spread 1e-3); the float32 inputs are
    # exact in the float64 reference, so any difference is the library's own error.
    for seed in range(5):
        x = data(seed, n=9, d=10) + np.float32(1000.0)
        np.testing.assert_allclose(np.asarray(nnm_jit(x, 2)), nnm_ref(x, 2), rtol=1e-5, atol=1e-3)


def test_nnm_scale_equivariance():
    x = data(4)
    np.testing.assert_allclose(np.asarray(nnm_jit(x * 8, 2)), np.asarray(nnm_jit(x, 2)) * 8,
                               rtol=1e-5, atol=1e-4)


def _subset_variance(x, s):
    xs = x[list(s)]
    m = xs.mean(axis=0)
    return np.mean(np.sum((xs - m) ** 2, axis=1)), m


def _adversarial_inputs(seed, n, f):
    """Honest rows plus f Byzantine rows built by the paper's attacks and some outliers."""
    rng = np.random.default_rng(seed)
    honest = data(seed, n=n - f)
    kind = seed % 5
    if kind == 0:
        byz = np.asarray(atk.alie(honest, f, eta=float(rng.uniform(0.5, 20))))
    elif kind == 1:
        byz = np.asarray(atk.foe(honest, f, eta=float(rng.uniform(1.5, 10))))
    elif kind == 2:
        byz = np.asarray(atk.sign_flipping(honest, f))
    elif kind == 3:
        byz = honest.mean(0) + rng.normal(size=(f, honest.shape[1])) * 30
    else:
        # Byzantine rows that sit right next to one honest row, to drag its neighbourhood.
        byz = honest[0] + 1e-3 * rng.normal(size=(f, honest.shape[1]))
    x = np.concatenate([honest, byz.astype(np.float32)])
    return x[rng.permutation(n)]


@pytest.mark.parametrize("seed", range(10))
def test_nnm_lemma5_variance_reduction(seed):
    """Lemma 5: for every S of size n - f,
    (1/|S|) sum_S ||y_i - xbar_S||^2 <= 8f/(n-f) (1/|S|) sum_S ||x_i - xbar_S||^2."""
    n, f = 9, 2
    x = _adversarial_inputs(seed, n, f)
    y = np.asarray(nnm_jit(x, f), np.float64)
    x64 = x.astype(np.float64)
    for s in itertools.combinations(range(n), n - f):
        var_x, mean_x = _subset_variance(x64, s)
        lhs = np.mean(np.sum((y[list(s)] - mean_x) ** 2, axis=1))
        assert lhs <= 8 * f / (n - f) * var_x * (1 + 1e-5) + 1e-9


_LEMMA1_RULES = {name: jax.jit(nnmjax.rule(name, 2)) for name in
                 ["nnm+cwtm", "nnm+krum", "nnm+gm", "nnm+cwmed"]}


@pytest.mark.parametrize("name", sorted(_LEMMA1_RULES))
def test_nnm_lemma1_on_adversarial_inputs(name):
    """F o NNM is (f, kappa')-robust with kappa' <= 8f/(n-f)(kappa_F + 1) (Lemma 1), checked
    with the worst case over all S of size n - f on the paper's attacks."""
    n, f = 9, 2
    bound = metrics.kappa_bound(name, n, f)
    base = metrics.kappa_bound(name.split("+")[1], n, f)
    assert bound == pytest.approx(8 * f / (n - f) * (base + 1))
    rule = _LEMMA1_RULES[name]
    for seed in range(10):
        x = _adversarial_inputs(seed, n, f)
        assert worst_case_kappa_ref(rule(x), x, f) <= bound


def test_nnm_lemma1_via_worst_case_kappa():
    n, f = 9, 2
    bound = metrics.kappa_bound("nnm+cwtm", n, f)
    rule = _LEMMA1_RULES["nnm+cwtm"]
    for seed in range(10):
        x = _adversarial_inputs(seed, n, f)
        assert float(metrics.worst_case_kappa(rule(x), x, f)) <= bound


BAD_VALUES = [np.nan, np.inf, -np.inf, 1e38, -1e38]


@pytest.mark.parametrize("bad", BAD_VALUES)
@pytest.mark.parametrize("where", ["first", "last", "spread"])
def test_nnm_bad_rows_leave_honest_outputs_finite(bad, where):
    n, f, d = 9, 2, 6
    honest = data(7, n=n - f, d=d)
    x = np.empty((n, d), np.float32)
    bad_idx = {"first": [0, 1], "last": [n - 2, n - 1], "spread": [2, 6]}[where]
    honest_idx = [i for i in range(n) if i not in bad_idx]
    x[honest_idx] = honest
    x[bad_idx] = bad
    x[bad_idx[0], 0] = 0.5  # a row that is only partly bad
    y = np.asarray(nnm_jit(x, f))
    assert np.all(np.isfinite(y[honest_idx]))
    # With exactly f bad rows the n - f nearest rows of any honest row are the honest rows.
    np.testing.assert_allclose(y[honest_idx], np.broadcast_to(honest.mean(0), honest.shape),
                               rtol=1e-5, atol=1e-5)


def test_nnm_does_not_mutate_input():
    x = data(8)
    keep = x.copy()
    pre.nnm(x[:5], 2)  # eager (op by op) on a small slice
    np.testing.assert_array_equal(x, keep)
    nnm_jit(x, 2)
    np.testing.assert_array_equal(x, keep)
    xj = jnp.asarray(x)
    nnm_jit(xj, 2)
    np.testing.assert_array_equal(np.asarray(xj), keep)


def test_nnm_vmap_matches_loop():
    xs = np.stack([data(s) for s in range(4)])
    batched = jax.jit(jax.vmap(lambda x: pre.nnm(x, 2)))(xs)
    for i in range(4):
        np.testing.assert_allclose(np.asarray(batched[i]), nnm_ref(xs[i], 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(pre.PREAGGREGATORS))
def test_preaggregators_compile_once_per_shape(name):
    key = {"key": jax.random.key(0)} if name == "bucketing" else {}
    fn = pre.PREAGGREGATORS[name]
    outs = assert_compiles_once(lambda x: fn(x, 2, **key), [(data(seed),) for seed in range(3)])
    assert not np.allclose(outs[0], outs[1])


def test_nnm_is_differentiable():
    """NNM is piecewise linear, y = W x with W fixed by the neighbour sets: the gradient of
    sum(w * y) is W^T w."""
    x = data(9)
    f = 2
    cot = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    grad = jax.jit(jax.grad(lambda z: jnp.sum(pre.nnm(z, f) * cot)))(jnp.asarray(x))
    expected = nnm_weights_ref(x, f).T @ cot.astype(np.float64)
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5, atol=1e-5)
    # and it composes with an aggregator
    g2 = jax.jit(jax.grad(lambda z: jnp.sum(agg.cwtm(pre.nnm(z, f), f))))(jnp.asarray(x))
    assert np.all(np.isfinite(np.asarray(g2)))


def test_nnm_mixing_matrix():
    x = data(10)
    w = np.asarray(pre.mixing_matrix(jnp.asarray(x), 2))
    np.testing.assert_allclose(w, nnm_weights_ref(x, 2), atol=1e-7)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("bad", [dict(f=-1), dict(f=5), dict(f=2.5)])
def test_nnm_bad_f(bad):
    with pytest.raises(ValueError, match="f"):
        pre.nnm(data(0), **bad)


@pytest.mark.parametrize("shape", [(9,), (2, 9, 3), (0, 3)])
def test_nnm_bad_rank(shape):
    with pytest.raises(ValueError):
        pre.nnm(np.zeros(shape, np.float32), 0)


# --------------------------------------------------------------------------- Bucketing


def bucketing_ref(x, key, s):
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    perm = np.asarray(jax.random.permutation(key, n))
    return np.stack([x[perm[i:i + s]].mean(axis=0) for i in range(0, n, s)])


@pytest.mark.parametrize("n,f,s_expected", [(10, 2, 2), (11, 2, 2), (7, 1, 3), (10, 3, 1),
                                             (17, 4, 2), (9, 0, 1), (13, 2, 3)])
def test_bucketing_default_size_and_means(n, f, s_expected):
    assert pre.bucket_size(n, f) == s_expected
    x = data(n, n=n)
    key = jax.random.key(n + f)
    y = np.asarray(bucketing_jit(x, f, key=key))
    assert y.shape == (math.ceil(n / s_expected), x.shape[1])
    assert pre.output_size("bucketing", n, f) == y.shape[0]
    np.testing.assert_allclose(y, bucketing_ref(x, key, s_expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("s", [1, 3, 4, 10])
def test_bucketing_explicit_size_last_bucket_smaller(s):
    n = 10
    x = data(1, n=n)
    key = jax.random.key(5)
    y = np.asarray(bucketing_jit(x, 2, key=key, s=s))
    assert y.shape[0] == math.ceil(n / s) == pre.output_size("bucketing", n, 2, s=s)
    ref = bucketing_ref(x, key, s)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    if n % s:
        perm = np.asarray(jax.random.permutation(key, n))
        last = perm[(n // s) * s:]
        assert len(last) == n % s
        np.testing.assert_allclose(y[-1], x[last].astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)


def test_bucketing_same_key_same_output_different_keys_differ():
    x = data(2, n=12)
    k1, k2 = jax.random.key(0), jax.random.key(1)
    a = np.asarray(bucketing_jit(x, 2, key=k1))
    b = np.asarray(bucketing_jit(x, 2, key=k1))
    c = np.asarray(bucketing_jit(x, 2, key=k2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_bucketing_legacy_uint32_key():
    x = data(2, n=12)
    y = bucketing_jit(x, 2, key=jax.random.PRNGKey(3))
    np.testing.assert_allclose(np.asarray(y), bucketing_ref(x, jax.random.PRNGKey(3), 3),
                               rtol=1e-5, atol=1e-6)


def test_bucketing_key_none_raises():
    with pytest.raises(ValueError, match="key"):
        pre.bucketing(data(0, n=10), 2, key=None)


def test_bucketing_missing_key_is_refused_at_the_call():
    # the key is a required keyword-only argument (the API convention for randomized functions)
    with pytest.raises(TypeError, match="key"):
        pre.bucketing(data(0, n=10), 2)


@pytest.mark.parametrize("s", [0, 11, -1, 2.5])
def test_bucketing_bad_s(s):
    with pytest.raises(ValueError, match="s"):
        pre.bucketing(data(0, n=10), 2, key=jax.random.key(0), s=s)


def test_bucketing_jit_with_key_argument():
    x = data(3, n=10)
    traces = []

    def run(x, key):
        traces.append(1)
        return pre.bucketing(x, 2, key=key)

    fn = jax.jit(run)
    for k in range(3):
        key = jax.random.key(k)
        np.testing.assert_allclose(np.asarray(fn(x, key)), bucketing_ref(x, key, 2),
                                   rtol=1e-5, atol=1e-6)
    assert len(traces) == 1
    keys = jax.random.split(jax.random.key(9), 3)
    batched = jax.jit(jax.vmap(lambda k: pre.bucketing(x, 2, key=k)))(keys)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(batched[i]), bucketing_ref(x, keys[i], 2),
                                   rtol=1e-5, atol=1e-6)


def test_bucketing_clean_buckets_unaffected_by_bad_rows():
    n = 10
    x = data(4, n=n)
    x[3] = np.nan
    x[7] = np.inf
    key = jax.random.key(2)
    y = np.asarray(bucketing_jit(x, 2, key=key))
    perm = np.asarray(jax.random.permutation(key, n))
    for b in range(y.shape[0]):
        members = perm[2 * b:2 * b + 2]
        if 3 in members or 7 in members:
            continue
        np.testing.assert_allclose(y[b], x[members].astype(np.float64).mean(0),
                                   rtol=1e-5, atol=1e-6)


def test_bucketing_does_not_mutate_input():
    x = data(5, n=10)
    keep = x.copy()
    pre.bucketing(x, 2, key=jax.random.key(0))
    np.testing.assert_array_equal(x, keep)


# --------------------------------------------------------------------------- clipping


@pytest.mark.parametrize("c", [0.1, 2.0, 5.0, 1e6])
def test_clipping_matches_reference(c):
    x = data(6, n=9) * 3
    np.testing.assert_allclose(np.asarray(pre.clipping(x, 2, c=c)), clip_ref(x, c),
                               rtol=1e-5, atol=1e-6)


def test_clipping_default_threshold_is_two():
    x = data(6, n=9) * 3
    np.testing.assert_allclose(np.asarray(pre.clipping(x)), clip_ref(x, 2.0), rtol=1e-5, atol=1e-6)
    assert np.all(np.linalg.norm(np.asarray(pre.clipping(x)), axis=1) <= 2.0 * (1 + 1e-6))


def test_clipping_zero_row_stays_zero():
    x = data(6, n=5)
    x[2] = 0
    y = np.asarray(pre.clipping(x, 1, c=1.0))
    assert np.all(y[2] == 0) and np.all(np.isfinite(y))


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_clipping_bad_rows_become_zero(bad):
    x = data(7, n=9) * 3
    x[1] = bad
    x[4, 2] = bad
    y = np.asarray(pre.clipping(x, 2, c=2.0))
    assert np.all(np.isfinite(y))
    assert np.all(y[1] == 0) and np.all(y[4] == 0)
    np.testing.assert_allclose(y, clip_ref(x, 2.0), rtol=1e-5, atol=1e-6)


def test_clipping_does_not_mutate_and_jits():
    x = data(8, n=9) * 3
    keep = x.copy()
    y = jax.jit(lambda z: pre.clipping(z, 2, c=1.0))(x)
    pre.clipping(x, 2, c=1.0)
    np.testing.assert_array_equal(x, keep)
    np.testing.assert_allclose(np.asarray(y), clip_ref(x, 1.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("c", [0.0, -1.0])
def test_clipping_bad_threshold(c):
    with pytest.raises(ValueError, match="c"):
        pre.clipping(data(0), 2, c=c)


# --------------------------------------------------------------------------- ARC


@pytest.mark.parametrize("n,f", [(9, 2), (9, 4), (10, 3), (17, 4), (9, 0), (5, 1), (6, 6)])
@pytest.mark.parametrize("seed", [0, 1])
def test_arc_matches_reference(n, f, seed):
    x = data(seed, n=n) * np.random.default_rng(seed).uniform(0.1, 5.0, size=(n, 1)).astype(np.float32)
    y = np.asarray(pre.arc(x, f))
    np.testing.assert_allclose(y, arc_ref(x, f), rtol=1e-5, atol=1e-6)
    k = (2 * f * (n - f)) // n
    norms_in = np.linalg.norm(x.astype(np.float64), axis=1)
    norms_out = np.linalg.norm(y.astype(np.float64), axis=1)
    # exactly the k largest are changed (generic norms, no ties); they now share one norm
    changed = ~np.isclose(norms_in, norms_out, rtol=1e-6)
    assert changed.sum() == k
    if k:
        assert np.allclose(norms_out[changed], np.sort(norms_in)[n - k - 1], rtol=1e-5)


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_arc_bad_rows_become_zero(bad):
    n, f = 9, 2
    x = data(3, n=n)
    x[5] = bad
    y = np.asarray(pre.arc(x, f))
    assert np.all(np.isfinite(y))
    assert np.all(y[5] == 0)
    np.testing.assert_allclose(y, arc_ref(x, f), rtol=1e-5, atol=1e-6)


def test_arc_does_not_mutate_and_jits():
    x = data(4, n=9) * 4
    keep = x.copy()
    y = jax.jit(lambda z: pre.arc(z, 2))(x)
    pre.arc(x, 2)
    np.testing.assert_array_equal(x, keep)
    np.testing.assert_allclose(np.asarray(y), arc_ref(x, 2), rtol=1e-5, atol=1e-6)


def test_preaggregators_registry():
    assert set(pre.PREAGGREGATORS) == {"nnm", "bucketing", "clipping", "arc"}
    for name, fn in pre.PREAGGREGATORS.items():
        assert fn is getattr(pre, name)
