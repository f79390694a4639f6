"""Every rule under the inputs an adversary chooses: ties, every placement of the bad rows,
non-finite and huge values in rows or single coordinates, and every floating dtype.

The guarantees checked (module docstring of :mod:`nnmjax.robust.aggregators`):

* with at most ``f`` bad rows, wherever they sit, the output is finite and within the
  rule's proven bound of the honest rows (``metrics.kappa_bound``; 100 times the honest
  spread for rules with no proven bound);
* the output does not depend on which indices the bad rows occupy (up to float32
  summation order), except where the definition says so (MoNNA's trusted row; Bucketing's
  random permutation);
* MeaMed averages the ``n - f`` values closest to the median, equidistant ones the lower
  first, whatever the workers' order (``reference.meamed``);
* float16, bfloat16, float32 and float64 inputs give outputs in the input's dtype, with
  the float32 guarantees (the rules compute in at least float32).

Each rule is compiled once per shape: the placements of one case are a batch under
``jax.vmap``.
"""
from __future__ import annotations

import math

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnmjax
import reference as ref
from rulecases import PEER_RULES, largest_f, min_n, randomized
from nnmjax.robust import metrics
from nnmjax.robust.aggregators import AGGREGATORS

PROVEN = ["cwtm", "krum", "gm", "cwmed"]
RULES = sorted(AGGREGATORS) + ["nnm+" + r for r in sorted(AGGREGATORS)
                               if r != "mean" and r not in PEER_RULES] + [
    "bucketing+cwtm", "arc+krum", "clipping+cwmed"]
#: rules whose output may depend on positions by definition: MoNNA's trusted row is row 0;
#: MDA's subsets of equal diameter (common: one pair sets the diameter) go to the first in
#: lexicographic order, as ByzFL's; Bulyan's last Krum rounds score two mutually nearest
#: rows equally (one neighbour each) and pick the lower index, as Flower
POSITIONAL = {"monna", "nnm+monna"}
TIE_BY_INDEX = {"mda", "nnm+mda", "bulyan", "nnm+bulyan"}
RANDOMIZED = {name for name in RULES if randomized(name)}


def _opts(name):
    return {"tol": 0.0, "max_iter": 300} if name.endswith("gm") else {}


def _batched(name, f):
    r = nnmjax.rule(name, f, **_opts(name))
    if r.randomized:
        return jax.jit(jax.vmap(lambda x: r(x, key=jax.random.key(0))))
    return jax.jit(jax.vmap(r))


def _honest(n, d, seed):
    rng = np.random.default_rng(seed)
    return (3.0 * rng.normal(size=d) + rng.normal(size=(n, d)) * rng.uniform(0.5, 2, d))


def _bad_rows(kind, honest, f, rng):
    """``f`` Byzantine rows of one kind (identical copies unless the kind says otherwise)."""
    d = honest.shape[1]
    mean, std = honest.mean(0), honest.std(0, ddof=1)
    one = {"nan": np.full(d, np.nan), "posinf": np.full(d, np.inf),
           "neginf": np.full(d, -np.inf), "1e38": np.full(d, 1e38), "-1e38": np.full(d, -1e38),
           "alie_copies": mean + 1.5 * std, "honest_copies": honest[0],
           "1e18": 1e18 * np.sign(rng.normal(size=d))}
    if kind in one:
        return np.repeat(one[kind][None], f, axis=0)
    rows = mean + std * rng.normal(size=(f, d))
    if kind == "one_nan_coord":
        rows[:, 0] = np.nan
    elif kind == "one_huge_coord":
        rows[:, -1] = -1e38
    elif kind == "mixed":  # NaN, +-inf and 1e38 in the same rows
        cyc = [np.nan, np.inf, -np.inf, 1e38, -1e38]
        rows = np.array([[cyc[(i + j) % 5] for j in range(d)] for i in range(f)])
    else:
        raise AssertionError(kind)
    return rows


KINDS = ["nan", "posinf", "neginf", "1e38", "-1e38", "1e18", "alie_copies", "honest_copies",
         "one_nan_coord", "one_huge_coord", "mixed"]


