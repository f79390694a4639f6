"""Aggregation rules (``nnmjax.robust.aggregators``) against independent float64 references, their
symmetries, the paper's proven (f, kappa)-robustness bounds on adversarial inputs, bad input,
argument validation, JAX transformations and the sorting network.

Shapes are kept few and small so that every jitted function is compiled once and reused
(see ``jitted``); JAX compilation dominates the run time.
"""
from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnmjax
import reference as ref
from retrace import assert_compiles_once
from rulecases import ORIGIN_DEPENDENT, PEER_RULES, build, call, feasible, largest_f
from nnmjax.robust import _order, aggregators, metrics
from nnmjax.robust.aggregators import AGGREGATORS

NAMES = sorted(AGGREGATORS)
PROVEN = ["cwtm", "krum", "gm", "cwmed"]
COMPOSED = ["nnm+" + r for r in PROVEN]
KAPPA_RULES = PROVEN + COMPOSED
ALL_RULES = NAMES + COMPOSED

# (n, d, f): n in {5, 9, 17}, d in {1, 3, 20}; f = 0, the largest f, and the paper's regimes.
CONFIGS = [(5, 3, 0), (5, 1, 2), (9, 3, 2), (17, 20, 4), (17, 3, 8)]
PROP_CONFIGS = [(9, 3, 2), (17, 20, 4)]

#: ``gm`` is compared with the reference at its tightest setting.
GM_TIGHT = {"tol": 0.0, "max_iter": 500}



def cases(names, configs, xfail=None):
    """pytest params (name, config), strict-xfailed where ``xfail[(name, config)]`` (or
    ``xfail[(name, None)]``) names a known bug."""
    xfail = xfail or {}
    out = []
    for name in names:
        for c in configs:
            reason = xfail.get((name, c)) or xfail.get((name, None))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            if not feasible(name, c[0], c[2]):
                marks = [pytest.mark.skip(reason=f"{name} needs more rows for f={c[2]}")]
            out.append(pytest.param(name, c, marks=marks,
                                    id="{}-n{}-d{}-f{}".format(name, *c)))
    return out


# ----------------------------------------------------------------------------- helpers

_JIT: dict = {}


def jitted(name: str, f: int, batched: bool = False, **opts):
    """A cached ``jax.jit`` of ``nnmjax.rule(name, f, **opts)`` (vmapped over a leading axis
    when ``batched``), so that each (rule, f, options, shape) compiles once per session."""
    key = (name, f, batched, tuple(sorted(opts.items())))
    if key not in _JIT:
        r = build(name, f, **opts)
        fn = r if not batched else jax.vmap(r)
        _JIT[key] = jax.jit(fn)
    return _JIT[key]


def make_x(n: int, d: int, seed: int, *, offset: float = 1.0) -> np.ndarray:
    """Heterogeneous float32 rows: a random centre, per-coordinate scales in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.5, 2.0, size=d)
    centre = offset * rng.normal(size=d)
    return (centre + rng.normal(size=(n, d)) * scales).astype(np.float32)


def config_x(n, d, f):
    return make_x(n, d, seed=1000 * n + 10 * d + f)


def rms_spread(x) -> float:
    x = np.asarray(x, np.float64)
    return float(np.sqrt(np.mean(np.sum((x - x.mean(axis=0)) ** 2, axis=1))))


def default_opts(name):
    """The options the tests use: ``gm`` at its tightest; ``signguard`` on all coordinates
    (deterministic, so that the reference applies; the random block has its own test)."""
    return {"gm": dict(GM_TIGHT), "signguard": {"fraction": 1.0}}.get(name, {})


def assert_rule_close(name, actual, expected, x, what=""):
    """float32 agreement: rtol 1e-4 / atol 1e-5 (scaled by the data); ``gm`` to 5e-3 of the
    data's spread, because its stopping rule limits it (see test_gm_tol0_reaches_float32_accuracy)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.max(np.abs(np.asarray(x, np.float64)[np.isfinite(x)]))))
    if name.endswith("gm"):
        err = np.linalg.norm(actual - expected)
        assert err <= 5e-3 * rms_spread(x), f"{name} {what}: |a - b| = {err:.3g}"
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=f"{name} {what}")


# ------------------------------------------------------------- 1. agreement with reference

EXTRA_OPTIONS = [("cclip", {"tau": 1.0, "n_iter": 3}), ("multikrum", {"m": 3}),
                 ("monna", {"idx": 2})]


@pytest.mark.parametrize("name,config", cases(NAMES, CONFIGS))
def test_matches_reference(name, config):
    n, d, f = config
    x = config_x(n, d, f)
    out = np.asarray(jitted(name, f, **default_opts(name))(x))
    assert out.shape == (d,) and out.dtype == np.float32
    expected = ref.REFERENCES[name](x, f)
    if name == "gm":
        # Objective within 1e-4 (relative) of the float64 optimum, position within 5e-3 spread.
        best = ref.gm_objective(expected, x)
        assert ref.gm_objective(out, x) <= best * (1 + 1e-4)
    assert_rule_close(name, out, expected, x)


@pytest.mark.parametrize("name,opts", EXTRA_OPTIONS, ids=lambda v: str(v))
@pytest.mark.parametrize("config", [(9, 3, 2), (17, 20, 4)], ids=lambda c: "n{}-d{}-f{}".format(*c))
def test_matches_reference_with_options(name, opts, config):
    n, d, f = config
    x = config_x(n, d, f)
    out = jitted(name, f, **opts)(x)
    assert_rule_close(name, out, ref.REFERENCES[name](x, f, **opts), x, str(opts))


#: First n past the sorting network (coordinate-wise rules sort; ``combine`` is one matmul).
N_SORT = _order.NETWORK_MAX_N + 1


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("mda", "smea")] + ["nnm+cwtm"])
def test_matches_reference_past_network(name):
    n, d, f = N_SORT, 3, 8
    x = make_x(n, d, seed=n)
    out = jitted(name, f, **default_opts(name))(x)
    assert_rule_close(name, out, ref.rule(name, f)(x), x)


@pytest.mark.parametrize("name", ["cwtm", "cwmed"])
def test_matches_reference_large_network(name):
    """64 < n <= NETWORK_MAX_N: the network runs in stages (optimization barriers)."""
    n, d, f = 97, 3, 20
    x = make_x(n, d, seed=n)
    assert_rule_close(name, jitted(name, f)(x), ref.rule(name, f)(x), x)




