"""The empirical robustness coefficient of a rule, found adversarially.

For a rule ``F`` and ``n, f, d``, :func:`audit` searches inputs ``x`` (``n`` rows of ``R^d``)
and sets ``S`` of ``n - f`` rows maximising Definition 2's ratio (Allouah et al., "Fixing
by Mixing", AISTATS 2023)::

    ratio(x, S) = ||F(x) - xbar_S||^2 / ((1/|S|) sum_{i in S} ||x_i - xbar_S||^2),

whose supremum is the smallest ``kappa`` for which ``F`` is (f, kappa)-robust. Every
candidate is a pair (honest rows ``H``: the rows of ``S``; Byzantine rows ``B``) placed at
chosen positions. The search, all restarts vmapped in one compiled call:

* **starting points**: the paper's constructions (Proposition 6's ``n - f`` zeros and
  ``f`` ones, whose ratio is ``f / (n - 2f)`` for any rule, and Proposition 7's
  instance, ratio >= 1/3 for GM, CWMed and Krum), the attacks' directions (ALIE's
  ``mean + eta sigma``, FOE's ``(1 - eta) mean``, copies of an honest row), and random
  heterogeneous honest rows with random Byzantine rows; half of the restarts keep the
  Byzantine rows identical (ties, as every attack sends), half let them differ; each
  restart puts the Byzantine rows at random positions;
* **gradient ascent through the rule** (Adam on ``(H, B)``, the honest rows renormalised
  to mean 0 and unit spread after each step, so the ratio is ``||F(x)||^2``): half of
  the restarts follow ``jax.grad`` of the rule, half a Gaussian-smoothed surrogate
  (antithetic finite differences), which also moves rules that are piecewise constant
  in the Byzantine rows (Krum's selection, NNM's neighbourhoods). Every iterate is
  scored with the true rule, and the best kept;
* **final scoring**: the best candidates are re-placed at more positions and scored,
  with Proposition 6's ``S0`` moved away from the origin (``n - f`` identical rows
  ``(1, ..., 1)`` and ``f`` rows beside them: a rule that depends on the origin must
  still return the common row) at as many positions,
  in float64 on the host, over every ``S`` of size ``n - f`` (Definition 2's maximum;
  the chosen ``S`` alone when ``C(n, f)`` exceeds ``max_subsets``).

A float32 rounding allowance ``(1e-5 max(1, ||F||))^2`` is subtracted from every
numerator, so that a rule returning the common value of ``n - f`` identical rows up to
rounding is not charged an infinite ratio.

Example: see :func:`audit`.
"""
from __future__ import annotations

import functools
import itertools
import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import ArrayLike, Bool, Real

from nnmjax.robust import metrics
from nnmjax.robust.rules import Rule, rule as make_rule

__all__ = ["AuditResult", "audit", "audit_many", "ratio", "lower_bound", "proven_bound",
           "audit_table"]

#: Float32 rounding allowance (relative) on ``||F(x) - xbar_S||``.
ROUNDING = 1e-5
#: XLA options of the final scoring's program: it runs once, on a few dozen inputs, so its
#: compilation is nearly all its cost; the backend's lowest optimisation level compiles it
#: 0.1-0.4 s faster per audit (the same operations; float rounding may differ, well within
#: :data:`ROUNDING`).
SCORING_OPTIONS = {"xla_backend_optimization_level": 0}


class AuditResult(NamedTuple):
    """One audit: the worst ratio found and the input attaining it.

    Attributes:
        rule: the rule's name.
        n: number of workers.
        f: number of Byzantine workers.
        d: dimension.
        worst_ratio: the largest Definition 2 ratio found.
        bound: the proven coefficient (``None`` where the paper proves none).
        lower_bound: Proposition 6's ``f/(n-2f)``.
        x: the ``(n, d)`` input attaining ``worst_ratio``.
        honest: boolean ``(n,)`` mask of the set ``S`` attaining the ratio.
        source: the starting point whose search found it.
        restarts: number of restarts run.
        steps: gradient-ascent steps per restart.
        wall_s: wall time of the audit in seconds.
    """

    rule: str
    n: int
    f: int
    d: int
    worst_ratio: float
    bound: float | None
    lower_bound: float
    x: np.ndarray
    honest: np.ndarray
    source: str
    restarts: int
    steps: int
    wall_s: float

    def as_dict(self) -> dict:
        """A JSON-ready dict of the fields (arrays as nested lists, a non-finite ratio as a string).

        Returns:
            ``dict`` with one key per field.
        """
        out = self._asdict()
        out["x"] = self.x.tolist()
        out["honest"] = self.honest.tolist()
        out["worst_ratio"] = _json_float(self.worst_ratio)
        return out


