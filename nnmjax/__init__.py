"""nnmjax: Byzantine-robust distributed learning under heterogeneity, in JAX.

Nearest Neighbor Mixing and robust aggregators as pure functions on stacked
``(n, d)`` worker arrays (Allouah et al., "Fixing by Mixing", AISTATS 2023).

The package is layered; each folder imports only from the ones above it
(``tests/test_layout.py`` checks it):

- :mod:`nnmjax.robust`: robust numerics on ``(n, d)`` matrices (aggregators,
  pre-aggregators, rule strings, attacks, robustness metrics, the audit);
- :mod:`nnmjax.scale`: the rules on ``jax.sharding`` meshes, multi-host set-up;
- :mod:`nnmjax.optim`: the rules as optax gradient transformations on per-worker pytrees;
- :mod:`nnmjax.models` and :mod:`nnmjax.data`: flax models, datasets and partitions (and
  :mod:`nnmjax.experiments.config`, a run's description);
- :mod:`nnmjax.sim`: the simulator, one jitted D-SHB / D-GD program vmapped over runs;
- :mod:`nnmjax.experiments`: grids, records, checkpoints, tables and figures;
- :mod:`nnmjax.bench` and :mod:`nnmjax.cli`: the benchmark and the ``nnmjax`` command.

The short paths of the modules users call most are part of the API and stay valid:
``nnmjax.aggregators`` is :mod:`nnmjax.robust.aggregators` (the same module object), and
likewise every name of :data:`SHORT_PATHS`. Submodules load on first use, so the
``nnmjax`` command starts, and handles Ctrl-C, before JAX is imported.

Examples:
    >>> import nnmjax
    >>> from nnmjax.aggregators import cwtm
    >>> cwtm is nnmjax.robust.aggregators.cwtm
    True
"""
import importlib
import importlib.abc
import importlib.util
import sys

__all__ = ["aggregators", "attacks", "audit", "metrics", "preaggregators", "tree", "rule",
           "Rule", "SHORT_PATHS"]
__version__ = "0.1.0"

#: ``nnmjax.<short>`` -> the module it names (``import nnmjax.<short>`` imports that module).
SHORT_PATHS = {
    **{m: f"nnmjax.robust.{m}" for m in
       ("aggregators", "preaggregators", "rules", "attacks", "metrics", "audit")},
    **{m: f"nnmjax.optim.{m}" for m in ("transforms", "tree")},
    **{m: f"nnmjax.experiments.{m}" for m in
       ("config", "grid", "results", "checkpoint", "table", "plots", "tuning", "reproduce",
        "estimate", "provenance", "jobs", "interrupt")},
    **{m: f"nnmjax.scale.{m}" for m in ("sharding", "distributed")},
    **{m: f"nnmjax.models.{m}" for m in ("resnet", "torch_weights")},
    "hugepages": "nnmjax.bench.hugepages",
    "simulate": "nnmjax.sim",
}
_LAYERS = {"robust", "optim", "models", "data", "sim", "experiments", "scale", "bench", "cli"}


class _ShortPathFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``nnmjax.<short>`` as the module :data:`SHORT_PATHS` names (one module object
    under both names, so its state and identity are shared)."""

    def find_spec(self, fullname, path=None, target=None):
        short = fullname[len("nnmjax."):] if fullname.startswith("nnmjax.") else None
        if short in SHORT_PATHS:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        # the import system returns sys.modules[name] after this: the real module
        sys.modules[module.__name__] = importlib.import_module(SHORT_PATHS[module.__name__[7:]])


if not any(isinstance(f, _ShortPathFinder) for f in sys.meta_path):
    sys.meta_path.append(_ShortPathFinder())


def __getattr__(name):
    if name in SHORT_PATHS or name in _LAYERS:
        return importlib.import_module(f"nnmjax.{name}")
    if name in ("rule", "Rule"):
        return getattr(importlib.import_module("nnmjax.robust.rules"), name)
    raise AttributeError(f"module 'nnmjax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(SHORT_PATHS) | _LAYERS)