def _placements(n, f, rng, count=24):
    """Front, back, every evenly spaced pattern a sampling scheme could favour, and random."""
    out = {tuple(range(f)), tuple(range(n - f, n))}
    for step in range(2, n // f + 1):
        for start in range(n):
            rows = tuple(range(start, n, step))[:f]
            if len(rows) == f:
                out.add(rows)
    while len(out) < min(count, math.comb(n, f)):
        out.add(tuple(sorted(rng.choice(n, size=f, replace=False))))
    return sorted(out)


def _stack(honest, bad, placements):
    n = honest.shape[0] + bad.shape[0]
    xs = []
    for rows in placements:
        x = np.empty((n, honest.shape[1]))
        mask = np.zeros(n, bool)
        mask[list(rows)] = True
        x[mask], x[~mask] = bad, honest
        xs.append(x)
    return np.stack(xs).astype(np.float32)


def _limit(name, n, f):
    return metrics.kappa_bound(name, n, f) if name in PROVEN or (
        name.startswith("nnm+") and name[4:] in PROVEN) else 100.0


@pytest.mark.parametrize("n,f,d", [(17, 4, 20), (9, 4, 3)])
@pytest.mark.parametrize("name", RULES)
def test_bad_rows_anywhere(name, n, f, d):
    """Every kind of bad row at every favoured and random placement: finite, within the
    bound, and (for permutation-invariant rules) the same output wherever the rows sit."""
    if name in ("mda", "smea", "nnm+mda", "nnm+smea") and n == 17:
        f = 2  # C(17, 4) subsets are fine, but keep the enumeration small in CI
    f = min(f, largest_f(name, n))
    rng = np.random.default_rng(n * 100 + f)
    honest = _honest(n - f, d, seed=n + d).astype(np.float32).astype(np.float64)
    fn = _batched(name, f)
    placements = _placements(n, f, rng)
    if name in POSITIONAL:
        placements = [p for p in placements if 0 not in p]
    for kind in KINDS:
        if name == "mean" and kind not in ("alie_copies", "honest_copies", "1e18"):
            continue  # not robust: the mean of a NaN row is NaN
        bad = _bad_rows(kind, honest, f, rng)
        xs = _stack(honest, bad, placements)
        out = np.asarray(fn(xs), np.float64)
        assert np.all(np.isfinite(out)), f"{name}/{kind}: non-finite output"
        if name.endswith("cclip"):  # moves by at most f/n * (tau + |mean|) from the honest mean
            gap = np.linalg.norm(out - honest.mean(0), axis=1)
            assert np.all(gap <= f / n * (100 + np.linalg.norm(honest.mean(0))) * 1.001 + 1e-3)
        elif name != "mean":
            kap = ref.worst_case_kappa_batch(out, np.broadcast_to(honest, (len(out),) + honest.shape), 0)
            limit = _limit(name, n, f)
            assert np.all(kap <= limit * (1 + 1e-4)), (
                f"{name}/{kind}: kappa {kap.max():.4g} > {limit:.4g} at placement "
                f"{placements[int(np.argmax(kap))]}")
        if name not in RANDOMIZED and name not in TIE_BY_INDEX:
            spread = np.sqrt(np.mean(np.sum((honest - honest.mean(0)) ** 2, 1)))
            dev = np.max(np.linalg.norm(out - out[0], axis=1))
            allowed = 2e-3 * spread if kind != "1e18" or name != "mean" else 1e-5 * np.abs(out).max()
            assert dev <= allowed, (
                f"{name}/{kind}: output moves by {dev:.3g} with the bad rows' positions")


def _meamed_cases():
    rng = np.random.default_rng(7)
    # the issue's instance: eight identical Byzantine copies below the median, n = 17, f = 8
    h = rng.normal(size=(9, 300)) * 3
    yield np.concatenate([h, np.repeat(h.mean(0, keepdims=True) - 8.0, 8, 0)]), 8
    # few distinct values: ties everywhere, honest and Byzantine alike, both sides equidistant
    for n, f in [(5, 2), (9, 4), (17, 4), (17, 8), (10, 3)]:
        yield rng.integers(-3, 4, size=(n, 64)).astype(np.float64), f
    # copies of an honest value
    x = rng.normal(size=(17, 50))
    x[13:] = x[2]
    yield x, 4


@pytest.mark.parametrize("case", range(7))
def test_meamed_ties_take_the_closest_values(case):
    x, f = list(_meamed_cases())[case]
    x = x.astype(np.float32)
    want = ref.meamed(x, f)
    rng = np.random.default_rng(case)
    for perm in [np.arange(len(x)), rng.permutation(len(x)), rng.permutation(len(x))[::-1]]:
        out = np.asarray(nnmjax.robust.aggregators.meamed(x[perm], f))
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_meamed_the_issue_instance_by_hand():
    # sorted: eight copies of -4.765, the median 1.045, then larger values; n - f = 9 closest
    col = np.array([-4.765] * 8 + [1.045, 3.622, 3.7, 4.0, 4.4, 5.0, 5.5, 6.326, 7.542])
    want = (col[7:16].sum()) / 9  # one copy, the median and the next seven
    out = float(nnmjax.robust.aggregators.meamed(col[:, None].astype(np.float32), 8)[0])
    assert out == pytest.approx(want, rel=1e-6)


# ------------------------------------------------------------------------------- dtypes

DTYPES = ["float16", "bfloat16", "float32", "float64"]
#: relative accuracy of one rounding to the dtype
EPS = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 1e-5, "float64": 1e-5}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", RULES)
def test_every_dtype(name, dtype):
    """Output in the input's dtype, close to the float64 reference of the same (rounded)
    values, and finite with bad rows (NaN, +-Inf, the dtype's largest value)."""
    n, d, f = max(9, min_n(name, 2)), 3, 2  # rows 1 and 6 go bad: f = 2
    with jax.enable_x64(dtype == "float64"):
        dt = jnp.dtype(dtype)
        honest = _honest(n, d, seed=5)
        x = jnp.asarray(honest, dt)
        rounded = np.asarray(x.astype(jnp.float32), np.float64)
        r = nnmjax.rule(name, f, **_opts(name))
        call = (lambda x: r(x, key=jax.random.key(0))) if r.randomized else r
        fn = jax.jit(jax.vmap(call))
        big = float(jnp.finfo(dt).max)
        bad = np.array(rounded)
        batch = [rounded]
        for value in (np.nan, np.inf, -np.inf, big):
            b = bad.copy()
            b[[1, 6]] = value
            batch.append(b)
        one = rounded.copy()
        one[4, 1] = np.nan
        batch.append(one)
        out = fn(jnp.asarray(np.stack(batch), dt))
        assert out.dtype == dt, f"{name}: {out.dtype} for {dtype} input"
        out = np.asarray(out.astype(jnp.float32), np.float64)
        assert np.all(np.isfinite(out[0])), f"{name}/{dtype}: non-finite output {out[0]}"
        if not r.randomized and "+" not in name.replace("nnm+", ""):
            want = ref.rule(name, f, **_opts(name))(rounded)
            scale = np.max(np.abs(rounded))
            tol = (5e-3 if name.endswith("gm") else 0) * scale + 4 * EPS[dtype] * scale
            np.testing.assert_allclose(out[0], want, atol=tol, err_msg=f"{name}/{dtype}")
        if name in ("mean", "cclip", "nnm+cclip"):
            return  # not robust / bounded by tau, checked in test_bad_rows_anywhere
        assert np.all(np.isfinite(out)), f"{name}/{dtype}: non-finite output {out}"
        # S: the 7 rows other than 1 and 6; for the single bad coordinate, any 7 of the other 8
        for o, h, k in [(o, np.delete(rounded, [1, 6], 0), 0) for o in out[1:5]] + [
                (out[5], np.delete(rounded, [4], 0), 1)]:
            kap = ref.worst_case_kappa(o, h, k)
            assert kap <= _limit(name, n, f) * (1 + 1e-2), f"{name}/{dtype}: kappa {kap:.4g}"


def test_complex_input_is_refused():
    with pytest.raises(ValueError, match="real"):
        nnmjax.robust.aggregators.cwtm(jnp.ones((5, 2), jnp.complex64), 1)


def test_worst_case_kappa_batch_reference_is_used():
    # the batched reference used above agrees with the one-input one
    x = _honest(7, 3, seed=1)
    outs = np.stack([x.mean(0), x[0]])
    got = ref.worst_case_kappa_batch(outs, np.stack([x, x]), 1)
    want = [ref.worst_case_kappa(o, x, 1) for o in outs]
    np.testing.assert_allclose(got, want)


def test_placements_cover_the_evenly_spaced_rows():
    ps = _placements(17, 4, np.random.default_rng(0))
    assert (0, 4, 8, 12) in ps and (4, 8, 12, 16) in ps and (0, 1, 2, 3) in ps
    assert all(len(p) == 4 for p in ps) and len(set(ps)) == len(ps)
    assert all(p in ps for p in itertools.islice(ps, 3))