def _json_float(v):
    """``v``, or ``'inf'`` or ``'nan'`` when not finite (JSON has no infinities)."""
    return v if math.isfinite(v) else ("inf" if v > 0 else "nan")


def lower_bound(n: int, f: int) -> float:
    """Proposition 6: no rule is (f, kappa)-robust with ``kappa < f / (n - 2f)``.

    Args:
        n: number of workers.
        f: number of Byzantine workers, ``2f < n``.

    Returns:
        ``f / (n - 2f)``.

    Examples:
        >>> from nnmjax import audit
        >>> audit.lower_bound(5, 1)
        0.3333333333333333
    """
    return f / (n - 2 * f)


def proven_bound(name: str, n: int, f: int) -> float | None:
    """The paper's proven coefficient (:func:`nnmjax.robust.metrics.kappa_bound`), else ``None``.

    Args:
        name: rule name (``"cwtm"``, ``"nnm+krum"``, ...).
        n: number of workers.
        f: number of Byzantine workers, ``2f < n``.

    Returns:
        The coefficient, or ``None`` where the paper proves none.

    Examples:
        >>> from nnmjax import audit
        >>> audit.proven_bound("krum", 5, 1), audit.proven_bound("mda", 5, 1)
        (8.0, None)
    """
    try:
        return metrics.kappa_bound(name, n, f)
    except ValueError:
        return None


def ratio(output: Real[ArrayLike, " d"], x: Real[ArrayLike, "n d"], f: int, *,
          honest: Bool[ArrayLike, " n"] | None = None,
          max_subsets: int = 50_000) -> tuple[float, Bool[np.ndarray, " n"]]:
    """Definition 2's worst ratio of one output over every ``S`` of size ``n - f``.

    ``max_S ||output - xbar_S||^2 / ((1/|S|) sum_{i in S} ||x_i - xbar_S||^2)`` over every
    ``S`` (or only the mask ``honest``, which is required past ``max_subsets`` subsets), in
    float64 (NumPy), with the rounding allowance :data:`ROUNDING`; ``0/0`` counts as 0 and
    ``c/0`` (``c > 0``) as ``inf``: Definition 2 then fails for every kappa. Sets holding a
    non-finite row are skipped (Definition 2 holds trivially there).

    Args:
        output: the rule's ``(d,)`` output on ``x``.
        x: the ``(n, d)`` input.
        f: number of Byzantine rows.
        honest: optional boolean ``(n,)`` mask: score only this set.
        max_subsets: largest ``C(n, f)`` enumerated.

    Returns:
        ``(worst ratio, mask of S)``: a float and a boolean ``(n,)`` array.

    Raises:
        ValueError: if ``C(n, f) > max_subsets`` and no ``honest`` mask is given.

    Examples:
        >>> import jax.numpy as jnp, numpy as np
        >>> from nnmjax import aggregators, audit
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> worst, s = audit.ratio(aggregators.cwtm(x, 1), x, 1)
        >>> round(worst, 4), s.tolist()
        (0.2739, [True, True, False, True, True])
        >>> round(audit.ratio(aggregators.mean(x), x, 1, honest=np.arange(5) < 4)[0], 4)
        6.08
    """
    x = np.asarray(x, np.float64)
    out = np.asarray(output, np.float64)
    n = x.shape[0]
    k = n - f
    if honest is not None or math.comb(n, f) > max_subsets:
        if honest is None:
            raise ValueError(f"C({n}, {f}) = {math.comb(n, f):,} subsets exceed max_subsets="
                             f"{max_subsets:,}: pass the honest mask")
        subsets = np.flatnonzero(honest)[None]
    else:
        subsets = _subsets(n, k)
    if not np.all(np.isfinite(out)):
        mask = np.zeros(n, bool)
        mask[subsets[0]] = True
        return math.inf, mask
    finite = np.all(np.isfinite(x), axis=1)
    y = np.where(finite[:, None], x - out, 0.0)
    g = y @ y.T
    member = _members(n, k) if honest is None else np.bincount(subsets[0], minlength=n)[None] / k
    m2 = np.sum((member @ g) * member, axis=1)
    q = member @ np.diag(g)
    den = np.maximum(q - m2, 0.0)
    slack = (ROUNDING * max(1.0, float(np.max(np.abs(out))))) ** 2
    num = np.maximum(m2 - slack, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num > 0, np.inf, 0.0))
    r = np.where(np.all(finite[subsets], axis=1), r, 0.0)
    best = int(np.argmax(r))
    mask = np.zeros(n, bool)
    mask[subsets[best]] = True
    return float(r[best]), mask


