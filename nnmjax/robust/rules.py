"""Rule names -> callables: ``nnmjax.rule("nnm+cwtm", f)``.

A name is ``pre1+pre2+...+aggregator``: zero or more pre-aggregators from
:data:`nnmjax.robust.preaggregators.PREAGGREGATORS` applied left to right, then one
aggregator from :data:`nnmjax.robust.aggregators.AGGREGATORS`. Every stage receives the
same ``f`` (a pre-aggregator's output holds at most ``f`` contaminated rows).
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

import jax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from nnmjax.robust import aggregators as _agg
from nnmjax.robust import preaggregators as _pre
from nnmjax.robust._checks import as_matrix, check_count, work_dtype
from nnmjax._suggest import did_you_mean

__all__ = ["rule", "Rule", "RANDOMIZED", "known_names"]

#: Stages that draw randomness and therefore need a ``key``.
RANDOMIZED = frozenset({"bucketing", "dnc", "signguard"})


def known_names() -> str:
    """The valid aggregator and pre-aggregator names, as one line for error messages.

    Returns:
        ``"aggregators: ...; pre-aggregators: ..."``, each list sorted.

    Examples:
        >>> from nnmjax.robust.rules import known_names
        >>> print(known_names())
        aggregators: bulyan, caf, cclip, cge, cwmed, cwtm, dnc, gm, krum, mda, meamed, mean, monna, multikrum, signguard, smea;
        pre-aggregators: arc, bucketing, clipping, nnm
    """
    return (f"aggregators: {', '.join(sorted(_agg.AGGREGATORS))}; "
            f"pre-aggregators: {', '.join(sorted(_pre.PREAGGREGATORS))}")


def _keyword_options(fn) -> set[str]:
    """Names of ``fn``'s keyword-only options (``key`` excluded)."""
    return {p.name for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "key"}


def _check_options(stage: str, fn, options: Mapping[str, Any]):
    """Raise ``ValueError`` for options that ``stage``'s function does not accept."""
    allowed = _keyword_options(fn)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {stage!r}"
                         f"{did_you_mean(unknown[0], allowed)}; "
                         f"it accepts {sorted(allowed) or 'no options'}")


