"""The optimal attacks' fast path: a rule evaluated on inputs confined to a small subspace.

The optimal attacks evaluate ``damage(eta) = ||F(x(eta)) - s||^2`` for hundreds of
``eta``, where ``x(eta)`` stacks the honest rows ``h_i`` and ``f`` copies of
``s + eta a`` (``s`` the honest mean). Every row of ``x(eta) - s`` lies in the span of
the ``h + 1`` rows of ``W = [h_1 - s; ...; h_h - s; a]``. Hence:

* a rule whose stages are all *translation and rotation equivariant* (NNM, Bucketing,
  mean, Krum, Multi-Krum, GM from the medoid, MDA, MoNNA, SMEA: they depend on the
  rows only through distances and output combinations of rows) gives the same damage
  on the ``(h + 1)``-dimensional coordinates of the rows in an orthonormal basis of that
  span: after one pass over ``W`` (its Gram matrix), each evaluation costs ``O(n^2 h)``
  instead of a pass over ``d``;
* a rule made of row mixings (NNM, Bucketing) followed by a coordinate-wise aggregator
  (CWMed, CWTM, MeaMed) gets its mixing matrix ``M`` from the coordinates and then
  needs one ``(n, h + 1) @ (h + 1, d)`` product and the aggregator over ``d``, with
  neither the stacked inputs nor the mixing's Gram pass per ``eta``.

The adaptive attack's gradient ascent over ``f`` free rows uses the first point in the
form of :func:`frame`: an equivariant rule's damage, and its gradient with respect to each
row, depend on the rows only through the span of the centred honest rows and the starting
rows, so the whole ascent runs on ``h + 1`` coordinates.

Any other rule (clipping, ARC, centred clipping, CAF, GM from zero, a user's callable) is
evaluated on the stacked inputs as they are. The three agree to float32 round-off
(``tests/test_attacks.py``).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from nnmjax.robust import _gram, _order, linalg
from nnmjax.robust import aggregators as _agg
from nnmjax.robust import preaggregators as _pre
from nnmjax.robust.rules import RANDOMIZED, Rule

#: Stages equivariant under translations and rotations (with their default options).
#: CAF is equivariant too but its filtering is too sensitive to float32 round-off for the
#: coordinates to reproduce its choices reliably, so it takes the direct path.
EQUIVARIANT = frozenset({"nnm", "bucketing", "mean", "krum", "multikrum", "gm", "mda",
                         "monna", "smea"})
#: Coordinate-wise (translation equivariant) aggregators.
COORDINATEWISE = frozenset({"cwmed", "cwtm", "meamed"})
#: Coordinate-wise aggregators that average a fixed window of ranks (closed form below).
WINDOWED = frozenset({"cwmed", "cwtm"})


def windowed(rule) -> bool:
    """Whether ``rule`` is a lone CWTM or CWMed :class:`~nnmjax.robust.rules.Rule` (the
    closed form of :func:`window_residual_fn` applies)."""
    return isinstance(rule, Rule) and len(rule.stages) == 1 and rule.stages[0] in WINDOWED


def _window(name: str, n: int, rule_f: int) -> tuple[int, int]:
    """The ranks ``[a, b)`` (0-based, ascending) that aggregator ``name`` averages among
    ``n`` values per coordinate: CWTM ``[f, n - f)``; CWMed the middle one or two."""
    if name == "cwtm":
        return rule_f, n - rule_f
    return (n - 1) // 2, n // 2 + 1


def window_residual_fn(honest, direction, f: int, rule_f: int, name: str):
    """``eta -> rule(honest ++ f x (s + eta a)) - s`` for ``rule`` CWTM or CWMed, in closed
    form from the sorted centred honest columns: no sort per evaluation.

    Per coordinate, with ``c_0 <= ... <= c_{h-1}`` the sorted centred honest values and
    ``v = eta a`` the Byzantine value, honest ``c_i`` has rank ``i`` among the ``n = h + f``
    values if ``c_i < v``, else ``i + f``. For the window of ranks ``[a, b)`` the rule
    averages, with ``A_i = [a <= i < b]``, ``B_i = [a - f <= i < b - f]`` and
    ``D_i = A_i - B_i``,

        ``(b - a) F = sum_i B_i c_i + (b - a - sum_i B_i) v - sum_i D_i max(v - c_i, 0)``

    (the ``v`` copies fill the window's remaining ranks; ties place the equal values
    either way with the same sum). ``D_i`` is non-zero for at most ``2 min(f, b - a)``
    ranks, so one evaluation is that many hinges per coordinate. The hinges are taken at
    ``u = clip(v, c_0, c_{h-1})`` and the part of ``v`` beyond the honest range is added
    with its exact (static) coefficient, ``max(v - c_i, 0) = max(u - c_i, 0) +
    max(v - c_{h-1}, 0)``, so a large ``eta`` cancels nothing: past the honest range the
    output of CWTM is exactly constant, as the rule's is. A candidate whose arithmetic
    overflows gives a non-finite residual, which the searches never choose.
    """
    rows = _order.sorted_rows(honest - jnp.mean(honest, axis=0))
    rows = jnp.stack(rows) if isinstance(rows, list) else rows
    evaluate = _window_evaluator(honest.shape[0], f, rule_f, name)
    a_dir = direction.astype(honest.dtype)
    return lambda eta: evaluate(rows, a_dir, eta)


def window_damage_fn(honest, direction, f: int, rule_f: int, name: str, *, block: int = 4096):
    """``etas (k,) -> ||residual(eta)||^2`` of :func:`window_residual_fn`, every ``eta`` of
    a block of ``block`` columns at a time (one pass over the sorted honest columns for
    all candidates, instead of one per candidate)."""
    h, d = honest.shape
    rows = _order.sorted_rows(honest - jnp.mean(honest, axis=0))
    rows = jnp.stack(rows) if isinstance(rows, list) else rows
    evaluate = _window_evaluator(h, f, rule_f, name)
    block = min(block, d)
    pad = (-d) % block  # zero columns: zero residual
    rows = jnp.pad(rows, ((0, 0), (0, pad))).reshape(h, -1, block).transpose(1, 0, 2)
    a_dir = jnp.pad(direction.astype(honest.dtype), (0, pad)).reshape(-1, block)

    def damage(etas):
        def one_block(args):
            r, a = args
            res = jax.vmap(lambda eta: evaluate(r, a, eta))(etas)
            return jnp.sum(jnp.square(res), axis=1)

        return jnp.sum(jax.lax.map(one_block, (rows, a_dir)), axis=0)

    return damage


def _window_evaluator(h: int, f: int, rule_f: int, name: str):
    """``(sorted centred honest rows (h, d), a (d,), eta) -> residual (d,)``, the closed
    form of :func:`window_residual_fn` with its static coefficients."""
    a, b = _window(name, h + f, rule_f)
    wa = [int(a <= i < b) for i in range(h)]
    wb = [int(a - f <= i < b - f) for i in range(h)]
    free = b - a - sum(wb)  # the coefficient of v inside the honest range
    beyond = b - a - sum(wa)  # ... and past its top
    signed = [(i, wa[i] - wb[i]) for i in range(h) if wa[i] != wb[i]]
    kept = [i for i in range(h) if wb[i]]

    def evaluate(rows, a_dir, eta):
        v = eta * a_dir
        top = rows[h - 1]
        u = jnp.clip(v, rows[0], top)
        total = functools.reduce(jnp.add, [rows[i] for i in kept], jnp.zeros_like(v))
        if free:
            total = total + free * jnp.minimum(v, top)
        if beyond:
            total = total + beyond * jnp.maximum(v - top, 0.0)
        for i, sign in signed:
            hinge = jnp.maximum(u - rows[i], 0.0)
            total = total - hinge if sign > 0 else total + hinge
        return total / (b - a)

    return evaluate


def _mixing(stage: str, x, f: int, key, options):
    """The ``(m, n)`` matrix ``W`` with ``stage(x) = W @ x`` for a mixing pre-aggregator."""
    if stage == "nnm":
        return _pre.mixing_matrix(x, f)
    return _pre.bucketing_matrix(x.shape[0], f, key=key, dtype=x.dtype, **options)


def _honest_coordinates(centred):
    """Rows of ``centred`` (h, d) as coordinates ``(h, h)`` in an orthonormal basis of their
    span, ``U sqrt(Lambda)`` from ``G = U Lambda U^T``, plus what is needed to place
    another vector in that basis."""
    lam, u = linalg.eigh(_gram.gram(centred))
    lam = jnp.maximum(lam, 0.0)
    return u * jnp.sqrt(lam), lam, u


def _split(centred, direction):
    """The honest rows' coordinates and eigendecomposition ``(hc, lam, u)``, which
    eigenvectors are above round-off (``keep``), and ``a``'s projection on their span
    (``par``) and the norm of the rest (``perp``)."""
    hc, lam, u = _honest_coordinates(centred)
    b = jnp.matmul(centred, direction, precision=jax.lax.Precision.HIGHEST)
    keep = lam > jnp.max(lam) * (16 * jnp.finfo(centred.dtype).eps)
    par = jnp.where(keep, (u.T @ b) / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
    norm2 = jnp.dot(direction, direction, precision=jax.lax.Precision.HIGHEST)
    return hc, lam, u, keep, par, jnp.sqrt(jnp.maximum(norm2 - par @ par, 0.0)), norm2


def coordinates(centred, direction):
    """The centred honest rows ``h_i - s`` and ``a`` as coordinates ``(h, h + 1)`` and
    ``(h + 1,)`` in an orthonormal basis of their span. The honest block comes from the
    eigendecomposition of the honest Gram matrix alone (accurate at the honest spread's
    scale, whatever ``||a||``); ``a`` is split into its projection on that span and one
    orthogonal coordinate."""
    hc, _, _, _, par, perp, _ = _split(centred, direction)
    pad = jnp.zeros((hc.shape[0], 1), hc.dtype)
    return jnp.concatenate([hc, pad], axis=1), jnp.concatenate([par, perp[None]])


def frame(centred, direction):
    """The centred honest rows and ``direction`` in an orthonormal frame of their span:
    ``(honest_coords (h, h + 1), direction_coords (h + 1,), free (h + 1,), combination)``,
    in at least float32.

    The coordinates are those of :func:`coordinates` (one Gram pass over the honest
    rows). ``free`` marks the frame's directions that exist over ``d``: the honest Gram's
    eigenvectors above round-off, and the part of ``direction`` outside their span when
    it exceeds ``1e-3`` of ``direction``'s norm (below that, ``||a||^2 - ||a_par||^2`` is
    too inexact to define it); the other coordinates are zero. ``combination(c)`` gives
    the coefficients ``(alpha (m, h), beta (m,))`` of the rows with coordinates ``c``
    ``(m, h + 1)`` over ``d``: ``alpha @ centred + beta[:, None] * direction`` (for
    ``honest_coords``, ``centred`` to round-off), ignoring the coordinates that are not
    ``free``. Distances between such rows are those of their coordinates, so a
    translation and rotation equivariant rule of rows given in coordinates is, mapped
    back, the rule of the mapped rows."""
    dtype = jnp.promote_types(centred.dtype, jnp.float32)
    centred, direction = centred.astype(dtype), direction.astype(dtype)
    hc, lam, u, keep, par, perp, norm2 = _split(centred, direction)
    has_perp = perp > 1e-3 * jnp.sqrt(norm2)
    perp = jnp.where(has_perp, perp, 0.0)
    free = jnp.concatenate([keep, has_perp[None]])
    inv = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
    inv_perp = jnp.where(has_perp, 1.0 / jnp.where(has_perp, perp, 1.0), 0.0)

    def combination(c):
        c = jnp.where(free, c, 0.0)
        beta = c[:, -1] * inv_perp
        return ((c[:, :-1] - beta[:, None] * par) * inv) @ u.T, beta

    pad = jnp.zeros((hc.shape[0], 1), dtype)
    return (jnp.concatenate([jnp.where(keep, hc, 0.0), pad], axis=1),
            jnp.concatenate([par, perp[None]]), free, combination)


def _stack(honest, byz_row, f):
    return jnp.concatenate([honest, jnp.broadcast_to(byz_row, (f,) + byz_row.shape)], axis=0)


def in_coordinates(rule) -> bool:
    """Whether :func:`residual_fn` evaluates ``rule`` on the ``(h + 1)``-dimensional
    coordinates (every stage equivariant), rather than over ``d``."""
    return (isinstance(rule, Rule) and all(st in EQUIVARIANT for st in rule.stages)
            and rule.options.get("init") != "zero")


def residual_fn(honest, direction, f: int, rule: Callable, *, key=None):
    """``(fn, in_coordinates)`` with ``fn(eta) = rule(honest ++ f x (s + eta a)) - s`` on the
    fastest exact path for ``rule`` (see the module docstring): a ``(d,)`` vector, or, when
    ``in_coordinates``, the same vector's ``(h + 1)`` coordinates (same norm)."""
    s = jnp.mean(honest, axis=0)
    if isinstance(rule, Rule):
        *pres, last = rule.stages
        if in_coordinates(rule):
            hc, ac = coordinates(honest - s, direction)
            return (lambda eta: call(rule, _stack(hc, eta * ac, f), key)), True
        if windowed(rule):
            return window_residual_fn(honest, direction, f, rule.f, last), False
        if mixed(rule) or (not pres and last in COORDINATEWISE):
            return _mixed_coordinatewise(honest, direction, f, rule, key), False

    def direct(eta):
        return call(rule, _stack(honest, (s + eta * direction).astype(honest.dtype), f), key) - s

    return direct, False


