"""nnmjax: Byzantine-robust distributed learning under heterogeneity, in JAX.

Nearest Neighbor Mixing and robust aggregators as pure functions on stacked
``(n, d)`` worker arrays (Allouah et al., "Fixing by Mixing", AISTATS 2023).

The submodules load on first use (``nnmjax.aggregators``, ``nnmjax.rule``, ...), so the
``nnmjax`` command starts, and handles Ctrl-C, before JAX is imported.
"""
import importlib

__all__ = ["aggregators", "attacks", "audit", "metrics", "preaggregators", "tree", "rule",
           "Rule"]
__version__ = "0.1.0"

_SUBMODULES = {"aggregators", "attacks", "audit", "metrics", "preaggregators", "tree"}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"nnmjax.{name}")
    if name in ("rule", "Rule"):
        return getattr(importlib.import_module("nnmjax.rules"), name)
    raise AttributeError(f"module 'nnmjax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
