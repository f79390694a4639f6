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

import functools
import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from nnmjax._platform import sequential_on_cpu
from nnmjax.robust import _subspace
from nnmjax.robust._checks import as_matrix, check_int

__all__ = ["sign_flipping", "foe", "alie", "optimal_foe", "optimal_alie", "adaptive", "mimic", "inf",
           "gaussian", "MimicState", "mimic_init", "mimic_update", "alie_z_max", "ATTACKS",
           "SEARCHING_ATTACKS", "DEFAULT_ETAS", "BYZFL_LINE_SEARCH", "SEARCHES", "minmax",
           "minsum", "DEVIATIONS"]

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
    """Validate ``honest`` as an ``(h, d)`` matrix and ``f >= 0`` for attack ``name``."""
    honest = as_matrix(honest, name="honest")
    f = check_int(f, name="f", rule=name, low=0)
    return honest, f


def _repeat(v, f):
    """``f`` copies of the vector ``v``, shape ``(f, d)``."""
    return jnp.broadcast_to(v, (f,) + v.shape)


def sign_flipping(honest: Real[ArrayLike, "h d"], f: int) -> Float[Array, "f d"]:
    """Sign flipping: every Byzantine worker sends ``-s``, ``s`` the honest mean.

    Args:
        honest: ``(h, d)`` honest inputs (integers are cast to float32).
        f: number of Byzantine rows to produce, ``>= 0``.

    Returns:
        The ``(f, d)`` Byzantine rows, in ``honest``'s floating dtype.

    Raises:
        ValueError: if ``honest`` is not a non-empty real ``(h, d)`` array or ``f`` is not a
            non-negative integer.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np, nnmjax
        >>> from nnmjax import attacks
        >>> honest = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1]], jnp.float32)  # mean 1
        >>> print(np.asarray(attacks.sign_flipping(honest, 1)))
        [[-1. -1. -1.]]
    """
    honest, f = _prepare(honest, f, "sign_flipping")
    return _repeat(-jnp.mean(honest, axis=0), f)


def foe(honest: Real[ArrayLike, "h d"], f: int, *, eta: float = 3.0) -> Float[Array, "f d"]:
    """Fall of Empires / inner-product manipulation (Xie et al., 2020): ``(1 - eta) s``.

    The default ``eta = 3`` sends ``-2 s`` (ByzFL's ``InnerProductManipulation(tau=2)`` is
    ``eta = 1 + tau``).

    Args:
        honest: ``(h, d)`` honest inputs (integers are cast to float32).
        f: number of Byzantine rows to produce, ``>= 0``.
        eta: attack factor.

    Returns:
        The ``(f, d)`` Byzantine rows, in ``honest``'s floating dtype.

    Raises:
        ValueError: if ``honest`` is not a non-empty real ``(h, d)`` array or ``f`` is not a
            non-negative integer.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np, nnmjax
        >>> from nnmjax import attacks
        >>> honest = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1]], jnp.float32)  # mean 1
        >>> print(np.asarray(attacks.foe(honest, 2)))
        [[-2. -2. -2.]
         [-2. -2. -2.]]
    """
    honest, f = _prepare(honest, f, "foe")
    return _repeat((1.0 - eta) * jnp.mean(honest, axis=0), f)


def _std(honest):
    """Unbiased (``ddof=1``) coordinate-wise standard deviation; needs 2 honest rows."""
    h = honest.shape[0]
    if h < 2:
        raise ValueError("ALIE needs at least 2 honest rows for an unbiased standard deviation")
    return jnp.std(honest, axis=0, ddof=1)


def alie(honest: Real[ArrayLike, "h d"], f: int, *, eta: float = 1.5) -> Float[Array, "f d"]:
    """A little is enough (Baruch et al., 2019): ``s + eta * sigma``.

    ``sigma`` is the unbiased (``ddof=1``) coordinate-wise standard deviation of the honest
    inputs. Default ``eta = 1.5`` as ByzFL; Baruch et al.'s choice is :func:`alie_z_max`.

    Args:
        honest: ``(h, d)`` honest inputs (integers are cast to float32).
        f: number of Byzantine rows to produce, ``>= 0``.
        eta: attack factor.

    Returns:
        The ``(f, d)`` Byzantine rows, in ``honest``'s floating dtype.

    Raises:
        ValueError: if ``honest`` is not a non-empty real ``(h, d)`` array or ``f`` is not a
            non-negative integer.
        ValueError: if there are fewer than 2 honest rows.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np, nnmjax
        >>> from nnmjax import attacks
        >>> honest = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1]], jnp.float32)  # mean 1
        >>> print(np.round(np.asarray(attacks.alie(honest, 1)), 4))   # sigma = sqrt(2/3)
        [[2.2247 2.2247 2.2247]]
    """
    honest, f = _prepare(honest, f, "alie")
    return _repeat(jnp.mean(honest, axis=0) + eta * _std(honest), f)


def alie_z_max(n: int, f: int) -> float:
    """Baruch et al.'s ALIE factor ``z_max = Phi^{-1}((n - s) / n)``, ``s = floor(n/2 + 1) - f``.

    Args:
        n: total number of workers.
        f: number of Byzantine workers.

    Returns:
        ``z_max`` (``Phi`` is the standard normal CDF), a float.

    Examples:
        >>> from nnmjax.robust.attacks import alie_z_max
        >>> round(alie_z_max(17, 4), 4)
        0.5414
    """
    from statistics import NormalDist

    s = math.floor(n / 2 + 1) - f
    return NormalDist().inv_cdf((n - s) / n)


