"""What the rule tests need to know about each rule: which take a key, which need more rows
than ``2f + 1``, which are not translation equivariant, and one way to call any of them."""
from __future__ import annotations

import jax

import nnmjax
from nnmjax.robust import rules

#: The key every randomized rule is called with in the tests.
KEY = jax.random.key(0)
#: The peers' rules beyond the paper's (CGE, Bulyan, DnC, SignGuard): tested alone; their
#: ``nnm+`` compositions run in the composition tests of ``test_rules.py`` only (CI time).
PEER_RULES = frozenset({"cge", "bulyan", "dnc", "signguard"})
#: Aggregators that depend on the origin (norms, signs): no translation equivariance.
ORIGIN_DEPENDENT = frozenset({"cclip", "cge", "signguard"})


def last_stage(name: str) -> str:
    return name.split("+")[-1]


def min_n(name: str, f: int) -> int:
    """The fewest rows rule ``name`` accepts with ``f`` Byzantine ones."""
    return 4 * f + 3 if last_stage(name) == "bulyan" else 2 * f + 1


def feasible(name: str, n: int, f: int) -> bool:
    return n >= min_n(name, f)


def largest_f(name: str, n: int) -> int:
    """The largest ``f`` rule ``name`` accepts with ``n`` rows."""
    return (n - 3) // 4 if last_stage(name) == "bulyan" else (n - 1) // 2


def randomized(name: str) -> bool:
    return any(s in rules.RANDOMIZED for s in name.split("+"))


def apply(rule, x):
    """``rule(x)``, with :data:`KEY` when the rule is randomized."""
    return rule(x, key=KEY) if rule.randomized else rule(x)


def call(fn, name: str, x, f, **opts):
    """An aggregator function ``fn`` (e.g. ``AGGREGATORS[name]``) on ``x``, with :data:`KEY`
    when ``name`` is randomized."""
    return fn(x, f, key=KEY, **opts) if randomized(name) else fn(x, f, **opts)


def build(name: str, f: int, **opts):
    """``x -> nnmjax.rule(name, f, **opts)(x)`` with :data:`KEY` when randomized."""
    r = nnmjax.rule(name, f, **opts)
    return lambda x: apply(r, x)