def call(rule, x, key):
    """``rule(x)``, with ``key`` when the rule is randomized."""
    return rule(x, key=key) if getattr(rule, "randomized", False) else rule(x)


def mixed(rule) -> bool:
    """Whether ``rule`` is row mixings (NNM, Bucketing) followed by a coordinate-wise
    aggregator, with at least one mixing (:func:`mixed_damage_fn` applies)."""
    if not isinstance(rule, Rule):
        return False
    *pres, last = rule.stages
    return bool(pres) and last in COORDINATEWISE and all(st in ("nnm", "bucketing") for st in pres)


def _centred_rows(honest, direction):
    """``w = [h_1 - s; ...; h_h - s; a]``, ``(h + 1, d)``."""
    return jnp.concatenate([honest - jnp.mean(honest, axis=0),
                            direction[None].astype(honest.dtype)], axis=0)


def _mixed_coefficients(honest, direction, f, rule, key):
    """``(w, coef)`` with the mixed rows ``coef(eta) @ w`` for a :func:`mixed` rule:
    ``w = [h_1 - s; ...; h_h - s; a]`` ``(h + 1, d)`` and ``coef(eta)`` ``(m, h + 1)``, the
    mixings computed on the coordinates (no pass over ``d`` per ``eta``)."""
    *pres, _ = rule.stages
    h, rf = honest.shape[0], rule.f
    w = _centred_rows(honest, direction)
    hc, ac = coordinates(w[:h], direction)  # the centring pass over d is done once, for both

    def coef(eta):
        x = _stack(hc, eta * ac, f)
        m = jnp.eye(h + f, dtype=honest.dtype)
        k = key
        for st in pres:
            sub = None
            if st in RANDOMIZED:
                k, sub = jax.random.split(k)
            mix = _mixing(st, x, rf, sub, rule.pre_options.get(st, {}))
            x, m = mix @ x, mix @ m
        return jnp.concatenate([m[:, :h], eta * jnp.sum(m[:, h:], axis=1, keepdims=True)],
                               axis=1)

    return w, coef