def inf(honest: Real[ArrayLike, "h d"], f: int) -> Float[Array, "f d"]:
    """Every Byzantine worker sends ``+inf`` in every coordinate.

    Args:
        honest: ``(h, d)`` honest inputs (integers are cast to float32).
        f: number of Byzantine rows to produce, ``>= 0``.

    Returns:
        The ``(f, d)`` Byzantine rows, in ``honest``'s floating dtype.

    Raises:
        ValueError: if ``honest`` is not a non-empty real ``(h, d)`` array or ``f`` is not a
            non-negative integer.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np, nnmjax
        >>> from nnmjax import attacks
        >>> honest = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1]], jnp.float32)  # mean 1
        >>> print(np.asarray(attacks.inf(honest, 1)))
        [[inf inf inf]]
    """
    honest, f = _prepare(honest, f, "inf")
    return jnp.full((f, honest.shape[1]), jnp.inf, honest.dtype)


def gaussian(honest: Real[ArrayLike, "h d"], f: int, *, key: PRNGKeyArray, mu: float = 0.0,
             sigma: float = 200.0) -> Float[Array, "f d"]:
    """Each Byzantine worker sends an independent draw of ``N(mu, sigma^2 I)``.

    Args:
        honest: ``(h, d)`` honest inputs (integers are cast to float32).
        f: number of Byzantine rows to produce, ``>= 0``.
        key: ``jax.random`` key (required).
        mu: mean of every coordinate.
        sigma: standard deviation of every coordinate.

    Returns:
        The ``(f, d)`` Byzantine rows, in ``honest``'s floating dtype.

    Raises:
        ValueError: if ``honest`` is not a non-empty real ``(h, d)`` array or ``f`` is not a
            non-negative integer.
        ValueError: if ``key`` is ``None``.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np, nnmjax
        >>> from nnmjax import attacks
        >>> honest = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1]], jnp.float32)  # mean 1
        >>> attacks.gaussian(honest, 2, key=jax.random.key(0)).shape
        (2, 3)
    """
    honest, f = _prepare(honest, f, "gaussian")
    if key is None:
        raise ValueError("gaussian is randomized: pass key=jax.random.key(...)")
    return mu + sigma * jax.random.normal(key, (f, honest.shape[1]), honest.dtype)


#: ByzFL's line search (``Optimal_ALittleIsEnough`` / ``Optimal_InnerProductManipulation``,
#: byzfl 0.0.11): ``evals`` evaluations from ``start``, step ``delta`` doubled while the
#: damage grows (expansion), then shrunk by ``ratio`` at every evaluation (contraction).
BYZFL_LINE_SEARCH = {"evals": 20, "start": 0.0, "delta": 10.0, "ratio": 0.8}
#: The ``search`` values of the optimal attacks.
SEARCHES = ("grid", "byzfl")


def _line_search(damage, *, start, evals, delta, ratio):
    """ByzFL's sequential line search over ``eta`` (one evaluation per iteration, a
    ``lax.fori_loop``): propose ``best + delta``; while expanding, a better proposal is
    taken and doubles ``delta``, a worse one multiplies it by ``ratio`` and ends the
    expansion; afterwards a better proposal is taken and ``delta`` shrinks by ``ratio``
    every time. Returns the best ``eta``."""
    best_x = jnp.asarray(start, jnp.float32)

    def body(_, carry):
        best_x, best_y, delta, expanding = carry
        prop = best_x + delta
        y = damage(prop)
        better = y > best_y
        delta = jnp.where(expanding & better, 2.0 * delta, ratio * delta)
        return (jnp.where(better, prop, best_x), jnp.where(better, y, best_y), delta,
                expanding & better)

    init = (best_x, damage(best_x), jnp.asarray(delta, jnp.float32), jnp.array(True))
    return jax.lax.fori_loop(0, evals - 1, body, init)[0]


def _damage_fn(honest, direction, f, rule, key):
    """``etas (k,) -> ||rule(honest ++ f x (s + eta direction)) - s||^2`` for each ``eta``
    (``-1`` when not finite), on the fastest exact path: the closed form for CWTM and
    CWMed (:func:`nnmjax.robust._subspace.window_damage_fn`), mixings followed by a
    coordinate-wise rule in column blocks (:func:`nnmjax.robust._subspace.mixed_damage_fn`),
    else :func:`nnmjax.robust._subspace.residual_fn`."""
    if _subspace.windowed(rule):
        squares = _subspace.window_damage_fn(honest, direction, f, rule.f, rule.stages[0])
    elif _subspace.mixed(rule):
        squares = _subspace.mixed_damage_fn(honest, direction, f, rule, key)
    else:
        residual, small = _subspace.residual_fn(honest, direction, f, rule, key=key)

        def squares(etas):
            # Residuals over d are made one eta at a time (lax.map) and reduced afterwards:
            # a vmapped batch, or a reduction fused into the rule, defeats the rule's fusion
            # on CPU.
            r = jax.vmap(residual)(etas) if small else jax.lax.map(residual, etas)
            return jnp.sum(jnp.square(r), axis=1)

    def damage(etas):
        err = squares(etas)
        return jnp.where(jnp.isfinite(err), err, -1.0)

    return damage


