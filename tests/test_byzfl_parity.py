"""Numerical parity with ByzFL 0.0.11 where the definitions agree (docs/design.md, "The peer to beat: ByzFL").

ByzFL is optional (it brings torch): every test here is skipped when it is not installed.
Inputs are generic float32 NumPy arrays (no ties), so ByzFL's ``argpartition`` tie-breaking
never matters. ByzFL's Clipping and ARC modify their input in place, so they get copies.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

byzfl = pytest.importorskip("byzfl")

import jax  # noqa: E402

import nnmjax  # noqa: E402
from nnmjax.robust import aggregators as agg  # noqa: E402
from nnmjax.robust import attacks as atk  # noqa: E402
from nnmjax.robust import preaggregators as pre  # noqa: E402

pytestmark = pytest.mark.byzfl

N, F, D = 11, 3, 7
RTOL, ATOL = 1e-5, 1e-5


def _data(seed, n=N, d=D, scale=1.0, offset=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d) + rng.normal(size=d)
    return (scale * x + offset).astype(np.float32)


def _close(ours, theirs, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(ours, np.float64), np.asarray(theirs, np.float64),
                               rtol=rtol, atol=atol)


SEEDS = [0, 1, 2]

AGG_CASES = {
    "mean": (lambda: byzfl.Average(), lambda x: agg.mean(x, F)),
    "cwmed": (lambda: byzfl.Median(), lambda x: agg.cwmed(x, F)),
    "cwtm": (lambda: byzfl.TrMean(f=F), lambda x: agg.cwtm(x, F)),
    "krum": (lambda: byzfl.Krum(f=F), lambda x: agg.krum(x, F)),
    "multikrum": (lambda: byzfl.MultiKrum(f=F), lambda x: agg.multikrum(x, F)),
    "mda": (lambda: byzfl.MDA(f=F), lambda x: agg.mda(x, F)),
    "meamed": (lambda: byzfl.Meamed(f=F), lambda x: agg.meamed(x, F)),
    "monna": (lambda: byzfl.MoNNA(f=F), lambda x: agg.monna(x, F)),
    "monna_idx4": (lambda: byzfl.MoNNA(f=F, idx=4), lambda x: agg.monna(x, F, idx=4)),
    "gm": (lambda: byzfl.GeometricMedian(nu=0.1, T=3),
           lambda x: agg.gm(x, F, nu=0.1, max_iter=3, tol=0.0, init="zero")),
    "gm_T1": (lambda: byzfl.GeometricMedian(nu=0.1, T=1),
              lambda x: agg.gm(x, F, nu=0.1, max_iter=1, tol=0.0, init="zero")),
    "cclip": (lambda: byzfl.CenteredClipping(tau=1.5, L=1),
              lambda x: agg.cclip(x, F, tau=1.5, n_iter=1)),
    "cclip_L3": (lambda: byzfl.CenteredClipping(tau=1.5, L=3),
                 lambda x: agg.cclip(x, F, tau=1.5, n_iter=3)),
    "cclip_default": (lambda: byzfl.CenteredClipping(),
                      lambda x: agg.cclip(x, F)),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(AGG_CASES))
def test_aggregator_parity(name, seed):
    make_theirs, ours = AGG_CASES[name]
    x = _data(seed)
    theirs = make_theirs()(x.copy())
    _close(ours(x), theirs)


@pytest.mark.parametrize("seed", SEEDS)
def test_cclip_actually_clips(seed):
    # The cclip parity above is only meaningful if tau=1.5 clips some rows (distance from 0).
    x = _data(seed)
    norms = np.linalg.norm(x, axis=1)
    assert (norms > 1.5).any() and (norms < 1.5 * 50).all()


# --- pre-aggregators ---------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_nnm_parity(seed):
    x = _data(seed)
    _close(pre.nnm(x, F), byzfl.NNM(f=F)(x.copy()))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("f", [0, 1, 3, 5])
def test_arc_parity(seed, f):
    x = _data(seed)
    theirs_in = x.copy()
    theirs = byzfl.ARC(f=f)(theirs_in)
    _close(pre.arc(x, f), theirs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("c", [0.5, 2.0, 100.0])
def test_clipping_parity(seed, c):
    x = _data(seed)
    theirs = byzfl.Clipping(c=c)(x.copy())
    _close(pre.clipping(x, F, c=c), theirs)


def test_byzfl_clipping_and_arc_mutate_but_ours_do_not():
    # Documents why the tests above pass copies to ByzFL (docs/design.md, ByzFL's known defects).
    x = _data(0) * 10
    keep = x.copy()
    byzfl.Clipping(c=1.0)(x)
    assert not np.array_equal(x, keep)
    x = keep.copy()
    pre.clipping(x, F, c=1.0)
    pre.arc(x, F)
    np.testing.assert_array_equal(x, keep)


@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_bucketing_parity_given_the_same_permutation(s):
    # ByzFL draws its permutation from NumPy's global state: read it off with the same seed,
    # then feed ByzFL the rows arranged so that its permutation picks them in the order of ours.
    n = N
    x = _data(5)
    key = jax.random.key(11)
    ours = pre.bucketing(x, F, key=key, s=s)
    perm_jax = np.asarray(jax.random.permutation(key, n))
    np.random.seed(1234)
    perm_np = np.random.permutation(n)
    x_theirs = np.empty_like(x)
    x_theirs[perm_np] = x[perm_jax]
    np.random.seed(1234)
    theirs = byzfl.Bucketing(s=s)(x_theirs)
    assert ours.shape == theirs.shape
    _close(ours, theirs)


# --- CAF ---------------------------------------------------------------------------------

def _exact_top_eigenvector(dimension):
    """Stand-in for ``np.random.randn`` inside ByzFL's CAF: return the exact top eigenvector of
    the weighted covariance that CAF's one-step power iteration estimates, read from the
    caller's frame (``diffs``, and CAF's weights ``c``). One power step from an eigenvector is exact, so ByzFL's
    CAF becomes deterministic and comparable with nnmjax's exact ``eigh``."""
    frame = sys._getframe(1)
    diffs = np.asarray(frame.f_locals["diffs"], np.float64)
    c = np.asarray(frame.f_locals.get("c", np.ones(diffs.shape[0])), np.float64)  # SMEA: no c
    cov = (c[:, None] * diffs).T @ diffs / c.sum()
    _, vecs = np.linalg.eigh(cov)
    assert vecs.shape[0] == dimension
    return vecs[:, -1]


