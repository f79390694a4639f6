"""The adaptive attack (gradient ascent through the defence) and ByzFL's line search as the
optimal attacks' ``search="byzfl"``."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnmjax
from nnmjax.robust import attacks
from nnmjax.experiments import config
from nnmjax.optim import transforms
from retrace import assert_compiles_once

RULES = ["cwtm", "meamed", "krum", "gm", "cclip", "nnm+cwtm", "nnm+krum", "bucketing+mean",
         "arc+nnm+cwmed"]
#: GM with fewer Weiszfeld iterations: the tests' compile time is that of its gradient
GM = {"max_iter": 20}


def _rule(name):
    return nnmjax.rule(name, F, **(GM if name.endswith("gm") else {}))
H, F, D = 9, 3, 6


def _honest(kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "random":
        x = rng.normal(size=(H, D)) * rng.uniform(0.5, 2, D) + rng.normal(size=D)
    elif kind == "offset":  # a large common component
        x = 100.0 + rng.normal(size=(H, D))
    elif kind == "clustered":  # two clusters (heterogeneous workers)
        x = np.r_[rng.normal(size=(5, D)) + 3, rng.normal(size=(4, D)) - 3]
    else:
        raise AssertionError(kind)
    return jnp.asarray(x, jnp.float32)


def _damage(rule, honest, byz, key):
    x = jnp.concatenate([honest, byz])
    out = rule(x, key=key) if rule.randomized else rule(x)
    return float(jnp.sum(jnp.square(out - honest.mean(0))))


@pytest.mark.parametrize("name", RULES)
def test_adaptive_is_at_least_the_optimal_attacks(name):
    rule = _rule(name)
    key = jax.random.key(3) if rule.randomized else None
    kinds = ("random", "offset", "clustered")
    inputs = [_honest(kind, seed=len(name)) for kind in kinds]
    outs = assert_compiles_once(  # one compilation for the shape
        lambda h: (attacks.adaptive(h, F, rule=rule, key=key, steps=6),
                   attacks.optimal_alie(h, F, rule=rule, key=key),
                   attacks.optimal_foe(h, F, rule=rule, key=key)), [(h,) for h in inputs])
    for kind, honest, (adv, *optimal) in zip(kinds, inputs, outs):
        assert adv.shape == (F, D) and bool(jnp.all(jnp.isfinite(adv)))
        got = _damage(rule, honest, adv, key)
        for which, rows in zip(("optimal_alie", "optimal_foe"), optimal):
            want = _damage(rule, honest, rows, key)
            assert got >= want * (1 - 1e-4) - 1e-6, f"{name}/{kind}: {got} < {which} {want}"


def test_adaptive_improves_where_the_rule_has_a_gradient():
    """GM's output moves smoothly with the Byzantine rows: the ascent must gain on the start."""
    rule = _rule("gm")
    honest = _honest("random", seed=1)
    adv, *starts = jax.jit(lambda h: (attacks.adaptive(h, F, rule=rule, steps=20, lr=0.05),
                                      attacks.optimal_alie(h, F, rule=rule),
                                      attacks.optimal_foe(h, F, rule=rule)))(honest)
    start = max(_damage(rule, honest, rows, None) for rows in starts)
    assert _damage(rule, honest, adv, None) > start * (1 + 1e-6)


def test_adaptive_on_an_equivariant_rule_stays_in_the_span():
    """An equivariant rule's ascent runs in a frame of the span of the centred honest rows
    and its start (``d = 40 > h + 1``): GM's rows lie in the span of the centred honest
    rows and the two starts, and beat both strictly."""
    rule = _rule("gm")
    rng = np.random.default_rng(7)
    honest = jnp.asarray(rng.normal(size=(H, 40)) + rng.normal(size=40), jnp.float32)
    adv, *starts = jax.jit(lambda h: (attacks.adaptive(h, F, rule=rule, steps=20, lr=0.05),
                                      attacks.optimal_alie(h, F, rule=rule),
                                      attacks.optimal_foe(h, F, rule=rule)))(honest)
    s = honest.mean(0)
    span = np.concatenate([np.asarray(honest - s), np.asarray([b[0] - s for b in starts])]).T
    rows = np.asarray(adv - s).T
    coef = np.linalg.lstsq(span, rows, rcond=None)[0]
    np.testing.assert_allclose(span @ coef, rows, atol=1e-4 * np.abs(rows).max())
    start = max(_damage(rule, honest, b, None) for b in starts)
    assert _damage(rule, honest, adv, None) > start * (1 + 1e-6)


def test_adaptive_stops_at_a_fixed_point():
    """On a plateau of the rule (CWTM at a start whose Byzantine values are all trimmed: zero
    gradient) the ascent stops after one step: 50 steps evaluate the rule as often as one,
    and return the same rows; vmapped instances stop on their own."""
    calls = []
    cwtm = nnmjax.rule("cwtm", F)

    def counted(x):
        jax.debug.callback(lambda: calls.append(1))
        return cwtm(x)

    honest = jnp.stack([_honest("random", seed) for seed in range(2)])
    runs = {}
    for steps in (1, 50):
        calls.clear()
        fn = jax.jit(jax.vmap(lambda h: attacks.adaptive(h, F, rule=counted, steps=steps)))
        runs[steps] = (np.asarray(fn(honest)), len(calls))
    np.testing.assert_array_equal(runs[1][0], runs[50][0])
    assert runs[1][1] == runs[50][1]


