"""``nnmjax.rule``: name parsing, composition, options, errors, jit/vmap."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnmjax
from nnmjax.robust import aggregators as agg
from nnmjax.robust import preaggregators as pre
from nnmjax.robust.rules import Rule, known_names

F = 2


def data(seed, n=9, d=6):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d) + rng.normal(size=d)
    return x.astype(np.float32)


_JITTED: dict = {}


def jitted(name, f=F, **options):
    """A jitted rule, cached: every call with the same shapes reuses one compilation."""
    k = (name, f, tuple(sorted(options.items())))
    if k not in _JITTED:
        r = nnmjax.rule(name, f, **options)
        _JITTED[k] = jax.jit(r) if not r.randomized else jax.jit(lambda x, key: r(x, key=key))
    return _JITTED[k]


def _close(a, b, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("name,stages", [
    ("cwtm", ("cwtm",)),
    ("nnm+cwtm", ("nnm", "cwtm")),
    ("bucketing+krum", ("bucketing", "krum")),
    ("arc+nnm+gm", ("arc", "nnm", "gm")),
    ("clipping+nnm+cwmed", ("clipping", "nnm", "cwmed")),
    (" nnm + cwtm ", ("nnm", "cwtm")),
])
def test_parse(name, stages):
    r = nnmjax.rule(name, F)
    assert isinstance(r, Rule)
    assert r.stages == stages
    assert r.name == "+".join(stages)
    assert r.f == F
    assert r.randomized == ("bucketing" in stages)
    assert repr(r).startswith(f"rule({r.name!r}, f={F}")


COMPOSITIONS = {
    "cwtm": lambda x: agg.cwtm(x, F),
    "nnm+cwtm": lambda x: agg.cwtm(pre.nnm(x, F), F),
    "arc+nnm+gm": lambda x: agg.gm(pre.nnm(pre.arc(x, F), F), F),
    "clipping+nnm+cwmed": lambda x: agg.cwmed(pre.nnm(pre.clipping(x, F), F), F),
    "nnm+krum": lambda x: agg.krum(pre.nnm(x, F), F),
    "nnm+multikrum": lambda x: agg.multikrum(pre.nnm(x, F), F),
    "arc+cwtm": lambda x: agg.cwtm(pre.arc(x, F), F),
    "nnm+cge": lambda x: agg.cge(pre.nnm(x, F), F),
    "nnm+bulyan": lambda x: agg.bulyan(pre.nnm(x, 1), 1),  # n = 9 >= 4f + 3 needs f <= 1
}


@pytest.mark.parametrize("name", sorted(COMPOSITIONS))
def test_rule_equals_manual_composition(name):
    x = data(1) * 3  # norms above the clipping threshold 2
    r = jax.jit(nnmjax.rule(name, 1 if name.endswith("bulyan") else F))
    manual = jax.jit(COMPOSITIONS[name])
    _close(r(x), manual(x))


@pytest.mark.parametrize("name", ["dnc", "signguard"])
def test_randomized_aggregator_rule_passes_its_key(name):
    """``nnm+dnc`` / ``nnm+signguard`` with a key: the aggregator of NNM's rows, called with
    the same key (the rule draws no other randomness)."""
    x = data(4, d=40)
    key = jax.random.key(5)
    r = nnmjax.rule(f"nnm+{name}", F, **({"sub_dim": 10} if name == "dnc" else {}))
    assert r.randomized
    opts = {"sub_dim": 10} if name == "dnc" else {}
    manual = agg.AGGREGATORS[name](pre.nnm(x, F), F, key=key, **opts)
    _close(jax.jit(lambda z, k: r(z, key=k))(x, key), manual)
    with pytest.raises(ValueError, match="randomized"):
        r(x)


def test_bucketing_rule_is_the_aggregator_of_some_bucketing():
    """``bucketing+krum`` with a key is krum applied to a bucketing of the rows (drawn from a key
    derived from the given one): with Krum the output is one bucket mean."""
    n = 10
    x = data(2, n=n)
    r = jitted("bucketing+krum")
    key = jax.random.key(3)
    out = np.asarray(r(x, key))
    np.testing.assert_array_equal(out, np.asarray(r(x, key)))  # same key, same output
    manual = jax.jit(lambda z, k: agg.krum(pre.bucketing(z, F, key=k), F))
    candidates = [key, *jax.random.split(key)]
    assert any(np.allclose(out, np.asarray(manual(x, k)), atol=1e-6) for k in candidates)
    # the output is the mean of s = floor(n/2f) = 2 rows
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    assert any(np.allclose(out, (x[i] + x[j]) / 2, atol=1e-5) for i, j in pairs)
    outs = {tuple(np.round(np.asarray(r(x, jax.random.key(k))), 5)) for k in range(8)}
    assert len(outs) > 1  # the key matters


@pytest.mark.parametrize("attack", ["optimal_alie", "optimal_foe"])
def test_bucketing_cwtm_is_bucketing_cwmed_in_the_papers_setting(attack):
    """n = 17, f = 4 (paper Table 2): Bucketing leaves ceil(17 / s) = 9 = 2f + 1 rows
    (s = floor(n / 2f) = 2), and CWTM trimming f per side of 9 values keeps only the
    middle one, the coordinate-wise median. So Bucketing + CWTM is Bucketing + CWMed bit for
    bit, outputs and optimal attacks alike; this is why the paper prints identical rows
    for the two in Table 2."""
    from nnmjax.robust import attacks

    x = jnp.asarray(data(5, n=17, d=50))
    key = jax.random.key(3)
    cwtm, cwmed = nnmjax.rule("bucketing+cwtm", 4), nnmjax.rule("bucketing+cwmed", 4)
    np.testing.assert_array_equal(cwtm(x, key=key), cwmed(x, key=key))
    search = getattr(attacks, attack)
    by_cwtm, eta_cwtm = search(x[:13], 4, rule=cwtm, key=key, return_eta=True)
    by_cwmed, eta_cwmed = search(x[:13], 4, rule=cwmed, key=key, return_eta=True)
    assert float(eta_cwtm) == float(eta_cwmed)
    np.testing.assert_array_equal(by_cwtm, by_cwmed)
    assert not np.array_equal(nnmjax.rule("cwtm", 4)(x), nnmjax.rule("cwmed", 4)(x))


def test_options_go_to_the_aggregator():
    x = data(3)
    r = nnmjax.rule("gm", 2, max_iter=3)
    assert r.options == {"max_iter": 3}
    _close(jax.jit(r)(x), jax.jit(lambda z: agg.gm(z, 2, max_iter=3))(x))
    opts = dict(nu=0.1, max_iter=3, tol=0.0, init="zero")
    _close(jitted("nnm+gm", 2, **opts)(x), jax.jit(lambda z: agg.gm(pre.nnm(z, 2), 2, **opts))(x))
    _close(jitted("nnm+multikrum", 2, m=3)(x),
           jax.jit(lambda z: agg.multikrum(pre.nnm(z, 2), 2, m=3))(x))


def test_design_example_gm_with_f4():
    x = data(4, n=11)
    r = nnmjax.rule("gm", 4, max_iter=3)
    assert r.f == 4 and r.options == {"max_iter": 3}
    _close(jax.jit(r)(x), jax.jit(lambda z: agg.gm(z, 4, max_iter=3))(x))


def test_pre_options_go_to_their_stage():
    x = data(5) * 3
    r = nnmjax.rule("clipping+nnm+cwtm", F, pre_options={"clipping": {"c": 0.5}})
    assert r.pre_options == {"clipping": {"c": 0.5}}
    out = np.asarray(jax.jit(r)(x))
    _close(out, jax.jit(lambda z: agg.cwtm(pre.nnm(pre.clipping(z, F, c=0.5), F), F))(x))
    assert not np.allclose(out, np.asarray(jitted("clipping+nnm+cwmed")(x)))
    rb = nnmjax.rule("bucketing+cwtm", F, pre_options={"bucketing": {"s": 1}})
    # s = 1 is a pure shuffle, and CWTM is permutation invariant
    _close(jax.jit(lambda z, k: rb(z, key=k))(x, jax.random.key(0)),
           jitted("cwtm")(x))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["foo", "nnm+foo", "foo+cwtm", "cwtm+nnm", "nnm", "",
                                  "nnm++cwtm", "+cwtm", "cwtm+"])
def test_bad_names_raise_value_error_listing_known_names(name):
    with pytest.raises(ValueError) as err:
        nnmjax.rule(name, F)
    msg = str(err.value)
    for known in ("cwtm", "krum", "gm", "nnm", "bucketing"):
        assert known in msg


def test_aggregator_first_order_raises_with_hint():
    with pytest.raises(ValueError, match="cwtm"):
        nnmjax.rule("cwtm+nnm", F)


def test_known_names_lists_everything():
    text = known_names()
    for name in list(agg.AGGREGATORS) + list(pre.PREAGGREGATORS):
        assert name in text


@pytest.mark.parametrize("name,options", [
    ("gm", {"max_iters": 3}),
    ("cwtm", {"eta": 1.0}),
    ("nnm+krum", {"m": 3}),
    ("cwtm", {"key": 1}),
])
def test_unknown_options_raise(name, options):
    with pytest.raises(ValueError, match="option"):
        nnmjax.rule(name, F, **options)


def test_bad_pre_options_raise():
    with pytest.raises(ValueError, match="clipping"):
        nnmjax.rule("nnm+cwtm", F, pre_options={"clipping": {"c": 1.0}})
    with pytest.raises(ValueError, match="option"):
        nnmjax.rule("clipping+cwtm", F, pre_options={"clipping": {"tau": 1.0}})
    with pytest.raises(ValueError, match="option"):
        nnmjax.rule("nnm+cwtm", F, pre_options={"nnm": {"k": 1}})


@pytest.mark.parametrize("f", [-1, 1.5, "2", None, True])
def test_bad_f_raises(f):
    with pytest.raises(ValueError, match="f"):
        nnmjax.rule("cwtm", f)


def test_too_many_byzantine_for_n_raises_on_call():
    with pytest.raises(ValueError, match="n"):
        nnmjax.rule("nnm+cwtm", 5)(data(0, n=9))


@pytest.mark.parametrize("name", ["bucketing+krum", "bucketing+cwmed", "arc+bucketing+cwtm",
                                  "bucketing+nnm+cwtm"])
def test_randomized_rules_need_a_key(name):
    r = nnmjax.rule(name, F)
    assert r.randomized
    with pytest.raises(ValueError, match="key"):
        r(data(0, n=10))
    shape = jax.eval_shape(lambda z, k: r(z, key=k), data(0, n=10), jax.random.key(0)).shape
    assert shape == (6,)


# --------------------------------------------------------------------------- jit / vmap


@pytest.mark.parametrize("name,options", [
    ("nnm+cwtm", {}), ("clipping+nnm+cwmed", {}), ("cwtm", {}),
    # GM's default stopping rule (relative objective decrease <= tol, decided on float32 noise)
    # may stop one iteration apart under vmap and jit (~1e-3 relative); pin the iterations.
    ("arc+nnm+gm", dict(max_iter=5, tol=0.0)),
])
def test_rule_under_jit_and_vmap(name, options):
    r = nnmjax.rule(name, F, **options)
    xs = np.stack([data(s) * 3 for s in range(3)])
    traces = []

    def counted(x):
        traces.append(1)
        return r(x)

    jr = jax.jit(counted)
    singles = [np.asarray(jr(x)) for x in xs]
    assert len(traces) == 1
    batched = np.asarray(jax.jit(jax.vmap(r))(xs))
    assert batched.shape == (3, 6)
    for i in range(3):
        _close(batched[i], singles[i])


def test_randomized_rule_under_jit_and_vmap():
    r = nnmjax.rule("bucketing+cwmed", F)
    xs = np.stack([data(s, n=10) for s in range(3)])
    keys = jax.random.split(jax.random.key(1), 3)
    jr = jax.jit(r)
    batched = np.asarray(jax.jit(jax.vmap(lambda x, k: r(x, key=k)))(xs, keys))
    for i in range(3):
        _close(batched[i], jr(xs[i], key=keys[i]))


def test_rule_is_differentiable():
    r = nnmjax.rule("nnm+cwtm", F)
    g = jax.jit(jax.grad(lambda x: jnp.sum(r(x))))(jnp.asarray(data(7)))
    assert g.shape == (9, 6) and np.all(np.isfinite(np.asarray(g)))


# --------------------------------------------------------------------------- bad rows


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e38])
@pytest.mark.parametrize("name", ["nnm+cwtm", "arc+nnm+gm", "clipping+nnm+cwmed", "nnm+krum",
                                  "bucketing+cwtm"])
def test_composed_rules_with_bad_rows(name, bad):
    x = data(8, n=10)
    honest = np.delete(x, [1, 6], axis=0).astype(np.float64)
    x[1] = bad
    x[6, :3] = bad
    r = jitted(name)
    out = np.asarray(r(x, jax.random.key(0)) if "bucketing" in name else r(x), np.float64)
    assert np.all(np.isfinite(out))
    spread = np.sqrt(np.mean(np.sum((honest - honest.mean(0)) ** 2, axis=1)))
    assert np.linalg.norm(out - honest.mean(0)) <= 2 * spread


# --------------------------------------------------------------------------- CAF through rule


def caf_ref(x, f, max_rounds):
    """CAF as nnmjax documents it (exact top eigenpair, at most ``max_rounds`` rounds)."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    c = np.ones(n)
    best, best_lam = None, np.inf
    for _ in range(max_rounds):
        if c.sum() <= n - 2 * f:
            break
        mu = c @ x / c.sum()
        diffs = x - mu
        cov = (c[:, None] * diffs).T @ diffs / c.sum()
        lams, vecs = np.linalg.eigh(cov)
        if lams[-1] < best_lam:
            best, best_lam = mu, lams[-1]
        tau = np.where(c > 0, (diffs @ vecs[:, -1]) ** 2, 0.0)
        c = np.where(tau >= tau.max(), 0.0, c * (1 - tau / tau.max()))
    return best