@pytest.mark.xfail(strict=True, reason=(
    "documented deviation: nnmjax's caf takes max tau over rows that still have weight (each "
    "round zeroes a row, at most n rounds); ByzFL takes it over all rows, including zeroed "
    "ones, which here takes 28-93 rounds and ends at a different filtered mean"))
@pytest.mark.parametrize("seed", SEEDS)
def test_caf_parity_with_exact_power_iteration(seed, monkeypatch):
    x = _data(seed)
    x[-F:] += np.float32(6.0) * np.arange(1, F + 1, dtype=np.float32)[:, None]
    monkeypatch.setattr(np.random, "randn", _exact_top_eigenvector)
    theirs = byzfl.CAF(f=F)(x.copy())
    _close(agg.caf(x, F), theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", SEEDS)
def test_smea_parity_with_exact_power_iteration(seed, monkeypatch):
    # ByzFL's SMEA scores each subset by a one-step power iteration from a random vector; made
    # exact (eigenvalue of sum_i d_i d_i^T, a constant multiple of nnmjax's covariance).
    x = _data(seed)
    x[-F:] += np.float32(4.0) * np.arange(1, F + 1, dtype=np.float32)[:, None]
    monkeypatch.setattr(np.random, "randn", _exact_top_eigenvector)
    theirs = byzfl.SMEA(f=F)(x.copy())
    _close(agg.smea(x, F), theirs)


def test_caf_loosely_with_random_power_iteration():
    # ByzFL's CAF as shipped (one random power step): with far outliers both outputs stay
    # within the honest spread of the honest mean.
    for seed in SEEDS:
        x = _data(seed)
        x[-F:] = np.float32(1e3)
        honest = x[:-F].astype(np.float64)
        spread = np.sqrt(np.mean(np.sum((honest - honest.mean(0)) ** 2, axis=1)))
        np.random.seed(seed)
        theirs = byzfl.CAF(f=F)(x.copy())
        assert np.linalg.norm(np.asarray(theirs, np.float64) - honest.mean(0)) <= spread
        ours = np.asarray(agg.caf(x, F), np.float64)
        assert np.linalg.norm(ours - honest.mean(0)) <= spread


# --- attacks -----------------------------------------------------------------------------

H = N - F


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("tau", [0.0, 1.5, -2.0, 7.25])
def test_alie_parity(seed, tau):
    h = _data(seed, n=H)
    theirs = byzfl.ALittleIsEnough(tau=tau)(h.copy())
    ours = atk.alie(h, F, eta=tau)
    assert ours.shape == (F, D)
    for row in np.asarray(ours):
        _close(row, theirs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("tau", [0.0, 2.0, -1.0, 3.5])
def test_inner_product_manipulation_is_foe(seed, tau):
    h = _data(seed, n=H)
    theirs = byzfl.InnerProductManipulation(tau=tau)(h.copy())
    ours = atk.foe(h, F, eta=1.0 + tau)
    for row in np.asarray(ours):
        _close(row, theirs)


def test_foe_default_is_byzfl_ipm_default():
    h = _data(3, n=H)
    theirs = byzfl.InnerProductManipulation()(h.copy())
    for row in np.asarray(atk.foe(h, F)):
        _close(row, theirs)


def test_alie_default_is_byzfl_default():
    h = _data(3, n=H)
    theirs = byzfl.ALittleIsEnough()(h.copy())
    for row in np.asarray(atk.alie(h, F)):
        _close(row, theirs)


@pytest.mark.parametrize("seed", SEEDS)
def test_sign_flipping_parity(seed):
    h = _data(seed, n=H)
    theirs = byzfl.SignFlipping()(h.copy())
    for row in np.asarray(atk.sign_flipping(h, F)):
        _close(row, theirs)


def test_inf_parity():
    h = _data(0, n=H)
    theirs = byzfl.Inf()(h.copy())
    ours = np.asarray(atk.inf(h, F))
    assert ours.shape == (F, D)
    assert np.all(ours == theirs[None, :])


@pytest.mark.parametrize("kind", ["alie", "foe"])
def test_optimal_attack_beats_byzfl_against_nnm_trmean(kind):
    """nnmjax's optimal ALIE/FOE against nnm+cwtm is at least as damaging, measured with ByzFL's
    own NNM+TrMean, as ByzFL's Optimal_ALittleIsEnough / Optimal_InnerProductManipulation."""
    rule = nnmjax.rule("nnm+cwtm", F)
    ours_fn = jax.jit(lambda h: (atk.optimal_alie if kind == "alie" else atk.optimal_foe)(
        h, F, rule=rule))
    cls = byzfl.Optimal_ALittleIsEnough if kind == "alie" else byzfl.Optimal_InnerProductManipulation

    def damage(h, byz_rows):
        x = np.concatenate([h, np.asarray(byz_rows, np.float32)])
        out = byzfl.TrMean(f=F)(byzfl.NNM(f=F)(x))
        return float(np.linalg.norm(np.asarray(out, np.float64) - h.mean(0)))

    for seed in range(4):
        h = _data(seed, n=H)
        attack = cls(agg=byzfl.TrMean(f=F), pre_agg_list=[byzfl.NNM(f=F)], f=F)
        theirs = np.repeat(np.asarray(attack(h.copy()), np.float32)[None], F, axis=0)
        ours = np.asarray(ours_fn(h))
        assert damage(h, ours) >= damage(h, theirs) * (1 - 1e-5)


# --- float32 accuracy: rows sharing a large common component -------------------------------

@pytest.mark.parametrize("name", ["krum", "nnm", "multikrum"])
def test_distance_rules_with_common_offset(name):
    # Spread ~1 around a common offset of 1000 (relative spread 1e-3, e.g. momentums of
    # similar workers). float32 resolves the inputs to 6e-5, so parity to 1e-3 is expected.
    ours, theirs = {"krum": (agg.krum, byzfl.Krum), "nnm": (pre.nnm, byzfl.NNM),
                    "multikrum": (agg.multikrum, byzfl.MultiKrum)}[name]
    for seed in range(6):
        x = _data(seed, n=N, d=10, offset=1000.0)
        _close(ours(x, F), theirs(f=F)(x.copy()), rtol=1e-5, atol=1e-3)