@functools.lru_cache(maxsize=32)
def _subsets(n: int, k: int) -> np.ndarray:
    """Every subset of size ``k`` of ``range(n)``, as a ``(C(n, k), k)`` index array."""
    return np.array(list(itertools.combinations(range(n), k)))


@functools.lru_cache(maxsize=32)
def _members(n: int, k: int) -> np.ndarray:
    """``(C(n, k), n)``: row ``c`` is ``1/k`` on the members of the ``c``-th subset."""
    subsets = _subsets(n, k)
    member = np.zeros((len(subsets), n))
    np.put_along_axis(member, subsets, 1.0 / k, axis=1)
    return member


def _resolve(rule, f: int):
    """(name, call(x, key)) for a rule name, a :class:`~nnmjax.Rule` or a callable."""
    if isinstance(rule, str):
        rule = make_rule(rule, f)
    if isinstance(rule, Rule):
        name = rule.name
    elif callable(rule):
        name = getattr(rule, "__name__", repr(rule))
    else:
        raise ValueError(f"rule must be a name, a nnmjax.Rule or a callable; got {rule!r}")
    if getattr(rule, "randomized", False):
        return name, lambda x, key: rule(x, key=key)
    return name, lambda x, key: rule(x)


class _Start(NamedTuple):
    """Starting points of the restarts: honest and Byzantine rows, placements, ties, sources."""
    honest: np.ndarray   # (R, n - f, d)
    byz: np.ndarray      # (R, f, d)
    perm: np.ndarray     # (R, n) positions: x = concat(H, B)[perm]
    tied: np.ndarray     # (R,) Byzantine rows kept identical
    source: list         # (R,) names


def _starts(n: int, f: int, d: int, restarts: int, rng) -> _Start:
    """The starting points (see the module docstring), ``restarts`` of them at least."""
    h = n - f
    hs, bs, names = [], [], []
    e = np.zeros(d)
    e[0] = 1.0
    # Proposition 6: S1 = n - 2f zeros and f ones honest, f zeros Byzantine.
    hs.append(np.r_[np.zeros(h - f), np.ones(f)][:, None] * e)
    bs.append(np.zeros((f, d)))
    names.append("proposition6")
    # ... and S0 = n - f zeros honest, f ones Byzantine (the other half of the proof).
    hs.append(np.zeros((h, d)))
    bs.append(np.ones((f, d)) * e)
    names.append("proposition6")
    # Proposition 7: floor(h/2) at -1, the rest of the honest and all Byzantine at +1.
    lo = h // 2
    hs.append(np.r_[-np.ones(lo), np.ones(h - lo)][:, None] * e)
    bs.append(np.ones((f, d)) * e)
    names.append("proposition7")
    while len(hs) < restarts:
        k = len(hs)
        honest = rng.normal(size=(h, d)) * rng.uniform(0.3, 3.0, size=d) + rng.normal(size=d)
        mean, std = honest.mean(0), honest.std(0, ddof=1)
        kind = k % 5
        if kind == 0:
            eta = float(np.exp(rng.uniform(np.log(0.1), np.log(10))))
            byz, name = np.repeat((mean + eta * std)[None], f, 0), "alie"
        elif kind == 1:
            eta = float(np.exp(rng.uniform(np.log(0.1), np.log(10))))
            byz, name = np.repeat(((1 - eta) * mean)[None], f, 0), "foe"
        elif kind == 2:
            byz, name = np.repeat(honest[rng.integers(h)][None], f, 0), "honest_copies"
        else:
            scale = float(np.exp(rng.uniform(np.log(0.3), np.log(10))))
            byz, name = mean + scale * std * rng.normal(size=(f, d)), "random"
        hs.append(honest)
        bs.append(byz)
        names.append(name)
    r = len(hs)
    perm = np.stack([np.arange(n)] + [rng.permutation(n) for _ in range(r - 1)])
    tied = np.array([names[i] != "random" and (i % 2 == 0 or i < 3) for i in range(r)])
    return _Start(np.stack(hs), np.stack(bs), perm, tied, names)


