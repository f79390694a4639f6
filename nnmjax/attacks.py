"""Byzantine attacks: pure functions ``(honest: (h, d), f, ...) -> (f, d)``.

With ``s`` the mean of the honest inputs (gradients, or momentums in D-SHB), the
attacks of the paper's Appendix 14.3 send ``s + eta * a``:

* ALIE (Baruch et al., 2019): ``a = sigma``, the coordinate-wise (unbiased,
  ``ddof=1``) standard deviation of the honest inputs;
* FOE (Xie et al., 2020): ``a = -s``, i.e. ``(1 - eta) s``;
* SF: ``eta = 2`` in FOE, i.e. ``-s``.

The optimal versions pick ``eta`` from a grid to maximise ``||R - s||`` where
``R`` is the output of the defence actually in use, evaluating the whole grid in
one ``jax.vmap`` call and refining around the best point. Label flipping acts
on data (:func:`nnmjax.data.label_flip`).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from nnmjax import _subspace
from nnmjax._checks import as_matrix, check_int

__all__ = ["sign_flipping", "foe", "alie", "optimal_foe", "optimal_alie", "mimic", "inf",
           "gaussian", "MimicState", "mimic_init", "mimic_update", "alie_z_max", "ATTACKS",
           "DEFAULT_ETAS"]

#: The default search grid of the optimal attacks: 0 and 48 geometric steps from 1e-2 to 1e6
#: (the float32 values of ``jnp.geomspace(1e-2, 1e6, 48)``, written out so that importing
#: nnmjax starts no JAX backend: ``jax.distributed.initialize`` must come first).
DEFAULT_ETAS = (0.0,
    0.009999999776482582, 0.014798331074416637, 0.021899061277508736, 0.03240695595741272,
    0.047956887632608414, 0.07096821069717407, 0.10502110421657562, 0.15541371703147888,
    0.22998636960983276, 0.3403414487838745, 0.503648579120636, 0.7453158497810364,
    1.1029431819915771, 1.632171869277954, 2.415342092514038, 3.574303388595581,
    5.28937292098999, 7.827388763427734, 11.583229064941406, 17.141246795654297,
    25.36618423461914, 37.5377311706543, 55.54957962036133, 82.20410919189453,
    121.64839172363281, 180.01931762695312, 266.3985595703125, 394.22540283203125,
    583.3878173828125, 863.3165893554688, 1277.5645751953125, 1890.582275390625,
    2797.746337890625, 4140.2001953125, 6126.80517578125, 9066.6494140625,
    13417.1201171875, 19855.099609375, 29382.234375, 43480.8046875,
    64344.40234375, 95218.9765625, 140908.203125, 208520.625,
    308575.71875, 456640.59375, 675751.875, 1000000.0,
)


def _prepare(honest, f, name):
    honest = as_matrix(honest, name="honest")
    f = check_int(f, name="f", rule=name, low=0)
    return honest, f


def _repeat(v, f):
    return jnp.broadcast_to(v, (f,) + v.shape)


def sign_flipping(honest, f: int):
    """Sign flipping: every Byzantine worker sends ``-s``."""
    honest, f = _prepare(honest, f, "sign_flipping")
    return _repeat(-jnp.mean(honest, axis=0), f)


def foe(honest, f: int, *, eta: float = 3.0):
    """Fall of Empires / inner-product manipulation: ``(1 - eta) s``. The default ``eta = 3``
    sends ``-2 s`` (ByzFL's ``InnerProductManipulation(tau=2)`` is ``eta = 1 + tau``)."""
    honest, f = _prepare(honest, f, "foe")
    return _repeat((1.0 - eta) * jnp.mean(honest, axis=0), f)


def _std(honest):
    h = honest.shape[0]
    if h < 2:
        raise ValueError("ALIE needs at least 2 honest rows for an unbiased standard deviation")
    return jnp.std(honest, axis=0, ddof=1)


def alie(honest, f: int, *, eta: float = 1.5):
    """A little is enough: ``s + eta * sigma`` with ``sigma`` the unbiased coordinate-wise
    standard deviation. Default ``eta = 1.5`` as ByzFL; Baruch et al.'s choice is
    :func:`alie_z_max`."""
    honest, f = _prepare(honest, f, "alie")
    return _repeat(jnp.mean(honest, axis=0) + eta * _std(honest), f)


def alie_z_max(n: int, f: int) -> float:
    """Baruch et al.'s ``z_max = Phi^{-1}((n - s) / n)``, ``s = floor(n/2 + 1) - f``."""
    from statistics import NormalDist

    s = math.floor(n / 2 + 1) - f
    return NormalDist().inv_cdf((n - s) / n)


def inf(honest, f: int):
    """Every Byzantine worker sends ``+inf`` in every coordinate."""
    honest, f = _prepare(honest, f, "inf")
    return jnp.full((f, honest.shape[1]), jnp.inf, honest.dtype)


def gaussian(honest, f: int, *, key=None, mu: float = 0.0, sigma: float = 200.0):
    """Each Byzantine worker sends an independent draw of ``N(mu, sigma^2 I)``."""
    honest, f = _prepare(honest, f, "gaussian")
    if key is None:
        raise ValueError("gaussian is randomized: pass key=jax.random.key(...)")
    return mu + sigma * jax.random.normal(key, (f, honest.shape[1]), honest.dtype)


def _search(honest, f, rule, etas, direction, refine, zooms, brackets, key):
    """Evaluate ``s + eta * direction`` for every ``eta`` in one vmap, then around each of the
    ``brackets`` best grid points ``zooms`` times evaluate ``refine`` points between the
    neighbours of that bracket's best point (one vmap per zoom); return the most damaging
    rows and their ``eta``. Each evaluation takes the fastest exact path for ``rule``
    (:func:`nnmjax._subspace.residual_fn`)."""
    s = jnp.mean(honest, axis=0)
    residual, small = _subspace.residual_fn(honest, direction, f, rule, key=key)

    def damage(etas):
        # Residuals over d are made one eta at a time (lax.map) and reduced afterwards: a
        # vmapped batch, or a reduction fused into the rule, defeats the rule's fusion on CPU.
        r = jax.vmap(residual)(etas) if small else jax.lax.map(residual, etas)
        err = jnp.sum(jnp.square(r), axis=1)
        return jnp.where(jnp.isfinite(err), err, -1.0)

    grid = jnp.asarray(etas, honest.dtype)
    scores = damage(grid)
    k = min(brackets, grid.shape[0])
    top = jnp.argsort(-scores)[:k]
    best, best_score = grid[top], scores[top]
    lo = grid[jnp.maximum(top - 1, 0)]
    hi = grid[jnp.minimum(top + 1, grid.shape[0] - 1)]
    for _ in range(zooms if refine > 1 else 0):
        fine = jax.vmap(lambda a, b: jnp.linspace(a, b, refine, dtype=honest.dtype))(lo, hi)
        fine_scores = damage(fine.reshape(-1)).reshape(k, refine)
        j = jnp.argmax(fine_scores, axis=1)
        cand = jnp.take_along_axis(fine, j[:, None], axis=1)[:, 0]
        cand_score = jnp.take_along_axis(fine_scores, j[:, None], axis=1)[:, 0]
        take = cand_score > best_score
        best = jnp.where(take, cand, best)
        best_score = jnp.where(take, cand_score, best_score)
        step = (hi - lo) / (refine - 1)
        lo, hi = jnp.maximum(best - step, lo), jnp.minimum(best + step, hi)
    eta = best[jnp.argmax(best_score)]
    return _repeat(s + eta * direction, f), eta


_SEARCH_DOC = """``rule`` maps the ``(h + f, d)`` inputs to ``(d,)`` (e.g.
    ``nnmjax.rule("nnm+cwtm", f)``; a randomized rule is called with ``key``). For a rule
    built by :func:`nnmjax.rule` from equivariant stages the evaluations run on
    ``(h + 1)``-dimensional coordinates, not over ``d`` (:mod:`nnmjax._subspace`)."""


def optimal_alie(honest, f: int, *, rule: Callable, key=None, etas=DEFAULT_ETAS, refine: int = 8,
                 zooms: int = 8, brackets: int = 3, return_eta: bool = False):
    """ALIE with ``eta`` chosen to maximise ``||rule(honest ++ byz) - s||``: the whole grid
    ``etas`` in one vmapped call, then, around each of the ``brackets`` best grid points,
    ``zooms`` rounds of ``refine`` points between the neighbours of that bracket's best
    point (about 1e-4 relative resolution in ``eta`` by default: 241 rule evaluations in 9
    vmapped calls). Damage that peaks just before the Byzantine rows leave a selection, as
    with Krum or NNM, is located to that resolution. """ + _SEARCH_DOC
    honest, f = _prepare(honest, f, "optimal_alie")
    _check_key(rule, key)
    byz, eta = _search(honest, f, rule, etas, _std(honest), refine, zooms, brackets, key)
    return (byz, eta) if return_eta else byz


def optimal_foe(honest, f: int, *, rule: Callable, key=None, etas=DEFAULT_ETAS, refine: int = 8,
                zooms: int = 8, brackets: int = 3, return_eta: bool = False):
    """FOE, ``(1 - eta) s``, with ``eta`` chosen like :func:`optimal_alie`. """ + _SEARCH_DOC
    honest, f = _prepare(honest, f, "optimal_foe")
    _check_key(rule, key)
    byz, eta = _search(honest, f, rule, etas, -jnp.mean(honest, axis=0), refine, zooms,
                       brackets, key)
    return (byz, eta) if return_eta else byz


def _check_key(rule, key):
    if getattr(rule, "randomized", False) and key is None:
        raise ValueError(f"{rule!r} is randomized: pass key=jax.random.key(...) to the attack")


class MimicState(NamedTuple):
    """State of the Mimic attack: step count, running honest mean ``mu``, direction ``z``
    and the mimicked honest worker ``target``."""

    step: jax.Array
    mu: jax.Array
    z: jax.Array
    target: jax.Array


def mimic_init(key, d: int, dtype=jnp.float32) -> MimicState:
    """Initial Mimic state with a random unit direction drawn from ``key``."""
    z = jax.random.normal(key, (d,), dtype)
    return MimicState(jnp.zeros((), jnp.int32), jnp.zeros((d,), dtype),
                      z / jnp.linalg.norm(z), jnp.zeros((), jnp.int32))


def mimic_update(state: MimicState, honest, *, warmup: int = 1) -> MimicState:
    """One step of Karimireddy et al.'s (2022) Mimic heuristic (their ``MimicVariantAttacker``).

    During the first ``warmup`` steps (``t = state.step``) track the honest mean
    ``mu <- (t mu + mean_i x_i) / (t + 1)`` and the top principal direction of the honest
    inputs by online power iteration,
    ``z <- normalise(t z + u / ||u||)`` with ``u = sum_i <x_i - mu, z> (x_i - mu)``;
    the target is ``argmax_i <x_i, z>``, re-chosen at every warm-up step and frozen after.
    """
    honest = as_matrix(honest, name="honest")
    t = state.step
    warming = t < warmup
    tf = t.astype(honest.dtype)
    mu = jnp.where(warming, (tf * state.mu + jnp.mean(honest, axis=0)) / (tf + 1.0), state.mu)
    centred = honest - mu
    u = (centred @ state.z) @ centred
    u = u / jnp.maximum(jnp.linalg.norm(u), jnp.finfo(honest.dtype).tiny)
    z = tf * state.z + u
    z = z / jnp.maximum(jnp.linalg.norm(z), jnp.finfo(honest.dtype).tiny)
    z = jnp.where(warming, z, state.z)
    target = jnp.where(warming, jnp.argmax(honest @ z).astype(jnp.int32), state.target)
    return MimicState(t + 1, mu, z, target)


def mimic(honest, f: int, *, state: MimicState, warmup: int = 1):
    """Mimic: every Byzantine worker sends the honest input of the worker chosen by
    Karimireddy et al.'s heuristic. Returns ``(byzantine, new_state)``; start from
    :func:`mimic_init`."""
    honest, f = _prepare(honest, f, "mimic")
    state = mimic_update(state, honest, warmup=warmup)
    return _repeat(honest[state.target], f), state


ATTACKS = {
    "sign_flipping": sign_flipping, "foe": foe, "alie": alie, "optimal_foe": optimal_foe,
    "optimal_alie": optimal_alie, "mimic": mimic, "inf": inf, "gaussian": gaussian,
}
