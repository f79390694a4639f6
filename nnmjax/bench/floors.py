"""Each rule's floor: the least time its definition allows on this machine.

A rule on ``x`` of shape ``(n, d)`` must at least read ``x``; the distance-based ones must
also form the ``n x n`` Gram matrix (``n (n + 1) d`` FLOPs, symmetric), and those that
output a combination of the rows must read ``x`` once more. With ``t_s`` one streaming
pass over ``x`` (the jitted ``jnp.sum(x)``, timed in the rule's own interleaved rounds) and
``R`` the GEMM rate (a jitted ``2048 x 2048`` float32 product, timed in the same run), the
floor is

    ``floor = [Gram] max(t_s, n (n + 1) d / R) + reads * t_s``

with ``reads`` the passes beyond the Gram pass that the rule's output needs
(:data:`EXTRA_READS`): 0 for Krum (it returns one row), 1 for a combination of the rows
(Multi-Krum, GM, MDA, ...) and for the coordinate-wise rules (their only pass), 2 for NNM
alone (it reads ``x`` to mix and writes the ``n x d`` mixed rows). A composition
``pre+...+agg`` pays the Gram pass when any stage needs it (a mixing's Gram follows from
the first, ``W G W^T``) and the last stage's reads; a norm-based pre-aggregator
(clipping, ARC) adds a pass of norms unless the Gram gives them.

``x_floor`` (our time over the floor) is reported for every rule by ``nnmjax bench``.

Examples:
    >>> from nnmjax.bench.cases import Case
    >>> from nnmjax.bench.floors import rule_floor
    >>> f = rule_floor("nnm+cwtm", Case(17, 1_000_000, 4), stream_ms=4.0, gemm_flops_per_s=2e11)
    >>> f["gram"], f["reads"], round(f["floor_ms"], 2)
    (True, 1, 8.0)
    >>> rule_floor("cwtm", Case(17, 1_000_000, 4), stream_ms=4.0, gemm_flops_per_s=2e11)["floor_ms"]
    4.0
"""
from __future__ import annotations

from nnmjax.bench.cases import Case, rule_stages

#: Stages whose definition needs pairwise distances (the ``n x n`` Gram matrix).
GRAM_STAGES = frozenset({"nnm", "krum", "multikrum", "gm", "mda", "monna", "smea", "caf",
                         "cclip", "bulyan"})
#: Passes over ``x`` a stage's output needs beyond the Gram pass, when it is the last stage.
EXTRA_READS = {"krum": 0, "nnm": 2, "cge": 2, "signguard": 2}
#: Pre-aggregators that need the rows' norms (one pass, unless the Gram pass gives them).
NORM_STAGES = frozenset({"clipping", "arc"})
#: Side of the square float32 product that measures the GEMM rate.
GEMM_SIDE = 2048


def rule_floor(name: str, case: Case, *, stream_ms: float,
               gemm_flops_per_s: float | None) -> dict:
    """``{"floor_ms", "gram", "gram_ms", "reads"}`` of rule ``name`` on ``case`` (module
    docstring), from the streaming pass ``stream_ms`` and the GEMM rate (FLOP/s; ``None``
    counts the Gram pass as one streaming pass)."""
    stages = rule_stages(name)
    gram = any(s in GRAM_STAGES for s in stages)
    reads = EXTRA_READS.get(stages[-1], 1)
    if not gram and any(s in NORM_STAGES for s in stages[:-1]):
        reads += 1
    gram_ms = 0.0
    if gram:
        flops = case.n * (case.n + 1) * case.d
        gram_ms = max(stream_ms, 1e3 * flops / gemm_flops_per_s if gemm_flops_per_s else 0.0)
    return {"floor_ms": gram_ms + reads * stream_ms, "gram": gram, "gram_ms": gram_ms,
            "reads": reads}