def _offset_instance(n: int, f: int, d: int) -> np.ndarray:
    """Proposition 6's ``S0`` away from the origin: ``n - f`` copies of ``c = (1, ..., 1)``
    and ``f`` copies of ``c + e_1 / 2``.

    A translation-equivariant rule sees ``S0`` itself; a rule that depends on the origin
    (norms, signs, clipping) must still return ``c`` here, or its ratio is infinite (the
    honest spread is 0). Scored as it is (it cannot be normalised)."""
    c = np.ones((n, d))
    c[n - f:, 0] += 0.5
    return c


def _normalise(hraw, braw):
    """Honest rows to mean 0 and unit spread, the Byzantine rows by the same affine map."""
    mu = jnp.mean(hraw, axis=0)
    c = hraw - mu
    spread = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(c), axis=1)))
    spread = jnp.where(spread > 0, spread, 1.0)
    return c / spread, (braw - mu) / spread


def _make_search(call, n: int, f: int, d: int, steps: int, lr: float, sigma: float,
                 samples: int):
    """The compiled search: ``(starts..., keys) -> (best score, best H, best B)`` per restart."""
    opt = optax.adam(lr)

    def assemble(hraw, braw, perm, tied):
        hh, bb = _normalise(hraw, braw)
        bb = jnp.where(tied, jnp.broadcast_to(bb[0], bb.shape), bb)
        return jnp.concatenate([hh, bb], axis=0)[perm], hh, bb

    def score(params, perm, tied, key):
        x, hh, _ = assemble(*params, perm, tied)
        out = call(x, key)
        mean = jnp.mean(hh, axis=0)
        spread = jnp.mean(jnp.sum(jnp.square(hh - mean), axis=1))
        err = jnp.sum(jnp.square(out - mean))
        slack = jnp.square(ROUNDING * jnp.maximum(1.0, jnp.max(jnp.abs(out))))
        val = jnp.maximum(err - slack, 0.0) / jnp.maximum(spread, 1e-12)
        return jnp.where(jnp.isfinite(val), val, -1.0)

    def value_and_smoothed_grad(params, perm, tied, key, noise):
        """The score and the gradient of its Gaussian smoothing, from ``2 samples``
        antithetic evaluations (directions ``noise``, drawn on the host) and the centre, all
        in one vmapped call of the rule."""
        leaves, tree = jax.tree_util.tree_flatten(params)
        us = list(noise)
        signs = jnp.concatenate([jnp.zeros((1,)), jnp.ones((samples,)), -jnp.ones((samples,))])
        points = tree.unflatten([
            p[None] + sigma * signs.reshape((-1,) + (1,) * p.ndim)
            * jnp.concatenate([jnp.zeros((1,) + p.shape), u, u]) for p, u in zip(leaves, us)])
        vals = jax.vmap(lambda q: score(q, perm, tied, key))(points)
        diff = 0.5 * (vals[1:samples + 1] - vals[samples + 1:]) / sigma
        grads = [jnp.tensordot(diff, u, axes=1) / samples for u in us]
        return vals[0], tree.unflatten(grads)

    def run_one(hraw, braw, perm, tied, key, noise, smooth):
        """One restart: Adam ascent on the smoothed surrogate (``smooth``) or along
        ``jax.grad``, keeping the best iterate by the true rule's score."""
        params = _normalise(hraw, braw)
        state = opt.init(params)

        def step(carry, k):
            params, state, best = carry
            if smooth:
                val, g = value_and_smoothed_grad(params, perm, tied, key, k)
            else:  # the value of jax.value_and_grad is the same score of the same point
                val, g = jax.value_and_grad(score)(params, perm, tied, key)
            better = val > best[0]  # the true rule's score of the current point
            best = (jnp.where(better, val, best[0]),
                    jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), params, best[1]))
            g = jax.tree_util.tree_map(lambda v: jnp.where(jnp.isfinite(v), v, 0.0), g)
            updates, state = opt.update(jax.tree_util.tree_map(jnp.negative, g), state, params)
            params = _normalise(*optax.apply_updates(params, updates))
            return (params, state, best), None

        best = (jnp.array(-jnp.inf, jnp.float32), params)
        (params, _, best), _ = jax.lax.scan(step, (params, state, best), noise)
        return best[0], best[1][0], best[1][1]

    def build(auto):
        """Odd restarts follow the smoothed surrogate, even ones ``jax.grad`` (all smoothed
        when ``auto`` is false): two vmaps, so that each restart pays only for its own
        ascent."""
        def group(args, smooth):
            return jax.vmap(lambda *a: run_one(*a, smooth=smooth))(*args)

        def search(*args):
            if not auto:
                return group(args, True)
            r = args[0].shape[0]
            order = np.r_[np.arange(0, r, 2), np.arange(1, r, 2)]
            grad = group(jax.tree_util.tree_map(lambda a: a[0::2], args), False)
            smoothed = group(jax.tree_util.tree_map(lambda a: a[1::2], args), True)
            back = np.argsort(order)
            return tuple(jnp.concatenate([g, s])[back] for g, s in zip(grad, smoothed))

        return jax.jit(search)

    searches = {True: build(True), False: build(False)}

    def search(*args):
        """The search with ``jax.grad`` where the rule can be differentiated in reverse mode
        (not through a ``lax.while_loop``, e.g. CAF's), else smoothed only."""
        try:
            return searches[True](*args), True
        except (ValueError, TypeError, NotImplementedError):
            return searches[False](*args), False

    return search


