"""Robust numerics: pure, jit-compiled functions on stacked ``(n, d)`` worker matrices.

- :mod:`nnmjax.robust.aggregators`: ``F(x, f) -> (d,)``, the robust aggregators;
- :mod:`nnmjax.robust.preaggregators`: ``(x, f) -> (m, d)``, NNM and the other
  pre-aggregations that run before an aggregator;
- :mod:`nnmjax.robust.rules`: rule strings ``pre+...+aggregator`` -> one callable;
- :mod:`nnmjax.robust.attacks`: the Byzantine rows ``(honest, f) -> (f, d)``;
- :mod:`nnmjax.robust.metrics`: the empirical robustness ``kappa_hat`` and proven bounds;
- :mod:`nnmjax.robust.audit`: the adversarial search for a rule's worst input;
- :mod:`nnmjax.robust.linalg`: symmetric eigendecompositions for rules, safe in any
  batch on XLA's CPU thread pool.

All but ``linalg`` are importable by their short names (``nnmjax.aggregators``, ...).
"""