def test_rule_caf_matches_documented_algorithm():
    f = 3
    r = jax.jit(nnmjax.rule("caf", f))
    for seed in range(1, 4):
        x = data(seed, n=11, d=7)
        x[-f:] += np.float32(6.0) * np.arange(1, f + 1, dtype=np.float32)[:, None]
        _close(r(x), caf_ref(x, f, max_rounds=11), rtol=1e-4, atol=1e-4)


_ROBUST = ["cwmed", "cwtm", "gm", "krum", "multikrum", "mda", "meamed", "monna", "smea", "caf",
           "nnm+cwtm", "bucketing+cwmed"]


@pytest.mark.parametrize("name", [
    n for n in _ROBUST])
def test_rules_resist_far_outliers(name):
    """f = 3 of 11 rows at 1e3: every robust rule stays within the honest spread of the honest
    mean (CClip from 0 and the mean are not robust by design and are left out)."""
    f = 3
    r = jitted(name, f)
    for seed in range(3):
        x = data(seed, n=11, d=7)
        x[-f:] = np.float32(1e3)
        honest = x[:-f].astype(np.float64)
        spread = np.sqrt(np.mean(np.sum((honest - honest.mean(0)) ** 2, axis=1)))
        out = r(x, jax.random.key(seed)) if "bucketing" in name else r(x)
        assert np.linalg.norm(np.asarray(out, np.float64) - honest.mean(0)) <= spread
