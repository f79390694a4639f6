"""nnmjax: Byzantine-robust distributed learning under heterogeneity, in JAX.

Nearest Neighbor Mixing and robust aggregators as pure functions on stacked
``(n, d)`` worker arrays (Allouah et al., "Fixing by Mixing", AISTATS 2023).
"""
from nnmjax import aggregators, attacks, audit, metrics, preaggregators, tree
from nnmjax.rules import Rule, rule

__all__ = ["aggregators", "attacks", "audit", "metrics", "preaggregators", "tree", "rule",
           "Rule"]
__version__ = "0.1.0"