def test_adaptive_constraints():
    """``"range"`` (over ``d``, NNM + CWTM) and ``"ball"`` (Krum: the ascent in a frame of
    the span, here on bfloat16 rows, returned in bfloat16)."""
    honest = _honest("random", seed=2)
    inside, ball = jax.jit(lambda h: (
        attacks.adaptive(h, F, rule=nnmjax.rule("nnm+cwtm", F), constraint="range", steps=3),
        attacks.adaptive(h.astype(jnp.bfloat16), F, rule=nnmjax.rule("krum", F),
                         constraint="ball", radius=0.5, steps=3)))(honest)
    lo, hi = honest.min(0), honest.max(0)
    assert bool(jnp.all((inside >= lo - 1e-5) & (inside <= hi + 1e-5)))
    assert ball.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(ball)))
    s = honest.astype(jnp.bfloat16).astype(jnp.float32).mean(0)
    assert float(jnp.max(jnp.linalg.norm(ball.astype(jnp.float32) - s, axis=1))) <= 0.5 * 1.01
    with pytest.raises(ValueError, match="constraint"):
        attacks.adaptive(honest, F, rule=nnmjax.rule("cwtm", F), constraint="box")


def test_adaptive_falls_back_for_caf_with_a_warning():
    honest = _honest("random", seed=3)
    rule = nnmjax.rule("caf", F)
    with pytest.warns(UserWarning, match="cannot be differentiated"):
        adv, *starts = jax.jit(lambda h: (attacks.adaptive(h, F, rule=rule),
                                          attacks.optimal_alie(h, F, rule=rule),
                                          attacks.optimal_foe(h, F, rule=rule)))(honest)
    best = max(_damage(rule, honest, rows, None) for rows in starts)
    assert _damage(rule, honest, adv, None) == pytest.approx(best, rel=1e-5)


def test_adaptive_in_an_optax_chain_and_a_config():
    rule = nnmjax.rule("nnm+cwtm", F)
    chain = transforms.inject_attack("adaptive", F, rule=rule)
    g = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(H, 4, 2)), jnp.float32)}
    out, _ = jax.jit(chain.update)(g, chain.init({"w": jnp.zeros((4, 2))}))
    assert out["w"].shape == (H + F, 4, 2)
    with pytest.raises(ValueError, match="rule"):
        transforms.inject_attack("adaptive", F)
    c = config.from_mapping({"attacks": ["adaptive"], "attack_search": "byzfl"})
    assert c.runs()[0].record_key()["attack_search"] == "byzfl"
    # the default search leaves a run's identity (and so its hash) as it was
    plain = config.from_mapping({"attacks": ["optimal_alie"]})
    assert "attack_search" not in plain.runs()[0].record_key()
    with pytest.raises(ValueError, match="attack_search"):
        config.from_mapping({"attack_search": "bisect"})


# ------------------------------------------------------------- ByzFL's line search


def _byzfl_line_search(damage, start=0.0, delta=10.0, ratio=0.8, evals=20):
    """ByzFL 0.0.11's expansion / contraction phases, transcribed from its documentation."""
    best_x, best_y = start, damage(start)
    remaining = evals - 1
    while remaining > 0:  # expansion
        prop = best_x + delta
        y = damage(prop)
        remaining -= 1
        if y > best_y:
            best_x, best_y, delta = prop, y, delta * 2
        else:
            delta *= ratio
            break
    while remaining > 0:  # contraction
        prop = best_x + delta
        y = damage(prop)
        remaining -= 1
        if y > best_y:
            best_x, best_y = prop, y
        delta *= ratio
    return best_x


@pytest.mark.parametrize("name", ["cwtm", "gm", "nnm+cwtm"])
def test_byzfl_search_follows_byzfl(name):
    """Step for step where the damage has no plateau (on Krum's plateaus the sequential
    search branches on float rounding of equal damages)."""
    rule = _rule(name)
    honest = _honest("random", seed=5)
    s = np.asarray(honest.mean(0))
    sigma = np.asarray(jnp.std(honest, 0, ddof=1))
    for attack, direction, offset in ((attacks.optimal_alie, sigma, 0.0),
                                      (attacks.optimal_foe, -s, 1.0)):
        def damage(tau):
            byz = np.repeat((s + (tau + offset) * direction)[None], F, 0)
            return _damage(rule, honest, jnp.asarray(byz, jnp.float32), None)

        want = _byzfl_line_search(damage) + offset
        _, eta = jax.jit(lambda h: attack(h, F, rule=rule, search="byzfl", return_eta=True))(honest)
        assert float(eta) == pytest.approx(want, rel=1e-4, abs=1e-4), attack.__name__


def test_unknown_search():
    with pytest.raises(ValueError, match="search"):
        attacks.optimal_alie(_honest("random", 0), F, rule=nnmjax.rule("cwtm", F), search="x")