def _optimal(honest, f, rule, direction, key, search, offset, grid_options):
    """The most damaging ``s + eta direction``, ``eta`` from :func:`_find_eta`.

    ``eta`` is piecewise constant in the inputs (its derivative is zero), so it is searched
    on stopped gradients and the rows ``s + eta direction`` are formed outside the search.
    Under ``vmap`` (a grid's runs) the search runs the instances one after another
    (:func:`nnmjax._platform.sequential_on_cpu`) where :func:`_sequential_search` says so."""
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}; got {search!r}")
    args = (f, rule, search, offset, tuple(sorted(grid_options.items())))
    try:
        run = _eta_program(*args)
    except TypeError:  # an unhashable option (an array of etas): a program of this call only
        run = _eta_program.__wrapped__(*args)
    eta = run(*jax.lax.stop_gradient((honest, direction)), key)
    return _repeat(jnp.mean(honest, axis=0) + eta * direction, f), eta


@functools.lru_cache(maxsize=64)
def _eta_program(f, rule, search, offset, grid_options):
    """:func:`_find_eta` as one jitted program (kept per rule and options), so that an eager
    call compiles the search once instead of running it primitive by primitive; under an
    outer trace (a step, a grid's vmap) it is traced into the caller's program."""
    def run(honest, direction, key):
        return _find_eta(honest, direction, key, f=f, rule=rule, search=search, offset=offset,
                        grid_options=dict(grid_options))

    if _sequential_search(rule, search):
        run = sequential_on_cpu(run)
    return jax.jit(run)


def _find_eta(honest, direction, key, *, f, rule, search, offset, grid_options):
    """The most damaging ``eta`` for ``s + eta direction`` by ``search``: ``"grid"``
    (:func:`_search`) or ``"byzfl"`` (:func:`_line_search` over ByzFL's factor
    ``tau = eta - offset``)."""
    if search == "grid":
        return _search(honest, f, rule, direction=direction, key=key, **grid_options)
    damage = _damage_fn(honest, direction, f, rule, key)
    tau = _line_search(lambda t: damage(jnp.reshape(t + offset, (1,)).astype(honest.dtype))[0],
                       **BYZFL_LINE_SEARCH)
    return (tau + offset).astype(honest.dtype)


def _sequential_search(rule, search: str) -> bool:
    """Whether vmapped instances of the search run one after another rather than as one
    batch, on CPU: ByzFL's line search (one candidate at a time) for a rule whose every
    evaluation is its own pass over the ``(n, d)`` inputs (not evaluated in coordinates),
    and any search on mixings followed by a coordinate-wise rule (whose candidates are
    evaluated per block of columns). For the line search, five instances at
    ``(17, 176050)`` cost 11-35 % less one after another than as a batch of passes
    (``python benchmarks/search.py``, ``benchmarks/README.md``); for the blocked
    evaluation, a batch of instances would round the candidates' mixed rows differently
    from one instance alone, so a vmapped run could pick another ``eta`` at a near tie than
    the same run alone. The choice applies where the program is lowered for the CPU
    (:func:`nnmjax._platform.sequential_on_cpu`)."""
    return ((search == "byzfl" and not _subspace.in_coordinates(rule))
            or _subspace.mixed(rule))


def _search(honest, f, rule, etas, direction, refine, zooms, brackets, key):
    """Evaluate ``s + eta * direction`` for every ``eta`` in one vmap, then around each of the
    ``brackets`` best grid points ``zooms`` times evaluate ``refine`` points between the
    neighbours of that bracket's best point (one vmap per zoom); return the most damaging
    ``eta``. Each evaluation takes the fastest exact path for ``rule``
    (:func:`nnmjax.robust._subspace.residual_fn`)."""
    damage = _damage_fn(honest, direction, f, rule, key)
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
    return best[jnp.argmax(best_score)]