class Rule:
    """A composed robust rule ``x: (n, d) -> (d,)``, built by :func:`rule`.

    Call as ``r(x)``, or ``r(x, key=key)`` when :attr:`randomized`. Pure and jit/vmap-able:
    ``r(x) = F(pre_k(... pre_1(x, f) ..., f), f)`` with the stages of :attr:`stages`.

    Args:
        name: ``"pre1+...+aggregator"`` (see :mod:`nnmjax.robust.rules`).
        f: number of Byzantine inputs, a non-negative ``int``.
        options: keyword options of the final aggregator.
        pre_options: ``{stage: {option: value}}`` for the pre-aggregators.

    Attributes:
        name: the normalised name (stages joined by ``+``).
        f: the number of Byzantine inputs every stage receives.
        stages: the stage names, pre-aggregators first.
        options: the aggregator's options.
        pre_options: the pre-aggregators' options.
        randomized: whether a stage draws randomness (then ``key`` is required).

    Raises:
        ValueError: for an unknown or misplaced stage name, an unknown option, a
            ``pre_options`` entry that is not a stage, or an invalid ``f``.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np, nnmjax
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> r = nnmjax.robust.rules.Rule("nnm+cwtm", 1, {}, {})
        >>> r, r.stages, r.randomized
        (rule('nnm+cwtm', f=1), ('nnm', 'cwtm'), False)
        >>> print(np.round(np.asarray(r(x)), 4))
        [1. 1. 1.]
    """

    def __init__(self, name: str, f: int, options: Mapping[str, Any],
                 pre_options: Mapping[str, Mapping[str, Any]]):
        stages = [s.strip() for s in name.split("+")]
        if not name or any(not s for s in stages):
            raise ValueError(f"bad rule name {name!r}; expected e.g. 'cwtm' or 'nnm+cwtm' ({known_names()})")
        *pres, last = stages
        for s in pres:
            if s not in _pre.PREAGGREGATORS:
                hint = (" (aggregators go last)" if s in _agg.AGGREGATORS
                        else did_you_mean(s, _pre.PREAGGREGATORS))
                raise ValueError(f"unknown pre-aggregator {s!r} in rule {name!r}{hint}; {known_names()}")
        if last not in _agg.AGGREGATORS:
            hint = (" (a pre-aggregator cannot end a rule)" if last in _pre.PREAGGREGATORS
                    else did_you_mean(last, _agg.AGGREGATORS))
            raise ValueError(f"unknown aggregator {last!r} in rule {name!r}{hint}; {known_names()}")
        unknown_pre = sorted(set(pre_options) - set(pres))
        if unknown_pre:
            raise ValueError(f"pre_options names {unknown_pre}, which are not stages of {name!r}")
        f = check_count(f)
        _check_options(last, _agg.AGGREGATORS[last], options)
        for s in pres:
            _check_options(s, _pre.PREAGGREGATORS[s], pre_options.get(s, {}))
        self.name = "+".join(stages)
        self.f = f
        self.stages = tuple(stages)
        self.options = dict(options)
        self.pre_options = {k: dict(v) for k, v in pre_options.items()}
        self.randomized = any(s in RANDOMIZED for s in stages)

    def __call__(self, x: Real[ArrayLike, "n d"], *,
                 key: PRNGKeyArray | None = None) -> Float[Array, " d"]:
        """Aggregate the ``(n, d)`` rows ``x`` into one ``(d,)`` vector.

        Every stage computes in :func:`nnmjax.robust._checks.work_dtype` (float32 for narrower floats)
        and the output is cast back to ``x``'s floating dtype.

        Args:
            x: ``(n, d)`` array, one row per worker.
            key: ``jax.random`` key, keyword-only; required when :attr:`randomized` (split
                once per random stage).

        Returns:
            The ``(d,)`` aggregate.

        Raises:
            ValueError: if the rule is randomized and ``key`` is ``None``, or ``x`` or ``f`` is
                invalid for a stage.

        Examples:
            >>> import jax, jax.numpy as jnp, numpy as np, nnmjax
            >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
            >>> r = nnmjax.rule("bucketing+gm", 1, max_iter=3)
            >>> r(x, key=jax.random.key(0)).shape
            (3,)
        """
        if self.randomized and key is None:
            raise ValueError(f"rule {self.name!r} is randomized: call it with key=jax.random.key(...)")
        *pres, last = self.stages
        x = as_matrix(x)
        out_dtype = x.dtype
        x = x.astype(work_dtype(out_dtype))  # one upcast for all stages (the dtype policy)
        for s in pres:
            opts = self.pre_options.get(s, {})
            if s in RANDOMIZED:
                key, sub = jax.random.split(key)
                x = _pre.PREAGGREGATORS[s](x, self.f, key=sub, **opts)
            else:
                x = _pre.PREAGGREGATORS[s](x, self.f, **opts)
        opts = dict(self.options, key=key) if last in RANDOMIZED else self.options
        return _agg.AGGREGATORS[last](x, self.f, **opts).astype(out_dtype)

    def __repr__(self):
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"rule({self.name!r}, f={self.f}{opts})"


def rule(name: str, f: int, *, pre_options: Mapping[str, Mapping[str, Any]] | None = None,
         **options: Any) -> Rule:
    """Build the rule named ``name`` for ``f`` Byzantine inputs.

    ``name`` is e.g. ``"cwtm"``, ``"nnm+cwtm"``, ``"bucketing+krum"`` or ``"arc+nnm+gm"``:
    pre-aggregators applied left to right, then one aggregator.
    ``options`` go to the final aggregator (``rule("gm", 4, max_iter=3)``);
    ``pre_options={"bucketing": {"s": 2}}`` to a stage.

    Args:
        name: ``"pre1+pre2+...+aggregator"``, names from ``PREAGGREGATORS`` and ``AGGREGATORS``.
        f: number of Byzantine inputs, a non-negative ``int``, passed to every stage.
        pre_options: ``{stage: {option: value}}`` for the pre-aggregators.
        **options: keyword options of the final aggregator.

    Returns:
        The :class:`Rule`, a callable ``x: (n, d) -> (d,)``.

    Raises:
        ValueError: for unknown names or options (the message lists the valid ones and
            suggests the closest name), or an invalid ``f``.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np, nnmjax
        >>> x = jnp.array([[0, 1, 2], [1, 0, 1], [2, 2, 0], [1, 1, 1], [9, -9, 9]], jnp.float32)
        >>> agg = nnmjax.rule("nnm+cwtm", f=1)
        >>> print(np.round(np.asarray(agg(x)), 4))
        [1. 1. 1.]
        >>> nnmjax.rule("bucketing+gm", 1, max_iter=3, pre_options={"bucketing": {"s": 2}})
        rule('bucketing+gm', f=1, max_iter=3)
        >>> nnmjax.rule("nnm+cwtn", 1)
        Traceback (most recent call last):
            ...
        ValueError: unknown aggregator 'cwtn' in rule 'nnm+cwtn' (did you mean 'cwtm'?); ...
    """
    return Rule(name, f, options, pre_options or {})