def audit(rule, n: int, f: int, d: int = 8, *, restarts: int = 32, steps: int = 50,
          lr: float = 0.05, sigma: float = 0.05, samples: int = 4, placements: int = 4,
          seed: int = 0, max_subsets: int = 50_000) -> AuditResult:
    """Search for the input maximising Definition 2's ratio of ``rule`` (see the module docstring).

    Args:
        rule: a rule name (``"nnm+cwtm"``), a :class:`~nnmjax.Rule`, or any callable
            ``(n, d) -> (d,)``; a randomized rule gets a fixed key per restart (the audit
            then reports the worst case over the draws it tried).
        n: number of workers.
        f: number of Byzantine workers (``1 <= f``, ``2f < n``).
        d: dimension.
        restarts: vmapped searches (at least the 3 constructions).
        steps: gradient-ascent steps per restart.
        lr: Adam's step size.
        sigma: smoothing scale of the smoothed surrogate (relative to the unit honest spread).
        samples: antithetic samples of the smoothed surrogate.
        placements: random re-placements of the Byzantine rows of each of the best
            candidates in the final scoring.
        seed: seed of the starting points.
        max_subsets: past ``C(n, f)`` subsets, score only the honest set.

    Returns:
        :class:`AuditResult`; ``worst_ratio`` is a lower bound on the rule's true
        robustness coefficient (an adversarial search finds inputs, it proves nothing).

    Raises:
        ValueError: for ``2f >= n``, ``f < 1``, ``d < 1``, ``restarts < 3`` or ``steps < 0``.

    Examples:
        A short search on CWTM lands between Proposition 6's lower bound and the proven
        coefficient (up to the rounding allowance):

        >>> from nnmjax import audit
        >>> res = audit.audit("cwtm", n=5, f=1, d=2, restarts=4, steps=5)
        >>> res.lower_bound - 1e-6 <= res.worst_ratio <= res.bound, res.x.shape
        (True, (5, 2))
        >>> print(audit.audit_table([res]))
        rule  n  f  worst ratio  proven bound  f/(n-2f)  found by
        ----  -  -  -----------  ------------  --------  ...
        cwtm  5  1  ...          2.667    0.3333  ...
    """
    if not (isinstance(f, int) and 1 <= f and 2 * f < n):
        raise ValueError(f"audit needs 1 <= f and 2f < n; got n={n}, f={f}")
    if d < 1 or restarts < 3 or steps < 0:
        raise ValueError(f"audit needs d >= 1, restarts >= 3, steps >= 0; got d={d}, "
                         f"restarts={restarts}, steps={steps}")
    t0 = time.perf_counter()
    name, call = _resolve(rule, f)
    restarts, steps = _within_budget(rule if isinstance(rule, (str, Rule)) else None, n, f,
                                     restarts, steps)
    rng = np.random.default_rng(seed)
    st = _starts(n, f, d, restarts, rng)
    r = len(st.source)
    h = n - f
    search = _make_search(call, n, f, d, steps, lr, sigma, samples)
    keys = jax.random.split(jax.random.key(seed), r)
    noise = tuple(jnp.asarray(rng.standard_normal((r, steps + 1, samples, rows, d)), jnp.float32)
                  for rows in (h, f))
    (scores, hh, bb), _ = search(jnp.asarray(st.honest, jnp.float32),
                                 jnp.asarray(st.byz, jnp.float32), jnp.asarray(st.perm),
                                 jnp.asarray(st.tied), keys, noise)
    scores, hh, bb = np.asarray(scores), np.asarray(hh, np.float64), np.asarray(bb, np.float64)
    bb = np.where(st.tied[:, None, None], bb[:, :1], bb)

    # Final scoring: the best restarts and the constructions, at more positions, over all S;
    # the constructions also as they are (S0 has zero honest spread: not normalisable).
    order = dict.fromkeys([int(i) for i in np.argsort(-scores)[: max(4, r // 8)]] + [0, 1, 2])
    cands, masks, sources = [], [], []
    for i in order:
        for p in [st.perm[i]] + [rng.permutation(n) for _ in range(placements)]:
            cands.append(np.concatenate([hh[i], bb[i]])[p])
            masks.append(p < h)
            sources.append(st.source[i])
    for i in (0, 1, 2):
        cands.append(np.concatenate([st.honest[i], st.byz[i]]))
        masks.append(np.arange(n) < h)
        sources.append(st.source[i])
    offset = _offset_instance(n, f, d)
    for p in [np.arange(n)] + [rng.permutation(n) for _ in range(placements)]:
        cands.append(offset[p])
        masks.append(p < h)
        sources.append("proposition6_offset")
    xs = np.stack(cands).astype(np.float32)
    keys = jax.random.split(jax.random.key(seed + 1), len(xs))
    scoring = jax.jit(jax.vmap(call), compiler_options=SCORING_OPTIONS)
    outs = np.asarray(scoring(jnp.asarray(xs), keys), np.float64)
    every_s = math.comb(n, f) <= max_subsets
    best = (-1.0, None, None, None)
    for x, out, mask, src in zip(xs, outs, masks, sources):
        val, m = ratio(out, x, f, honest=None if every_s else mask, max_subsets=max_subsets)
        if val > best[0]:
            best = (val, x, m, src)
    val, x, mask, src = best
    return AuditResult(name, n, f, d, float(val), proven_bound(name, n, f), lower_bound(n, f),
                       np.asarray(x, np.float64), np.asarray(mask), src, r, steps,
                       time.perf_counter() - t0)


#: Work of one evaluation of a subset rule (MDA: ``C(n, f) (n - f)^2``, SMEA's eigenvalues:
#: ``C(n, f) (n - f)^3``) past which the audit scales its restarts and steps down by the
#: square root of the excess, each to at least 8.
SUBSET_BUDGET = 100_000


def _within_budget(rule, n, f, restarts, steps):
    """``(restarts, steps)`` for rules that enumerate subsets (see :data:`SUBSET_BUDGET`)."""
    stages = set((make_rule(rule, f) if isinstance(rule, str) else rule).stages) if rule else set()
    k = n - f
    work = math.comb(n, f) * (k ** 3 if "smea" in stages else k ** 2 if "mda" in stages else 0)
    if work <= SUBSET_BUDGET:
        return restarts, steps
    shrink = math.sqrt(SUBSET_BUDGET / work)
    return max(8, round(restarts * shrink)), max(8, round(steps * shrink))


def refusal(rule, n: int, f: int) -> str | None:
    """Why ``rule`` refuses ``n`` inputs with ``f`` Byzantine ones (its ``ValueError``
    message, e.g. Bulyan's ``n >= 4f + 3``), or ``None`` when it accepts them.

    Examples:
        >>> from nnmjax.robust import audit
        >>> audit.refusal("bulyan", 17, 4)
        'bulyan needs n >= 19 inputs for f=4 Byzantine ones; got n=17'
        >>> audit.refusal("nnm+cwtm", 17, 4) is None
        True
    """
    return _named_refusal(rule, n, f) if isinstance(rule, str) else _trace_refusal(rule, n, f)


def _trace_refusal(rule, n: int, f: int) -> str | None:
    """:func:`refusal` by tracing the rule on an ``(n, 1)`` input."""
    try:
        _, call = _resolve(rule, f)
        jax.eval_shape(call, jax.ShapeDtypeStruct((n, 1), jnp.float32), jax.random.key(0))
    except ValueError as e:
        return str(e)
    return None


#: :func:`refusal` of a rule name, traced once per ``(name, n, f)`` in a process.
_named_refusal = functools.lru_cache(maxsize=1024)(_trace_refusal)


def _one(args):
    """One :func:`audit` from a picklable ``(rule, n, f, options)`` task."""
    rule, n, f, options = args
    return audit(rule, n, f, **options)


def audit_many(rules, n: int, fs, *, jobs: int = 1, progress=None, **options):
    """:func:`audit` for every rule and every ``f``, in ``jobs`` processes.

    Args:
        rules: rule names (or rules) to audit.
        n: number of workers.
        fs: the numbers of Byzantine workers.
        jobs: worker processes (``spawn``); 1 runs in this process.
        progress: optional ``progress(result)``, called as each audit finishes.
        **options: keyword options of :func:`audit`.

    Returns:
        The list of :class:`AuditResult`, rules outer and ``f`` inner, in that order; the
        pairs a rule refuses (:func:`refusal`, e.g. Bulyan's ``n >= 4f + 3``) are left out.

    Raises:
        ValueError: as :func:`audit`.
    """
    tasks = [(r, n, f, options) for r in rules for f in fs if refusal(r, n, f) is None]
    if jobs <= 1:
        out = []
        for t in tasks:
            out.append(_one(t))
            if progress:
                progress(out[-1])
        return out
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        futures = [pool.submit(_one, t) for t in tasks]
        for fut in concurrent.futures.as_completed(futures):
            if progress:
                progress(fut.result())
        return [fut.result() for fut in futures]


def audit_table(results) -> str:
    """A plain aligned table of audit results.

    Columns: rule, n, f, worst ratio, proven bound, lower bound ``f/(n-2f)``, and the starting
    point that found the worst ratio.

    Args:
        results: :class:`AuditResult` values.

    Returns:
        The table as one string (a header, a rule line, one line per result).

    Examples:
        See :func:`audit`.
    """
    rows = [("rule", "n", "f", "worst ratio", "proven bound", "f/(n-2f)", "found by")]
    for r in results:
        rows.append((r.rule, str(r.n), str(r.f), f"{r.worst_ratio:.4g}",
                     "-" if r.bound is None else f"{r.bound:.4g}", f"{r.lower_bound:.4g}",
                     r.source))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if j in (0, 6) else c.rjust(w)
                       for j, (c, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