def optimal_alie(honest: Real[ArrayLike, "h d"], f: int, *, rule: Callable,
                 key: PRNGKeyArray | None = None, search: str = "grid",
                 etas: Sequence[float] | Real[ArrayLike, " k"] = DEFAULT_ETAS,
                 refine: int = 8, zooms: int = 8, brackets: int = 3,
                 return_eta: bool = False
                 ) -> Float[Array, "f d"] | tuple[Float[Array, "f d"], Float[Array, ""]]:
    """ALIE with ``eta`` chosen to maximise ``||rule(honest ++ byz) - s||``.

    ``search="grid"``: the whole grid ``etas`` in one vmapped call, then, around each of
    the ``brackets`` best grid points, ``zooms`` rounds of ``refine`` points between the
    neighbours of that bracket's best point (about 1e-4 relative resolution in ``eta`` by
    default: 241 rule evaluations in 9 vmapped calls). Damage that peaks just before the
    Byzantine rows leave a selection, as with Krum or NNM, is located to that resolution.
    ``search="byzfl"``: ByzFL's line search (:data:`BYZFL_LINE_SEARCH`: 20 sequential
    evaluations from ``eta = 0``, step 10).

    ``rule`` maps the ``(h + f, d)`` inputs to ``(d,)`` (e.g. ``nnmjax.rule("nnm+cwtm", f)``;
    a randomized rule is called with ``key``). For a rule built by :func:`nnmjax.rule` from
    equivariant stages the evaluations run on ``(h + 1)``-dimensional coordinates, not over
    ``d`` (:mod:`nnmjax.robust._subspace`).

    Args:
        honest: ``(h, d)`` honest inputs (integers are cast to float32).
        f: number of Byzantine rows to produce, ``>= 0``.
        rule: the defence, ``(h + f, d) -> (d,)``.
        key: ``jax.random`` key for a randomized ``rule``.
        search: ``"grid"`` or ``"byzfl"``.
        etas: the grid of ``"grid"`` (default :data:`DEFAULT_ETAS`).
        refine: points per refinement round (``"grid"``).
        zooms: refinement rounds (``"grid"``).
        brackets: grid points refined (``"grid"``).
        return_eta: also return the chosen ``eta``.

    Returns:
        The ``(f, d)`` Byzantine rows (all equal), or ``(rows, eta)`` with ``return_eta``.

    Raises:
        ValueError: if ``honest`` is not a non-empty real ``(h, d)`` array or ``f`` is not a
            non-negative integer.
        ValueError: if ``rule`` is randomized and ``key`` is ``None``, or ``search`` is unknown.
        ValueError: if there are fewer than 2 honest rows.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np, nnmjax
        >>> from nnmjax import attacks
        >>> honest = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1]], jnp.float32)  # mean 1
        >>> cwtm = nnmjax.rule("cwtm", 1)
        >>> byz, eta = attacks.optimal_alie(honest, 1, rule=cwtm, etas=(0., 1., 2., 4.), zooms=2,
        ...                                 return_eta=True)
        >>> print(np.round(np.asarray(cwtm(jnp.concatenate([honest, byz]))), 4), bool(eta >= 1.22))
        [1.3333 1.3333 1.3333] True
    """
    honest, f = _prepare(honest, f, "optimal_alie")
    _check_key(rule, key)
    byz, eta = _optimal(honest, f, rule, _std(honest), key, search, 0.0,
                        dict(etas=etas, refine=refine, zooms=zooms, brackets=brackets))
    return (byz, eta) if return_eta else byz


def optimal_foe(honest: Real[ArrayLike, "h d"], f: int, *, rule: Callable,
                key: PRNGKeyArray | None = None, search: str = "grid",
                etas: Sequence[float] | Real[ArrayLike, " k"] = DEFAULT_ETAS,
                refine: int = 8, zooms: int = 8, brackets: int = 3,
                return_eta: bool = False
                ) -> Float[Array, "f d"] | tuple[Float[Array, "f d"], Float[Array, ""]]:
    """FOE, ``(1 - eta) s``, with ``eta`` chosen like :func:`optimal_alie`.

    ByzFL's line search runs over its factor ``tau = eta - 1`` (``InnerProductManipulation``
    sends ``-tau s``) from ``tau = 0``. The arguments, the result and the errors are those of
    :func:`optimal_alie` (the direction is ``-s`` instead of ``sigma``, and one honest row
    suffices).

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np, nnmjax
        >>> from nnmjax import attacks
        >>> honest = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1]], jnp.float32)  # mean 1
        >>> byz, eta = attacks.optimal_foe(honest, 1, rule=nnmjax.rule("cwtm", 1), search="byzfl",
        ...                                return_eta=True)
        >>> print(np.round(np.asarray(byz), 4), np.round(float(eta), 4))
        [[0. 0. 0.]] 1.0
    """
    honest, f = _prepare(honest, f, "optimal_foe")
    _check_key(rule, key)
    byz, eta = _optimal(honest, f, rule, -jnp.mean(honest, axis=0), key, search, 1.0,
                        dict(etas=etas, refine=refine, zooms=zooms, brackets=brackets))
    return (byz, eta) if return_eta else byz