@pytest.mark.parametrize("name", [
    n
    for n in NAMES])
def test_single_row(name):
    """n = 1, f = 0: every rule returns the row (cclip too: its norm is below tau)."""
    if not feasible(name, 1, 0):
        pytest.skip(f"{name} needs at least 3 rows")
    x = np.array([[0.5, -2.0, 3.0]], np.float32)
    np.testing.assert_allclose(jitted(name, 0)(x), x[0], rtol=1e-6)


@pytest.mark.parametrize("rule_name", COMPOSED)
@pytest.mark.parametrize("config", [(9, 3, 2), (17, 20, 4)], ids=lambda c: "n{}-d{}-f{}".format(*c))
def test_composed_matches_reference(rule_name, config):
    n, d, f = config
    x = config_x(n, d, f)
    out = jitted(rule_name, f, **default_opts(rule_name))(x)
    assert_rule_close(rule_name, out, ref.rule(rule_name, f)(x), x)


def test_nnm_matches_reference():
    for n, d, f in [(9, 3, 2), (17, 20, 4), (5, 1, 2)]:
        x = config_x(n, d, f)
        got = jax.jit(nnmjax.robust.preaggregators.nnm, static_argnums=1)(x, f)
        np.testing.assert_allclose(got, ref.nnm(x, f),
                                   rtol=1e-4, atol=1e-5 * np.abs(x).max())


def test_gm_tol0_reaches_float32_accuracy():
    """``gm(x, f, tol=0, max_iter=500)`` should be as accurate as float32 Weiszfeld allows
    (running the same iteration for all 500 steps reaches <= 5e-7 of the spread on these
    inputs, whose median is far from every data point)."""
    for n, d, f in [(9, 3, 2), (17, 20, 4), (17, 3, 8)]:
        x = config_x(n, d, f)
        z = ref.gm(x)
        assert np.min(np.linalg.norm(x - z, axis=1)) > 0.05 * rms_spread(x)  # well-conditioned
        out = np.asarray(jitted("gm", f, **GM_TIGHT)(x))
        err = np.linalg.norm(out - z) / rms_spread(x)
        assert err <= 1e-5, f"(n={n}, d={d}, f={f}): relative error {err:.2e}"


def test_gm_one_dimensional_is_the_median():
    """In one dimension the geometric median of an odd number of values is their median."""
    x = np.array([[-0.006188], [-1.5576648], [-1.7799814], [-0.5111921], [-1.3367459]],
                 np.float32)
    for opts in ({}, GM_TIGHT):
        out = np.asarray(jitted("gm", 2, **opts)(x))
        np.testing.assert_allclose(out, np.median(x, axis=0), atol=1e-5)


@pytest.mark.parametrize("config", [(9, 3, 2), (17, 20, 4)], ids=lambda c: "n{}-d{}-f{}".format(*c))
def test_gm_default_tolerance(config):
    """With the default ``tol=1e-6`` the objective is within 10 tol of the optimum."""
    n, d, f = config
    x = config_x(n, d, f)
    out = jitted("gm", f)(x)
    best = ref.gm_objective(ref.gm(x), x)
    assert ref.gm_objective(out, x) <= best * (1 + 1e-5)