def _mixed_coordinatewise(honest, direction, f, rule, key):
    """Mixings from the coordinates, then the coordinate-wise aggregator over ``d``; the
    attack sends ``f`` rows, the rule's stages are told their own ``rule.f``."""
    *pres, last = rule.stages
    h, rf = honest.shape[0], rule.f
    aggregate = _agg.AGGREGATORS[last]
    if not pres:
        w = _centred_rows(honest, direction)
        return lambda eta: aggregate(_stack(w[:h], eta * w[h], f), rf, **rule.options)
    w, coef = _mixed_coefficients(honest, direction, f, rule, key)

    def residual(eta):
        y = jnp.matmul(coef(eta), w, precision=jax.lax.Precision.HIGHEST)
        return aggregate(y, rf, **rule.options)

    return residual


def _nnm_windowed(rule) -> bool:
    """Whether ``rule`` is NNM followed by CWTM or CWMed: NNM gives the ``f`` identical
    Byzantine rows identical neighbourhoods, so its mixed rows are ``h`` mixed honest rows
    and ``f`` copies of one more, and the window's closed form
    (:func:`_window_evaluator`) applies to them."""
    return isinstance(rule, Rule) and rule.stages[:-1] == ("nnm",) and rule.stages[-1] in WINDOWED


def mixed_damage_fn(honest, direction, f: int, rule, key, *, block: int = 2048):
    """``etas (k,) -> ||residual(eta)||^2`` for a :func:`mixed` rule, every ``eta`` of a
    block of ``block`` columns at a time: the mixing coefficients of all candidates first
    (``(k, m, h + 1)``, no pass over ``d``), then, per block, the mixed rows of every
    candidate (one product) and the aggregator, in cache. One pass over ``w`` for all
    candidates instead of one per candidate; the same sums as
    :func:`_mixed_coordinatewise` in another order (float32 round-off).

    For NNM followed by CWTM or CWMed (:func:`_nnm_windowed`) the product forms only the
    ``h`` mixed honest rows and the one mixed Byzantine row, and the aggregator is the
    window's closed form on the ``h`` sorted honest ones (a sort of ``h`` rows, not
    ``h + f``)."""
    last = rule.stages[-1]
    w, coef = _mixed_coefficients(honest, direction, f, rule, key)
    h = honest.shape[0]
    if _nnm_windowed(rule):
        rows_used = h + 1  # the f Byzantine rows' mixings are one row, f times
        evaluate = _window_evaluator(h, f, rule.f, last)

        def residual(y):
            rows = _order.sorted_rows(y[:h])
            return evaluate(jnp.stack(rows) if isinstance(rows, list) else rows, y[h], 1.0)
    else:
        rows_used, aggregate = h + f, _agg.AGGREGATORS[last]

        def residual(y):
            return aggregate(y, rule.f, **rule.options)
    d = w.shape[1]
    block = min(block, d)
    pad = (-d) % block  # zero columns: zero residual
    blocks = jnp.pad(w, ((0, 0), (0, pad))).reshape(w.shape[0], -1, block).transpose(1, 0, 2)

    def damage(etas):
        coefs = jax.vmap(coef)(etas)[:, :rows_used]

        def one_block(wb):
            y = jnp.einsum("enk,kb->enb", coefs, wb, precision=jax.lax.Precision.HIGHEST)
            res = jax.vmap(residual)(y)
            return jnp.sum(jnp.square(res), axis=1)

        return jnp.sum(jax.lax.map(one_block, blocks), axis=0)

    return damage