def adaptive(honest: Real[ArrayLike, "h d"], f: int, *, rule: Callable,
             key: PRNGKeyArray | None = None, steps: int = 8, lr: float = 0.25,
             constraint: str | None = None, radius: float | None = None,
             search: str = "grid") -> Float[Array, "f d"]:
    """Byzantine rows that differentiate through the defence.

    Projected gradient ascent of ``||rule(honest ++ B) - s||^2`` over the ``f`` rows ``B``
    (each free, not copies), started from the more damaging of :func:`optimal_alie` and
    :func:`optimal_foe` (both with ``search``).

    The rows are ``B = s + sigma * Z`` (``sigma`` the honest coordinate-wise standard
    deviation, ``s`` their mean) and Adam (step ``lr``, in units of ``sigma``) ascends on
    ``Z`` for ``steps`` steps, through ``jax.grad`` of the rule actually in use (the
    sorting networks, selections and mixings are differentiated where they are locally
    linear). Every iterate is scored with the true rule and the best rows are returned, so
    the result is at least as damaging as both optimal attacks. The ascent stops at a fixed
    point (zero gradient and first moment), where the remaining steps could change nothing;
    it runs on stopped gradients, so the rows' derivative is that of ``s + sigma * Z`` with
    ``Z`` held fixed (as the optimal attacks' ``eta``). ``constraint``: ``None``;
    ``"range"`` keeps every coordinate inside the honest rows' range; ``"ball"`` keeps each
    row within ``radius`` (default: the largest honest distance to ``s``) of ``s`` (the
    start is projected too, so then the bound above holds for the projected start).

    For a rule whose every stage is translation and rotation equivariant (Krum, GM, MDA,
    NNM followed by one of them, ...: the rules the optimal attacks evaluate in
    coordinates), the damage's gradient with respect to each row lies in the span of the
    centred rows, so the ascent never leaves the span of the centred honest rows and the
    start. There it runs on the rows' ``h + 1`` coordinates in an orthonormal frame of
    that span (the optimal attacks' coordinates, from the honest rows' Gram matrix;
    ``sigma`` the honest coordinates' standard deviation), and the rows are mapped back
    once, as fixed combinations of the centred honest rows and the start (so their
    derivative is that of those combinations). The rule runs over ``d`` only to score the
    two starts and the result: coordinates reproduce it to round-off, which can flip a
    near tie of a selection, where the optimal attacks' ``eta`` sits. ``"range"`` is not
    rotation invariant, so with it the ascent runs over ``d`` for every rule.

    A randomized rule is called with ``key`` (the attacker's own draw). A rule that cannot
    be differentiated (e.g. CAF's ``while_loop``) gets the starting rows, with a warning.

    Args:
        honest: ``(h, d)`` honest inputs (integers are cast to float32).
        f: number of Byzantine rows to produce, ``>= 0``.
        rule: the defence, ``(h + f, d) -> (d,)``.
        key: ``jax.random`` key for a randomized ``rule``.
        steps: Adam steps, ``>= 0``.
        lr: Adam step size, in units of ``sigma``.
        constraint: ``None``, ``"range"`` or ``"ball"``.
        radius: radius of ``"ball"`` (default the largest honest distance to ``s``).
        search: search of the two starting attacks, ``"grid"`` or ``"byzfl"``.

    Returns:
        The ``(f, d)`` Byzantine rows, in ``honest``'s floating dtype.

    Raises:
        ValueError: if ``honest`` is not a non-empty real ``(h, d)`` array or ``f`` is not a
            non-negative integer.
        ValueError: if ``rule`` is randomized and ``key`` is ``None``, ``constraint`` or
            ``search`` is unknown, ``steps < 0``, or there are fewer than 2 honest rows.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np, nnmjax
        >>> from nnmjax import attacks
        >>> honest = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1]], jnp.float32)  # mean 1
        >>> byz = attacks.adaptive(honest, 1, rule=nnmjax.rule("cwtm", 1), steps=2,
        ...                        search="byzfl", constraint="range")
        >>> print(np.round(np.asarray(byz), 4))       # inside the honest range [0, 2]
        [[2. 2. 2.]]
    """
    honest, f = _prepare(honest, f, "adaptive")
    _check_key(rule, key)
    if constraint not in (None, "range", "ball"):
        raise ValueError(f"constraint must be None, 'range' or 'ball'; got {constraint!r}")
    check_int(steps, name="steps", rule="adaptive", low=0)
    starts = [attack(honest, f, rule=rule, key=key, search=search)
              for attack in (optimal_alie, optimal_foe)]
    if radius is None:
        radius = jnp.sqrt(jnp.max(jnp.sum(jnp.square(honest - jnp.mean(honest, axis=0)),
                                          axis=1)))
    if not (_subspace.in_coordinates(rule) and constraint != "range" and f):
        return _adaptive_rows(rule, honest, starts, key, steps, lr, constraint,
                              radius).astype(honest.dtype)
    s = jnp.mean(honest, axis=0)
    if constraint == "ball":
        starts = [s + _project(constraint, b - s, s, 1.0, None, None, radius) for b in starts]
    # the starts and the result are scored over d: coordinates reproduce the rule to
    # round-off, which can flip a near tie of a selection (where the optimal attacks' eta
    # sits)
    scores = jnp.stack([_rows_damage(rule, honest, b, s, key) for b in starts])
    best = jnp.argmax(scores)
    centred, direction = honest - s, jnp.stack(starts)[best, 0] - s
    hc, start, free, combination = _subspace.frame(*jax.lax.stop_gradient((centred, direction)))
    rows = _adaptive_rows(rule, hc, [_repeat(start, f)], key, steps, lr, constraint, radius,
                          free=free)
    alpha, beta = jax.lax.stop_gradient(combination(rows))
    dtype = alpha.dtype  # at least float32
    rows = (s.astype(dtype) + beta[:, None] * direction.astype(dtype)
            + jnp.matmul(alpha, centred.astype(dtype), precision=jax.lax.Precision.HIGHEST))
    rows = rows.astype(honest.dtype)
    gain = _rows_damage(rule, honest, rows, s, key) > scores[best]
    return jnp.where(gain, rows, jnp.stack(starts)[best].astype(honest.dtype))