def test_mean_and_cwmed_even_n():
    x = make_x(6, 3, seed=6)
    np.testing.assert_allclose(jitted("cwmed", 1)(x), ref.cwmed(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jitted("mean", 1)(x), x.mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jitted("cwtm", 1)(x), ref.cwtm(x, 1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jitted("meamed", 1)(x), ref.meamed(x, 1), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ 2. properties

@pytest.mark.parametrize("name,config", cases(NAMES, PROP_CONFIGS))
def test_permutation_invariance(name, config):
    n, d, f = config
    x = config_x(n, d, f)
    rng = np.random.default_rng(n + d + f)
    if name == "monna":  # x[idx] is the trusted row: permute the others only
        perm = np.concatenate([[0], 1 + rng.permutation(n - 1)])
    else:
        perm = rng.permutation(n)
    fn = jitted(name, f, **default_opts(name))
    if name == "mda":
        # Generic data does not make MDA's optimum unique: subsets that share the
        # diameter-defining pair tie exactly (the n=17 input has two optimal subsets), and the
        # first in index order wins, so compare with the reference on the permuted rows.
        want = ref.mda(x[perm], f)
    else:
        want = fn(x)
    assert_rule_close(name, fn(x[perm]), want, x, "permuted")


@functools.lru_cache(maxsize=None)
def _cclip_from(f):
    return jax.jit(lambda x, v: nnmjax.robust.aggregators.cclip(x, f, tau=1.0, n_iter=3, init=v))


@pytest.mark.parametrize("name,config", cases(NAMES, PROP_CONFIGS))
def test_translation_equivariance(name, config):
    n, d, f = config
    x = config_x(n, d, f)
    t = (3.0 * np.random.default_rng(7).normal(size=d)).astype(np.float32)
    if name in ORIGIN_DEPENDENT - {"cclip"}:
        pytest.skip(f"{name} depends on the origin (norms or signs)")
    if name == "cclip":  # the origin is special: translate the starting point too
        fn = _cclip_from(f)
        got = fn(x + t, t)
        want = np.asarray(fn(x, np.zeros_like(t))) + t
    else:
        fn = jitted(name, f, **default_opts(name))
        got, want = fn(x + t), np.asarray(fn(x)) + t
    assert_rule_close(name, got, want, x + t, "translated")


@pytest.mark.parametrize("name,config", cases(NAMES, PROP_CONFIGS))
def test_scaling_equivariance(name, config):
    n, d, f = config
    x = config_x(n, d, f)
    for a in (0.25, 4.0):
        if name == "cclip":  # tau is absolute: scale it with the data
            got = jitted("cclip", f, tau=a * 1.0, n_iter=3)(a * x)
            want = a * np.asarray(jitted("cclip", f, tau=1.0, n_iter=3)(x))
        else:
            fn = jitted(name, f, **default_opts(name))
            got, want = fn(a * x), a * np.asarray(fn(x))
        assert_rule_close(name, got, want, a * x, f"scaled by {a}")


@pytest.mark.parametrize("name", NAMES)
def test_identical_rows(name):
    """All rows equal -> every rule returns that row (no 0/0 in distances or covariances)."""
    x = np.tile(np.array([[0.5, -2.0, 3.0]], np.float32), (11, 1))
    out = np.asarray(jitted(name, 2, **default_opts(name))(x))
    if name == "cclip":
        np.testing.assert_allclose(out, ref.cclip(x, 2), rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(out, x[0], rtol=1e-6, atol=1e-6)


# --------------------------------------------------------- 3. proven bounds, adversarial

#: shapes also used elsewhere, so the (unbatched) jitted rules are compiled once
KAPPA_CONFIGS = [(5, 1, 2), (9, 3, 2), (17, 20, 4)]
BATCH = 80
SEARCH_ROUNDS = 12


def _honest_draws(h, d, rng):
    """Three heterogeneous honest populations: Gaussian, heavy-tailed, two clusters."""
    centre = rng.normal(size=d)
    scales = rng.uniform(0.5, 2.0, size=d)
    gauss = centre + rng.normal(size=(h, d)) * scales
    heavy = centre + rng.standard_t(2.5, size=(h, d)) * scales
    split = np.where(np.arange(h)[:, None] < h // 2, 1.0, -1.0)
    clusters = centre + 2.0 * split * rng.normal(size=d) + 0.3 * rng.normal(size=(h, d))
    return [gauss, heavy, clusters]


def _attacks(honest, f, rng):
    """The Byzantine rows (f, d) of several attacks against one honest population."""
    h, d = honest.shape
    mu, sd = honest.mean(axis=0), honest.std(axis=0)
    rms = rms_spread(honest)
    out = [np.tile(mu + z * sd, (f, 1)) for z in (-4, -2, -1, -0.5, 0.5, 1, 1.5, 2, 4)]
    out += [np.tile(-mu, (f, 1)), np.tile(-3 * mu, (f, 1))]             # sign flip, FOE
    u = rng.normal(size=(f, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    out += [np.tile(mu + 1e3 * rms * u[0], (f, 1)), mu + 1e3 * rms * u]  # far outliers
    out += [np.tile(honest[k], (f, 1)) for k in rng.choice(h, size=3, replace=False)]  # mimic
    for r in (0.5, 1.0, 2.0, 4.0):                                       # sphere around mu
        out += [mu + r * rms * u, np.tile(mu + r * rms * u[0], (f, 1))]
    # half at the honest extremes, half on the opposite side
    far = honest[np.argmax(np.linalg.norm(honest - mu, axis=1))]
    out += [np.tile(2 * mu - far, (f, 1))]
    return out


def _slack(out):
    """float32 rounding allowance on ||F - mean_S||^2 (matters only when a subset has zero
    variance, e.g. n - f copies of one row, where Definition 2 demands F = that row exactly)."""
    scale = np.maximum(1.0, np.max(np.abs(out), axis=-1))
    return (1e-5 * scale) ** 2


def _assemble(honest, byz, perm):
    """Rows (B, n, d) = (honest ++ byz)[perm] per instance."""
    x = np.concatenate([honest, byz], axis=1)
    return np.take_along_axis(x, perm[:, :, None], axis=1).astype(np.float32)


def _adversarial_search(rule_name, n, d, f, seed):
    """Attacks, then an elitist random search that perturbs the Byzantine rows to maximise
    the worst-case kappa. Returns the final population (x, kappa), best first.

    The objective is the float64 reference metric: ``nnmjax.robust.metrics.worst_case_kappa``
    averages over the wrong axis (test_library_worst_case_kappa_matches_reference)."""
    rng = np.random.default_rng(seed)
    h = n - f
    honest_list, byz_list = [], []
    for honest in _honest_draws(h, d, rng):
        for byz in _attacks(honest, f, rng):
            honest_list.append(honest)
            byz_list.append(byz)
    while len(honest_list) < BATCH:  # random Byzantine rows fill the batch
        k = rng.integers(len(honest_list))
        honest_list.append(honest_list[k])
        byz_list.append(honest_list[k].mean(axis=0) + rng.normal(size=(f, d)) * 3)
    honest = np.stack(honest_list[:BATCH])
    byz = np.stack(byz_list[:BATCH])
    perm = np.stack([rng.permutation(n) for _ in range(BATCH)])
    rule = jitted(rule_name, f)  # the rules' defaults (gm: tol=1e-6, max_iter=100)

    def evaluate(honest, byz, perm):
        x = _assemble(honest, byz, perm)
        out = np.stack([np.asarray(rule(xi), np.float64) for xi in x])
        return x, ref.worst_case_kappa_batch(out, x, f, slack=_slack(out))

    x, kap = evaluate(honest, byz, perm)
    assert np.all(np.isfinite(kap)), f"non-finite kappa for {rule_name}"
    spread = np.array([rms_spread(hh) for hh in honest])
    sigmas = np.array([0.01, 0.03, 0.1, 0.3, 1.0, 3.0])
    for _ in range(SEARCH_ROUNDS):
        parents = np.argsort(-kap)[: BATCH // 8]
        child = np.repeat(parents, 8)
        sig = sigmas[rng.integers(len(sigmas), size=BATCH)] * spread[child]
        mask = rng.random((BATCH, f)) < 0.6
        mask[np.arange(BATCH), rng.integers(f, size=BATCH)] = True  # move at least one row
        c_byz = byz[child] + (mask[:, :, None] * sig[:, None, None]
                              * rng.normal(size=(BATCH, f, d)))
        cx, ckap = evaluate(honest[child], c_byz, perm[child])
        pool_kap = np.concatenate([kap, ckap])
        keep = np.argsort(-pool_kap)[:BATCH]
        honest = np.concatenate([honest, honest[child]])[keep]
        byz = np.concatenate([byz, c_byz])[keep]
        perm = np.concatenate([perm, perm[child]])[keep]
        spread = np.concatenate([spread, spread[child]])[keep]
        x = np.concatenate([x, cx])[keep]
        kap = pool_kap[keep]
    return x, kap


@pytest.mark.parametrize("config", KAPPA_CONFIGS, ids=lambda c: "n{}-d{}-f{}".format(*c))
@pytest.mark.parametrize("rule_name", KAPPA_RULES)
def test_proven_kappa_holds_on_adversarial_inputs(rule_name, config):
    n, d, f = config
    bound = metrics.kappa_bound(rule_name, n, f)
    seed = zlib.crc32(f"{rule_name}{config}".encode())
    x, kap = _adversarial_search(rule_name, n, d, f, seed=seed)
    worst = kap[0]
    # the search is not vacuous: it gets near Proposition 6's universal lower bound
    assert worst >= 0.9 * f / (n - 2 * f)
    assert worst <= bound * (1 + 1e-4), (
        f"{rule_name} (n={n}, f={f}): worst_case_kappa {worst:.4g} > proven {bound:.4g}\n"
        f"x = {x[0].tolist()!r}")
    # Re-check the best instance with the loop reference.
    out = np.asarray(jitted(rule_name, f)(x[0]), np.float64)
    exact = ref.worst_case_kappa(out, x[0], f, slack=_slack(out))
    assert exact <= bound * (1 + 1e-4)
    np.testing.assert_allclose(exact, kap[0], rtol=1e-6)


@pytest.mark.parametrize("name", ["nnm", "krum", "gm", "cwtm"])
def test_kappa_bound_formulas(name):
    for n, f in [(5, 2), (9, 2), (17, 4), (17, 8), (100, 20)]:
        for rule_name in (name, f"nnm+{name}") if name != "nnm" else ("nnm+cwmed",):
            assert metrics.kappa_bound(rule_name, n, f) == pytest.approx(
                ref.kappa_bound(rule_name, n, f), rel=1e-12)
    with pytest.raises(ValueError):
        metrics.kappa_bound("mda", 9, 2)


#: (n, d, f): shapes compiled elsewhere in this file; the scalar instance is repeated across d.
PROP6_CASES = [(5, 1, 2), (9, 3, 2), (17, 20, 4), (17, 3, 8)]


@pytest.mark.parametrize("name", ALL_RULES)
def test_proposition6_lower_bound(name):
    """n - f zeros and f ones (scalar): no rule can beat kappa = f / (n - 2f)."""
    for n, d, f in PROP6_CASES:
        if not feasible(name, n, f):
            continue
        for ones_first in (False, True):
            col = np.r_[np.zeros(n - f), np.ones(f)]
            if ones_first:
                col = col[::-1].copy()
            x = np.tile(col[:, None], (1, d)).astype(np.float32)
            out = np.asarray(jitted(name, f, **default_opts(name))(x))
            assert np.all(np.isfinite(out))
            lower = f / (n - 2 * f)
            kap = ref.worst_case_kappa_batch(out[None], x[None], f)[0]
            assert kap >= lower * (1 - 1e-4), (name, n, f, out)


def test_worst_case_kappa_zero_over_zero():
    n, f = 9, 2
    x = np.r_[np.zeros(n - f), np.ones(f)][:, None].astype(np.float32)
    got = float(metrics.worst_case_kappa(np.zeros(1, np.float32), x, f))
    assert got == pytest.approx(f / (n - 2 * f), rel=1e-5)


def test_library_worst_case_kappa_matches_reference():
    # by hand: subsets of size 3 of {0, 1, 2, 10}; the worst is {1, 2, 10}: (1 - 13/3)^2 / (146/9)
    x = np.array([[0.0], [1.0], [2.0], [10.0]], np.float32)
    assert float(metrics.worst_case_kappa(np.ones(1, np.float32), x, 1)) == pytest.approx(
        (10 / 3) ** 2 / (146 / 9), rel=1e-5)


def test_reference_worst_case_kappa_by_hand():
    x = np.array([[0.0], [1.0], [2.0], [10.0]])
    assert ref.worst_case_kappa(np.ones(1), x, 1) == pytest.approx((10 / 3) ** 2 / (146 / 9))
    assert ref.worst_case_kappa_batch(np.ones((1, 1)), x[None], 1)[0] == pytest.approx(
        (10 / 3) ** 2 / (146 / 9))


def test_kappa_hat_matches_reference():
    x = config_x(9, 3, 2)
    out = np.asarray(jitted("cwtm", 2)(x)) + 0.3
    honest = x[:7].astype(np.float64)
    want = np.sum((out - honest.mean(0)) ** 2) / np.mean(np.sum((honest - honest.mean(0)) ** 2, 1))
    np.testing.assert_allclose(metrics.kappa_hat(out, x[:7], squared=True), want, rtol=1e-5)


# --------------------------------------------------------------------------- 4. bad input

BAD_KINDS = ["nan", "posinf", "neginf", "1e38", "-1e38", "mixed", "mixed_rows", "one_nan_coord",
             "inf_in_finite_row", "1e18"]


def _bad_rows(kind, k, d, rng):
    cyc = [np.nan, np.inf, -np.inf, 1e38, -1e38]
    if kind == "nan":
        return np.full((k, d), np.nan)
    if kind == "posinf":
        return np.full((k, d), np.inf)
    if kind == "neginf":
        return np.full((k, d), -np.inf)
    if kind == "1e38":
        return np.full((k, d), 1e38)
    if kind == "-1e38":
        return np.full((k, d), -1e38)
    if kind == "mixed":  # NaN, +-inf and 1e38 inside the same row
        return np.array([[cyc[(i + j) % 5] for j in range(d)] for i in range(k)])
    if kind == "mixed_rows":
        return np.array([[cyc[i % 5]] * d for i in range(k)])
    if kind == "one_nan_coord":  # otherwise a plausible row
        rows = rng.normal(size=(k, d))
        rows[:, 0] = np.nan
        return rows
    if kind == "inf_in_finite_row":
        rows = rng.normal(size=(k, d))
        rows[:, -1] = np.inf
        return rows
    if kind == "1e18":  # finite, and so is its squared norm: not a "far" row
        return np.full((k, d), 1e18) * np.sign(rng.normal(size=(k, d)))
    raise AssertionError(kind)


def _bad_input_cases(rule_name, kind):
    """(x, honest rows, number of bad rows k, f) for both configs, k = f and k = 1, bad rows at
    the front (not for monna, whose row 0 is trusted) and at random positions."""
    for n, d, f in [(9, 3, 2), (17, 20, 4)]:
        f = min(f, largest_f(rule_name, n))
        rng = np.random.default_rng(n * 7 + d)
        honest_all = config_x(n, d, f).astype(np.float64)
        for k in sorted({f, 1}):
            placements = [rng.choice(np.arange(1, n), size=k, replace=False)]
            if rule_name != "monna":
                placements.append(np.arange(k))
            for rows in placements:
                x = honest_all.copy()
                x[rows] = _bad_rows(kind, k, d, rng)
                honest = np.delete(honest_all, rows, axis=0)
                yield x.astype(np.float32), honest.astype(np.float32), k, f


@pytest.mark.parametrize("rule_name,kind", [
    pytest.param(r, k)
    if (r, k) == ("caf", "1e18") else (r, k) for r in ALL_RULES for k in BAD_KINDS])
def test_bad_rows_give_finite_robust_output(rule_name, kind):
    for x, honest, k, f in _bad_input_cases(rule_name, kind):
        before = x.copy()
        fn = jitted(rule_name, f, **default_opts(rule_name))
        out = np.asarray(fn(x))
        np.testing.assert_array_equal(x, before)  # never mutated
        assert out.shape == (x.shape[1],)
        if rule_name == "mean":  # not robust: it only has to run
            continue
        assert np.all(np.isfinite(out)), f"{rule_name}/{kind}: {out}"
        # kappa over the subsets S of size n - f of the honest rows
        kap = ref.worst_case_kappa(out, honest, f - k)
        if rule_name in KAPPA_RULES:
            limit = metrics.kappa_bound(rule_name, x.shape[0], f)
        else:
            limit = 100.0  # within 10x the honest RMS spread
        if rule_name == "cclip":
            # honest rows are unclipped (norm < tau): F - mean_H = (1/n) sum_B clip_B - (k/n) mean_H
            n = x.shape[0]
            gap = np.linalg.norm(out - honest.mean(axis=0))
            assert gap <= k / n * (100.0 + np.linalg.norm(honest.mean(axis=0))) * (1 + 1e-4) + 1e-4
        else:
            assert kap <= limit * (1 + 1e-4), f"{rule_name}/{kind} k={k}: kappa {kap:.4g} > {limit:.4g}"


@pytest.mark.parametrize("name", NAMES)
def test_input_not_mutated_eager(name):
    x = config_x(9, 3, 2)
    x[3] = np.nan
    x[5, 1] = np.inf
    before = x.copy()
    out = call(AGGREGATORS[name], name, x, largest_f(name, 9) and min(2, largest_f(name, 9)))
    np.testing.assert_array_equal(x, before)
    assert out.shape == (3,)


@pytest.mark.parametrize("name", NAMES)
def test_bad_f_and_shape_raise(name):
    fn = functools.partial(call, AGGREGATORS[name], name)
    x = config_x(11, 3, 2)
    for bad_f in (-1, 1.5, "2", None):
        with pytest.raises(ValueError, match=r"\bf\b"):
            fn(x, bad_f)
    for bad_f in (6, 11, 100):  # 2f >= n (mean ignores f beyond its type: it is not robust)
        if name != "mean":
            with pytest.raises(ValueError, match=r"n >= |f="):
                fn(x, bad_f)
    for bad_x in (x[0], x[None], np.zeros((0, 3), np.float32)):
        with pytest.raises(ValueError, match="shape"):
            fn(bad_x, 1 if name != "mean" else 0)
    with pytest.raises(ValueError, match=r"\bf\b"):  # also raised while tracing
        jax.jit(lambda x: fn(x, -1))(x)
    fn(x, np.int64(2))  # numpy integers are fine


def test_np_int_f_and_integer_input():
    x = np.arange(27, dtype=np.int32).reshape(9, 3)
    np.testing.assert_allclose(nnmjax.robust.aggregators.cwtm(x, np.int32(2)), ref.cwtm(x, 2), rtol=1e-6)


@pytest.mark.parametrize("name", ["mda", "smea"])
def test_subset_rules_refuse_huge_enumerations(name):
    x = np.zeros((60, 2), np.float32)
    with pytest.raises(ValueError, match="max_subsets"):
        AGGREGATORS[name](x, 20)
    with pytest.raises(ValueError, match="max_subsets"):
        AGGREGATORS[name](config_x(9, 3, 2), 2, max_subsets=10)


def _psd_batches(count, k, seed):
    """Adversarial batches of ``count`` PSD ``k x k`` matrices for SMEA's pruned arg-min:
    random, identical copies (ties), all zero, a few NaN, one clear minimum."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(count, k, 3))
    rand = a @ np.swapaxes(a, 1, 2)
    tied = np.repeat(rand[:5], -(-count // 5), axis=0)[:count]
    nan = rand.copy()
    nan[[count - 1, count // 2]] = np.nan
    clear = rand + 10.0 * np.eye(k)
    clear[count - 3] = np.eye(k)
    return [rand, tied, np.zeros_like(rand), nan, clear]


@pytest.mark.parametrize("count", [40, 300, 1500])
def test_smea_pruned_argmin_equals_full_argmin(count):
    """The lower-bound pruning returns exactly ``jnp.argmin`` of the exact top eigenvalues:
    ties to the lowest index, NaN first, excluded matrices last, alone or vmapped."""
    from nnmjax.robust._spectral import argmin_top_eigenvalue

    rng = np.random.default_rng(count)
    batches = _psd_batches(count, 6, count)
    masks = [np.zeros(count, bool), rng.random(count) < 0.9, np.ones(count, bool)]
    fn = jax.jit(argmin_top_eigenvalue)
    for m in batches:
        top = np.linalg.eigvalsh(np.nan_to_num(m, nan=0.0))[:, -1]
        top = np.where(np.isnan(m).any(axis=(1, 2)), -np.inf, top)
        for mask in masks:
            want = int(np.argmin(np.where(mask, np.inf, top)))
            assert int(fn(jnp.asarray(m, jnp.float32), jnp.asarray(mask))) == want
    m = jnp.asarray(np.stack(batches), jnp.float32)
    got = jax.vmap(argmin_top_eigenvalue)(m, jnp.zeros(m.shape[:2], bool))
    assert got.tolist() == [int(fn(b, jnp.zeros(count, bool))) for b in m]
    mask = jnp.asarray(masks[1])
    want = [int(fn(b, mask)) for b in m]
    assert jax.vmap(argmin_top_eigenvalue, in_axes=(0, None))(m, mask).tolist() == want
    nested = jax.jit(jax.vmap(jax.vmap(argmin_top_eigenvalue, in_axes=(0, None)),
                              in_axes=(0, None)))(m[:4].reshape((2, 2) + m.shape[1:]), mask)
    assert nested.reshape(-1).tolist() == want[:4]


@pytest.mark.parametrize("d", [2, 9])
def test_smea_scatter_and_gram_matrices_pick_the_reference_subset(d):
    """``d < n - f`` takes the ``d x d`` scatter matrices, ``d >= n - f`` the centred Gram
    matrices: both pick the reference's subset on random rows, tied Byzantine copies and a
    large common offset."""
    n, f = 9, 2
    rng = np.random.default_rng(d)
    fn = jitted("smea", f)
    for case in range(3):
        x = rng.normal(size=(n, d)).astype(np.float32)
        if case == 1:
            x[-f:] = 3.0 * x[0]
        if case == 2:
            x += np.float32(1e4)
        np.testing.assert_allclose(np.asarray(fn(jnp.asarray(x))), ref.smea(x, f),
                                   rtol=1e-5, atol=1e-5 * (1 + np.abs(x).max()))


def test_smea_gradient_under_vmap():
    """``jax.grad`` of SMEA works under ``vmap`` (the arg-min is on stopped gradients; the
    lowering of its vmapped instances is tested in ``tests/test_platform.py``)."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 9, 4)), jnp.float32)
    grads = jax.jit(jax.vmap(jax.grad(lambda v: jnp.sum(aggregators.smea(v, 3)))))(x)
    assert grads.shape == x.shape and bool(jnp.all(jnp.isfinite(grads)))


@pytest.mark.parametrize("name,opts,word", [
    ("gm", {"nu": 0.0}, "nu"), ("gm", {"nu": -1.0}, "nu"), ("gm", {"max_iter": 0}, "max_iter"),
    ("gm", {"tol": -1.0}, "tol"), ("gm", {"init": "mean"}, "init"),
    ("multikrum", {"m": 0}, r"\bm\b"), ("multikrum", {"m": 10}, r"\bm\b"),
    ("multikrum", {"m": 2.5}, r"\bm\b"),
    ("monna", {"idx": 9}, "idx"), ("monna", {"idx": -1}, "idx"),
    ("cclip", {"tau": 0.0}, "tau"), ("cclip", {"n_iter": 0}, "n_iter"),
    ("cclip", {"init": np.zeros(2)}, "init"),
])
def test_bad_options_raise(name, opts, word):
    x = config_x(9, 3, 2)
    with pytest.raises(ValueError, match=word):
        AGGREGATORS[name](x, 2, **opts)


# --------------------------------------------------------------------------------- 5. JAX

@pytest.mark.parametrize("name", NAMES)
def test_jit_matches_eager(name):
    n, d, f = 11, 3, 2
    x = config_x(n, d, f)
    eager = call(AGGREGATORS[name], name, x, f, **default_opts(name))
    assert_rule_close(name, jitted(name, f, **default_opts(name))(x), eager, x, "jit vs eager")


@pytest.mark.parametrize("name", ALL_RULES)
def test_vmap_matches_loop(name):
    n, d, f = 11, 3, 2
    xs = np.stack([make_x(n, d, seed=s) for s in range(3)])
    batched = np.asarray(jitted(name, f, batched=True, **default_opts(name))(xs))
    single = jitted(name, f, **default_opts(name))
    for i in range(3):
        assert_rule_close(name, batched[i], single(xs[i]), xs[i], f"batch {i}")


@pytest.mark.parametrize("name", ALL_RULES)
def test_compiles_once_per_shape(name):
    r = build(name, min(2, largest_f(name, 7)))
    a, b = assert_compiles_once(r, [(make_x(7, 2, seed=1),), (make_x(7, 2, seed=2),)])
    assert not np.allclose(a, b)


def _grad_sum(name, f, x, **opts):
    r = nnmjax.rule(name, f, **opts)
    return np.asarray(jax.jit(jax.grad(lambda x: jnp.sum(r(x))))(jnp.asarray(x)), np.float64)


def test_grad_mean():
    x = config_x(9, 3, 2)
    np.testing.assert_allclose(_grad_sum("mean", 2, x), np.full(x.shape, 1 / 9), rtol=1e-6)


def test_grad_cwtm_is_trimmed_mask():
    n, d, f = 9, 3, 2
    x = config_x(n, d, f)
    rank = np.argsort(np.argsort(x, axis=0), axis=0)
    kept = (rank >= f) & (rank < n - f)
    np.testing.assert_allclose(_grad_sum("cwtm", f, x), kept / (n - 2 * f), atol=1e-7)


def test_grad_nnm_cwtm_matches_reference():
    """Locally NNM is linear, y = W x, and cwtm keeps fixed entries of y: the gradient of
    sum(cwtm(W x)) is W^T applied to the trimmed mask of y."""
    n, d, f = 9, 3, 2
    x = config_x(n, d, f)
    w = ref.nnm_matrix(x, f)
    y = w @ x.astype(np.float64)
    rank = np.argsort(np.argsort(y, axis=0), axis=0)
    mask = ((rank >= f) & (rank < n - f)) / (n - 2 * f)
    np.testing.assert_allclose(_grad_sum("nnm+cwtm", f, x), w.T @ mask, atol=1e-6)


GM_GRAD = {"tol": 0.0, "max_iter": 200}


def test_grad_gm_is_finite_and_close():
    n, d, f = 9, 3, 2
    x = config_x(n, d, f)
    want = ref.gm_grad_sum(x)
    for opts in ({}, GM_GRAD):
        g = _grad_sum("gm", f, x, **opts)
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, want, atol=0.05 * np.abs(want).max())


def test_grad_gm_matches_implicit_gradient():
    """Differentiating through Weiszfeld iterations that run to convergence gives the implicit
    gradient (to ~2e-6 relative here when all 200 iterations run)."""
    n, d, f = 9, 3, 2
    x = config_x(n, d, f)
    want = ref.gm_grad_sum(x)
    np.testing.assert_allclose(_grad_sum("gm", f, x, **GM_GRAD), want,
                               atol=1e-3 * np.abs(want).max())


def test_reference_gm_gradient_matches_finite_differences():
    x = config_x(9, 3, 2).astype(np.float64)
    g = ref.gm_grad_sum(x)
    rng = np.random.default_rng(3)
    for _ in range(3):
        v = rng.normal(size=x.shape)
        eps = 1e-5
        fd = (ref.gm(x + eps * v).sum() - ref.gm(x - eps * v).sum()) / (2 * eps)
        assert np.sum(g * v) == pytest.approx(fd, rel=1e-5, abs=1e-8)


# ------------------------------------------------------------------ 6. the sorting network

def _sort_input(n, seed):
    """Columns with many duplicates, +-inf, and a few all-equal columns."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, size=(n, 64)).astype(np.float32)
    x[rng.random((n, 64)) < 0.1] = np.inf
    x[rng.random((n, 64)) < 0.1] = -np.inf
    x[:, :4] = rng.normal(size=(n, 4))
    x[:, 4] = 2.0
    x[:, 5] = np.inf
    return x


def _sorted(x):
    s = _order.sorted_rows(jnp.asarray(x))
    return jnp.stack(s) if isinstance(s, list) else s


SORT_NS = sorted(set(range(1, 34)) | {63, 64, 65, 96, 97, 127, 128, 129, 130})


@pytest.mark.parametrize("n", [
    n
    for n in SORT_NS])
def test_sorted_rows_matches_numpy(n, monkeypatch):
    x = _sort_input(n, seed=n)
    big = np.finfo(np.float32).max  # sorted_rows sanitises: +-inf to the extremes
    want = np.sort(np.nan_to_num(x, nan=big, posinf=big, neginf=-big), axis=0)
    # whatever path n takes (fused or staged network, or sort); eager, since compiling
    # hundreds of comparators costs seconds
    np.testing.assert_array_equal(np.asarray(_sorted(x)), want)
    monkeypatch.setattr(_order, "NETWORK_MAX_N", max(n, 200))  # network, whatever n
    np.testing.assert_array_equal(np.asarray(_sorted(x)), want)
    monkeypatch.setattr(_order, "NETWORK_MAX_N", 0)  # sort path
    np.testing.assert_array_equal(np.asarray(jax.jit(_sorted)(x)), want)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_sort_columns_keys_every_dtype(dtype):
    """The integer-key sort of the n > NETWORK_MAX_N path equals NumPy's sort of the
    sanitised values in each float dtype: signed zeros, subnormals, the dtype's extremes,
    +-inf and NaN (to the top), ties."""
    dt = jnp.dtype(dtype)
    info = jnp.finfo(dt)
    special = [0.0, -0.0, float(info.tiny) / 4, -float(info.tiny) / 4, float(info.max),
               -float(info.max), np.inf, -np.inf, np.nan, 1.0, 1.0, -1.0]
    rng = np.random.default_rng(7)
    x = rng.choice(np.array(special + list(rng.normal(size=20)), np.float32), size=(140, 9))
    xd = jnp.asarray(x, dt)
    big = float(info.max)
    want = np.sort(np.nan_to_num(np.asarray(xd, np.float32), nan=big, posinf=big, neginf=-big),
                   axis=0)
    got = jax.jit(_order.sort_columns)(xd)
    assert got.dtype == dt
    np.testing.assert_array_equal(np.asarray(got, np.float32), want)


def test_sort_columns_derivative_is_the_permutation():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(140, 5)), jnp.float32)
    w = jnp.arange(140.0)[:, None]
    got = jax.grad(lambda x: jnp.sum(w * _order.sort_columns(x)))(x)
    want = jax.grad(lambda x: jnp.sum(w * jnp.sort(x, axis=0)))(x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("copying", [False, True])
def test_host_sort_equals_xla_sort(copying, monkeypatch):
    """The CPU path sorts (and ranks, stably) in NumPy on the host, in blocks of columns,
    straight into XLA's buffer or, without ``buffer_callback``, copying: the same keys and
    ranks as NumPy, jitted and vmapped (a batch is one call), blocks of every size
    including a ragged last one."""
    if copying:
        monkeypatch.setattr(_order, "_buffer_callback", None)
    monkeypatch.setattr(_order, "HOST_BLOCK", 5)
    x = jnp.asarray(np.stack([_sort_input(140, seed=s)[:, :23] for s in range(3)]))
    keys = _order._ordered_key(_order.sanitize(x))
    sort = jax.jit(jax.vmap(_order.host_sort))
    np.testing.assert_array_equal(np.asarray(sort(keys)), np.sort(np.asarray(keys), axis=1))
    got = jax.jit(jax.vmap(lambda k: _order.host_sort(k, ranks=True)))(keys)
    assert got.dtype == jnp.int32
    order = np.argsort(np.asarray(keys), axis=1, kind="stable")
    np.testing.assert_array_equal(np.argsort(np.asarray(got), axis=1), order)


@pytest.mark.parametrize("n", [1, 2, 17, 32, 33, 140])
def test_ranks_every_path(n, monkeypatch):
    """``ranks`` (pairwise comparisons, host, XLA) is the inverse of NumPy's stable argsort
    of the sanitised values, ties to the lower index, NaN and +inf above every finite value
    (the input has no signed zeros, where the host's keys order ``-0.0`` first)."""
    x = jnp.asarray(_sort_input(n, seed=n + 1))
    big = np.finfo(np.float32).max
    v = np.nan_to_num(np.asarray(x), nan=big, posinf=big, neginf=-big)
    want = np.argsort(np.argsort(v, axis=0, kind="stable"), axis=0, kind="stable")
    np.testing.assert_array_equal(np.asarray(jax.jit(_order.ranks)(x)), want)
    monkeypatch.setattr(_order, "RANKS_MAX_N", 0)
    np.testing.assert_array_equal(np.asarray(jax.jit(_order.ranks)(x)), want)
    monkeypatch.setattr(_order, "HOST_SORT", False)
    np.testing.assert_array_equal(np.asarray(jax.jit(_order.ranks)(x)), want)


@pytest.mark.parametrize("n", [17, 140])
@pytest.mark.parametrize("window", [(3, 14), (8, 9), (7, 9, 0.5)])
def test_window_sum_every_path(n, window, monkeypatch):
    """``window_sum`` (CWTM's window, CWMed's middle) on the network, on the host and through
    XLA's sort agree with NumPy on values with ties and non-finite entries, and their
    derivatives are the window of the sorting permutation."""
    start, stop, *scale = window
    scale = scale[0] if scale else 1.0
    x = jnp.asarray(_sort_input(n, seed=n))
    big = np.finfo(np.float32).max
    with np.errstate(over="ignore"):
        want = scale * np.sort(np.nan_to_num(np.asarray(x), nan=big, posinf=big, neginf=-big),
                               axis=0)[start:stop].sum(axis=0)
    fn = jax.jit(lambda x: _order.window_sum(x, start, stop, scale=scale))
    finite = np.isfinite(want)
    np.testing.assert_allclose(np.asarray(fn(x))[finite], want[finite], rtol=1e-6, atol=1e-6)
    w = jnp.asarray(np.random.default_rng(1).normal(size=x.shape[1]), jnp.float32)
    xs = jnp.asarray(np.random.default_rng(2).normal(size=x.shape), jnp.float32)
    grad = jax.grad(lambda x: jnp.sum(w * _order.window_sum(x, start, stop, scale=scale)))
    ranks = np.argsort(np.argsort(np.asarray(xs), axis=0), axis=0)
    want_grad = scale * ((ranks >= start) & (ranks < stop)) * np.asarray(w)
    np.testing.assert_allclose(np.asarray(grad(xs)), want_grad, rtol=1e-6)
    monkeypatch.setattr(_order, "HOST_SORT", False)
    other = jax.jit(lambda x: _order.window_sum(x, start, stop, scale=scale))
    np.testing.assert_allclose(np.asarray(other(x)), np.asarray(fn(x)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad(xs)), want_grad, rtol=1e-6)


def test_cwtm_at_many_workers_vmapped_equals_one_by_one():
    """Past the network (n > 128) a vmapped batch of inputs is one host call per batch; each
    output equals the rule on its own input."""
    xs = jnp.asarray(np.random.default_rng(5).normal(size=(3, 150, 40)), jnp.float32)
    xs = xs.at[1, :20].set(jnp.inf)
    batched = jax.jit(jax.vmap(lambda x: aggregators.cwtm(x, 30)))(xs)
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(batched[i]),
                                      np.asarray(aggregators.cwtm(xs[i], 30)))


@pytest.mark.parametrize("n", range(1, 19))
def test_batcher_network_sorts_every_01_input(n):
    """0-1 principle: a comparator network sorts everything iff it sorts all 2^n 0-1 inputs."""
    bits = ((np.arange(2 ** n)[None, :] >> np.arange(n)[:, None]) & 1).astype(np.int8)
    rows = list(bits)
    for a, b in _order.batcher_pairs(n):
        assert 0 <= a < b < n
        rows[a], rows[b] = np.minimum(rows[a], rows[b]), np.maximum(rows[a], rows[b])
    s = np.stack(rows)
    assert np.all(s[:-1] <= s[1:])


def test_sanitize_and_sum_rows():
    x = jnp.array([[np.nan, np.inf, -np.inf, 1.5]], jnp.float32)
    big = np.finfo(np.float32).max
    np.testing.assert_array_equal(_order.sanitize(x), [[big, big, -big, 1.5]])
    y = config_x(5, 3, 0)
    want = y[1:4].sum(axis=0)
    np.testing.assert_allclose(_order.sum_rows([jnp.asarray(r) for r in y], 1, 4), want, rtol=1e-6)
    np.testing.assert_allclose(_order.sum_rows(jnp.asarray(y), 1, 4), want, rtol=1e-6)


def test_caf_power_iterations_for_large_n_match_the_exact_eigenpairs(monkeypatch):
    """Past CAF_EIGH_MAX_N rows CAF uses warm-started power iterations instead of eigh: the
    same output when the top eigenvalue stands out (anisotropic honest rows, far outliers)."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((40, 30)) * np.linspace(3.0, 0.5, 30)).astype(np.float32)
    x[:8] += 5.0
    exact = np.asarray(aggregators.caf(x, 8))
    monkeypatch.setattr(aggregators, "CAF_EIGH_MAX_N", 0)
    power = np.asarray(aggregators.caf(x, 8))
    np.testing.assert_allclose(power, exact, atol=1e-3)


@pytest.mark.slow
def test_every_rule_runs_at_a_thousand_workers():
    """n = 1000 (f = 200 NaN rows): every rule returns a finite vector near the honest mean
    with the algorithm chosen for that size; MDA and SMEA refuse to enumerate C(1000, 200).
    Bulyan, whose ``n - 2f`` Krum selections cost ``O(n^3)`` by definition (one algorithm
    at every size), runs at its smallest ``n`` for ``f = 99``: 399 rows."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1000, 48)) + 3.0).astype(np.float32)
    x[800:] = np.nan  # MoNNA trusts row 0
    honest = x[:800].mean(axis=0)
    spread = np.sqrt(np.mean(np.sum((x[:800] - honest) ** 2, axis=1)))  # ~ sqrt(48)
    for name in sorted(aggregators.AGGREGATORS):
        if name in ("mda", "smea"):
            with pytest.raises(ValueError, match="max_subsets"):
                nnmjax.rule(name, 200)(x)
            continue
        if name == "mean":
            continue
        for rule in (name,) if name in PEER_RULES else (name, "nnm+" + name):
            if name == "bulyan":  # n >= 4f + 3
                out = np.asarray(jax.jit(build(rule, 99))(np.concatenate([x[:300], x[-99:]])))
                assert out.shape == (48,) and np.isfinite(out).all(), rule
                assert np.linalg.norm(out - honest) < spread, rule
                continue
            out = np.asarray(jax.jit(build(rule, 200))(x))
            assert out.shape == (48,) and np.isfinite(out).all(), rule
            if name != "cclip":  # one step from the origin: (n - f)/n of the way, by design
                assert np.linalg.norm(out - honest) < spread, rule  # an honest row is ~spread away


@pytest.mark.parametrize("d, width", [(7, 16), (48, 16), (53, 16), (40_000, 16384)])
def test_gram_and_inner_over_column_blocks_match_numpy(d, width, monkeypatch):
    """The Gram and inner-product passes loop over blocks of columns: a tail only, full
    blocks only, both, and the default width at a large ``d``; same sums as float64 NumPy."""
    from nnmjax.robust import _gram

    monkeypatch.setattr(_gram, "block_columns", lambda n, d: min(width, d))
    rng = np.random.default_rng(d)
    x = rng.standard_normal((5, d)).astype(np.float32)
    centre = rng.standard_normal(d).astype(np.float32)
    v = rng.standard_normal(d).astype(np.float32)
    xc = x.astype(np.float64) - centre
    got = np.asarray(jax.jit(_gram.gram)(x, centre))
    np.testing.assert_allclose(got, xc @ xc.T, rtol=1e-5, atol=1e-3)
    geo = _gram.Geometry(jnp.asarray(x))
    b, vv = geo.inner(jnp.asarray(v))
    xg = x.astype(np.float64) - np.asarray(geo.centre)
    vg = v.astype(np.float64) - np.asarray(geo.centre)
    np.testing.assert_allclose(np.asarray(b), xg @ vg, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(float(vv), vg @ vg, rtol=1e-5)


def test_block_columns_stays_within_its_range():
    from nnmjax.robust._gram import block_columns

    assert [block_columns(n, 10**6) for n in (17, 100, 1000, 10**6)] == [16384, 4096, 1024, 1024]
    assert block_columns(17, 300) == 300