def _adaptive_rows(rule, honest, starts, key, steps, lr, constraint, radius, free=None):
    """:func:`adaptive` on ``honest`` ``(h, d')`` and its starting ``(f, d')`` rows, in the
    coordinates that ``honest`` is given in (the rows' own or an orthonormal frame's): the
    most damaging start, and the ascent from it where it gains. Coordinates outside
    ``free`` (a mask, default all) keep the start's values."""
    s = jnp.mean(honest, axis=0)
    sigma = _std(honest)
    sigma = jnp.where(sigma > 0, sigma, jnp.maximum(jnp.mean(sigma), jnp.finfo(honest.dtype).tiny))
    if free is not None:
        sigma = jnp.where(free, sigma, 0.0)
    unit = jnp.where(sigma > 0, sigma, 1.0)  # divides; the rows are s + sigma z
    lo, hi = jnp.min(honest, axis=0), jnp.max(honest, axis=0)
    bounds = (lo, hi, jnp.asarray(radius, honest.dtype))

    def damage_rows(rows):
        return _rows_damage(rule, honest, rows, s, key)

    if constraint is not None:
        starts = [s + sigma * _project(constraint, (b - s) / unit, s, sigma, *bounds)
                  for b in starts]
    scores = jnp.stack([damage_rows(b) for b in starts])
    rows0 = jnp.stack(starts)[jnp.argmax(scores)]  # scored exactly as they are
    best0 = jnp.max(scores)
    z0 = jnp.where(sigma > 0, rows0 - s, 0.0) / unit
    try:
        jax.eval_shape(jax.grad(lambda z: damage_rows(s + sigma * z)), z0)
    except Exception as e:  # noqa: BLE001 - any tracing failure: not differentiable
        import warnings

        warnings.warn(f"adaptive: {rule!r} cannot be differentiated ({type(e).__name__}); "
                      "using the better of optimal ALIE and optimal FOE", stacklevel=3)
        return rows0
    ascend = sequential_on_cpu(functools.partial(_ascend, rule, optax.adam(lr), steps,
                                                 constraint))
    improved, z = ascend(*jax.lax.stop_gradient((honest, s, sigma, *bounds, z0, best0)), key)
    return jnp.where(improved, jnp.where(sigma > 0, s + sigma * z, rows0), rows0)


def _rows_damage(rule, honest, rows, s, key):
    """``||rule(honest ++ rows) - s||^2``, ``-1`` where it is not finite."""
    out = _subspace.call(rule, jnp.concatenate([honest, rows], axis=0), key)
    err = jnp.sum(jnp.square(out - s))
    return jnp.where(jnp.isfinite(err), err, -1.0)


def _project(constraint, z, s, sigma, lo, hi, radius):
    """``z`` (rows ``s + sigma z``) projected onto :func:`adaptive`'s ``constraint``."""
    if constraint == "range":
        return jnp.clip(z, (lo - s) / sigma, (hi - s) / sigma)
    if constraint == "ball":
        norm = jnp.sqrt(jnp.sum(jnp.square(z * sigma), axis=1, keepdims=True))
        return z * jnp.minimum(1.0, radius / jnp.maximum(norm, jnp.finfo(z.dtype).tiny))
    return z


def _ascend(rule, opt, steps, constraint, honest, s, sigma, lo, hi, radius, z0, best0, key):
    """:func:`adaptive`'s ascent from ``z0`` (damage ``best0``): ``(improved, z)``, whether an
    iterate beat ``best0`` and the best one. Once an iterate is a fixed point (zero
    gradient, zero first moment, and the step leaves ``z`` as it is), which every later step
    would keep, the remaining steps are skipped (``lax.cond`` in the ``lax.scan``): the
    result of all ``steps`` steps without the steps that cannot change it (a plateau of the
    rule, e.g. CWTM with every Byzantine value trimmed). Every traced value is an argument,
    so that vmapped instances run one after another on the CPU
    (:func:`nnmjax._platform.sequential_on_cpu`), each skipping on its own."""
    def damage(z):
        return _rows_damage(rule, honest, s + sigma * z, s, key)

    def step(carry):
        z, state, best_z, best, improved, _ = carry
        val, g = jax.value_and_grad(damage)(z)
        take = val > best
        best_z, best = jnp.where(take, z, best_z), jnp.where(take, val, best)
        g = jnp.where(jnp.isfinite(g), g, 0.0)
        updates, state = opt.update(-g, state, z)
        z_next = _project(constraint, optax.apply_updates(z, updates), s, sigma, lo, hi, radius)
        frozen = jnp.all(g == 0) & jnp.all(state[0].mu == 0) & jnp.all(z_next == z)
        return z_next, state, best_z, best, improved | take, frozen

    def maybe_step(carry, _):
        return jax.lax.cond(carry[-1], lambda c: c, step, carry), None

    init = (z0, opt.init(z0), z0, best0, jnp.array(False), jnp.array(False))
    (z, _, best_z, best, improved, _), _ = jax.lax.scan(maybe_step, init, None, length=steps)
    take = damage(z) > best
    return improved | take, jnp.where(take, z, best_z)


#: The perturbation directions of :func:`minmax` and :func:`minsum`.
DEVIATIONS = ("std", "unit_vec", "sign")


def _agnostic(honest, f, name, direction, gamma_init, tol, objective):
    """Shejwalkar and Houmansadr's (NDSS 2021) AGR-agnostic search: the largest ``gamma``
    (their step-halving search from ``gamma_init`` to resolution ``tol``) for which
    ``m = s - gamma dev`` satisfies ``objective``, from one ``h x h`` Gram matrix: with
    ``c_i = x_i - s``, ``||x_i - m||^2 = ||c_i||^2 + 2 gamma <c_i, dev> + gamma^2 ||dev||^2``."""
    honest, f = _prepare(honest, f, name)
    if direction not in DEVIATIONS:
        raise ValueError(f"direction must be one of {DEVIATIONS} for {name}; got {direction!r}")
    if not gamma_init > 0 or not tol > 0:
        raise ValueError(f"gamma_init and tol must be > 0 for {name}; got {gamma_init!r}, {tol!r}")
    s = jnp.mean(honest, axis=0)
    if direction == "std":
        dev = _std(honest)
    elif direction == "sign":
        dev = jnp.sign(s)
    else:
        norm = jnp.sqrt(jnp.sum(jnp.square(s)))
        dev = s / jnp.where(norm > 0, norm, 1.0)
    c = honest - s
    hi = jax.lax.Precision.HIGHEST
    g = jnp.matmul(c, c.T, precision=hi)
    q = jnp.diagonal(g)
    lin = 2.0 * jnp.matmul(c, dev, precision=hi)
    quad = jnp.dot(dev, dev, precision=hi)
    pair = q[:, None] + q[None, :] - 2.0 * g
    holds = objective(lambda gamma: q + gamma * lin + gamma * gamma * quad, pair)

    def body(carry):
        gamma, step, best, it = carry
        ok = holds(gamma)
        best = jnp.where(ok, gamma, best)
        gamma = jnp.where(ok, gamma + step / 2, gamma - step / 2)
        return gamma, step / 2, best, it + 1

    init = (jnp.asarray(gamma_init, s.dtype), jnp.asarray(gamma_init, s.dtype),
            jnp.zeros((), s.dtype), 0)
    gamma, _, best, _ = jax.lax.while_loop(
        lambda c: (jnp.abs(c[2] - c[0]) > tol) & (c[3] < 200), body, init)
    return _repeat(s - best * dev, f), best


def minmax(honest: Real[ArrayLike, "h d"], f: int, *, direction: str = "std",
           gamma_init: float = 10.0, tol: float = 1e-5,
           return_gamma: bool = False) -> Float[Array, "f d"] | tuple[Float[Array, "f d"], Float[Array, ""]]:
    """Min-Max (Shejwalkar and Houmansadr, NDSS 2021, AGR-agnostic): ``s - gamma dev``.

    ``gamma`` is the largest value found by the paper's search (start ``gamma_init``, step
    halved every iteration, stop when the last success and the candidate differ by at most
    ``tol``; ``0`` when no candidate succeeds) with
    ``max_i ||x_i - m||^2 <= max_{i,j} ||x_i - x_j||^2``: the malicious row is no farther
    from any honest row than the two farthest honest rows are from each other. ``dev`` is
    the unbiased coordinate-wise standard deviation (``"std"``, the paper's experiments),
    ``s / ||s||`` (``"unit_vec"``) or ``sign(s)`` (``"sign"``). All ``f`` rows are equal.
    The constraint does not involve the rule in use (the attacks that do are
    :func:`optimal_alie`, :func:`optimal_foe` and :func:`adaptive`).

    Args:
        honest: ``(h, d)`` honest inputs (integers are cast to float32).
        f: number of Byzantine rows to produce, ``>= 0``.
        direction: one of :data:`DEVIATIONS`.
        gamma_init: the search's first candidate and step, ``> 0``.
        tol: the search's resolution, ``> 0``.
        return_gamma: also return ``gamma``.

    Returns:
        The ``(f, d)`` Byzantine rows, or ``(rows, gamma)`` with ``return_gamma``.

    Raises:
        ValueError: if ``honest`` is not a non-empty real ``(h, d)`` array, ``f`` is not a
            non-negative integer, an option is out of range, or ``direction="std"`` has
            fewer than 2 honest rows.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np, nnmjax
        >>> from nnmjax import attacks
        >>> honest = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1]], jnp.float32)  # mean 1
        >>> byz, gamma = attacks.minmax(honest, 1, return_gamma=True)  # 3 + 1.633 g + 2 g^2 <= 9
        >>> print(np.round(np.asarray(byz), 3), round(float(gamma), 3))
        [[-0.12 -0.12 -0.12]] 1.371
    """
    def objective(dist, pair):
        return lambda gamma: jnp.max(dist(gamma)) <= jnp.max(pair)

    byz, gamma = _agnostic(honest, f, "minmax", direction, gamma_init, tol, objective)
    return (byz, gamma) if return_gamma else byz


def minsum(honest: Real[ArrayLike, "h d"], f: int, *, direction: str = "std",
           gamma_init: float = 10.0, tol: float = 1e-5,
           return_gamma: bool = False) -> Float[Array, "f d"] | tuple[Float[Array, "f d"], Float[Array, ""]]:
    """Min-Sum (Shejwalkar and Houmansadr, NDSS 2021, AGR-agnostic): ``s - gamma dev``.

    As :func:`minmax`, with the constraint
    ``sum_i ||x_i - m||^2 <= min_i sum_j ||x_i - x_j||^2``: the malicious row's sum of
    squared distances to the honest rows is at most the smallest such sum of an honest
    row. Arguments, result and errors are those of :func:`minmax`.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np, nnmjax
        >>> from nnmjax import attacks
        >>> honest = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0]], jnp.float32)  # mean 1
        >>> byz, gamma = attacks.minsum(honest, 1, return_gamma=True)  # 6 + 9 g^2 <= 9
        >>> print(np.round(np.asarray(byz), 3), round(float(gamma), 3))
        [[0.423 0.423 0.423]] 0.577
    """
    def objective(dist, pair):
        return lambda gamma: jnp.sum(dist(gamma)) <= jnp.min(jnp.sum(pair, axis=1))

    byz, gamma = _agnostic(honest, f, "minsum", direction, gamma_init, tol, objective)
    return (byz, gamma) if return_gamma else byz


def _check_key(rule, key):
    """Raise ``ValueError`` when a randomized ``rule`` gets no ``key``."""
    if getattr(rule, "randomized", False) and key is None:
        raise ValueError(f"{rule!r} is randomized: pass key=jax.random.key(...) to the attack")


class MimicState(NamedTuple):
    """State of the Mimic attack (:func:`mimic_init`, :func:`mimic_update`).

    Attributes:
        step: number of updates so far (int32 scalar).
        mu: running honest mean, ``(d,)``.
        z: unit direction (top principal direction estimate), ``(d,)``.
        target: index of the mimicked honest worker (int32 scalar).
    """

    step: jax.Array
    mu: jax.Array
    z: jax.Array
    target: jax.Array


def mimic_init(key: PRNGKeyArray, d: int, dtype=jnp.float32) -> MimicState:
    """Initial Mimic state with a random unit direction drawn from ``key``.

    Args:
        key: ``jax.random`` key of the direction.
        d: dimension of the inputs.
        dtype: floating dtype of ``mu`` and ``z``.

    Returns:
        A :class:`MimicState` at step 0 with ``mu = 0``, target 0.

    Examples:
        >>> import jax
        >>> from nnmjax import attacks
        >>> state = attacks.mimic_init(jax.random.key(0), 3)
        >>> int(state.step), state.z.shape
        (0, (3,))
    """
    z = jax.random.normal(key, (d,), dtype)
    return MimicState(jnp.zeros((), jnp.int32), jnp.zeros((d,), dtype),
                      z / jnp.linalg.norm(z), jnp.zeros((), jnp.int32))


def mimic_update(state: MimicState, honest: Real[ArrayLike, "h d"], *,
                 warmup: int = 1) -> MimicState:
    """One step of Karimireddy et al.'s (2022) Mimic heuristic (their ``MimicVariantAttacker``).

    During the first ``warmup`` steps (``t = state.step``) track the honest mean
    ``mu <- (t mu + mean_i x_i) / (t + 1)`` and the top principal direction of the honest
    inputs by online power iteration,
    ``z <- normalise(t z + u / ||u||)`` with ``u = sum_i <x_i - mu, z> (x_i - mu)``;
    the target is ``argmax_i <x_i, z>``, re-chosen at every warm-up step and frozen after.

    Args:
        state: the current :class:`MimicState`.
        honest: ``(h, d)`` honest inputs of this step.
        warmup: number of steps during which ``mu``, ``z`` and the target are updated.

    Returns:
        The next :class:`MimicState` (``step`` incremented).

    Raises:
        ValueError: if ``honest`` is not a non-empty real ``(h, d)`` array.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np, nnmjax
        >>> from nnmjax import attacks
        >>> honest = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1]], jnp.float32)  # mean 1
        >>> state = attacks.mimic_update(attacks.mimic_init(jax.random.key(0), 3), honest)
        >>> int(state.step), np.asarray(state.mu).tolist()
        (1, [1.0, 1.0, 1.0])
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


def mimic(honest: Real[ArrayLike, "h d"], f: int, *, state: MimicState,
          warmup: int = 1) -> tuple[Float[Array, "f d"], MimicState]:
    """Mimic: every Byzantine worker copies the honest worker chosen by Karimireddy et al.'s heuristic.

    The target is chosen by :func:`mimic_update`; start from :func:`mimic_init`.

    Args:
        honest: ``(h, d)`` honest inputs (integers are cast to float32).
        f: number of Byzantine rows to produce, ``>= 0``.
        state: the current :class:`MimicState`.
        warmup: as in :func:`mimic_update`.

    Returns:
        ``(byzantine, new_state)``: ``f`` copies of ``honest[new_state.target]`` and the
        updated state.

    Raises:
        ValueError: if ``honest`` is not a non-empty real ``(h, d)`` array or ``f`` is not a
            non-negative integer.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np, nnmjax
        >>> from nnmjax import attacks
        >>> honest = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1]], jnp.float32)  # mean 1
        >>> state = attacks.mimic_init(jax.random.key(0), 3)
        >>> byz, state = attacks.mimic(honest, 2, state=state)
        >>> byz.shape, bool((byz == honest[state.target]).all())
        ((2, 3), True)
    """
    honest, f = _prepare(honest, f, "mimic")
    state = mimic_update(state, honest, warmup=warmup)
    return _repeat(honest[state.target], f), state


#: Attack name -> function ``(honest: (h, d), f, **options) -> (f, d)`` (Mimic: and its state).
ATTACKS = {
    "sign_flipping": sign_flipping, "foe": foe, "alie": alie, "optimal_foe": optimal_foe,
    "optimal_alie": optimal_alie, "adaptive": adaptive, "mimic": mimic, "inf": inf,
    "gaussian": gaussian, "minmax": minmax, "minsum": minsum,
}
#: The attacks that search against the rule in use (they take ``rule=`` and ``search=``).
SEARCHING_ATTACKS = ("optimal_alie", "optimal_foe", "adaptive")
