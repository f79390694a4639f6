"""Robust rules on a device mesh (``jax.sharding``): the ``(n, d)`` worker matrix split by
columns over the mesh's ``workers`` axis.

With ``x`` laid out as ``P(None, "workers")`` every device holds all ``n`` rows of its
block of coordinates, so:

* coordinate-wise rules (``cwmed``, ``cwtm``, ``meamed``, ``mean``) and the final
  combination ``c @ x`` of the distance-based ones are local: **no communication**;
* distance-based rules (NNM, Krum, Multi-Krum, GM, MDA, MoNNA, CAF, SMEA, centred
  clipping) and norm-based pre-aggregators (clipping, ARC) need the ``n x n`` Gram matrix
  or the ``n`` row norms: each device computes its block's partial sums and **one
  all-reduce** of ``n^2`` (or ``n``) floats combines them (:mod:`nnmjax.robust._shard`); their
  iterations then run replicated in ``n``-dimensional coefficient space.

The output ``(d,)`` is sharded like the columns. ``d`` that the mesh axis does not
divide is padded with zero columns (which change no distance, norm or order statistic of
the real columns) and the padding is dropped from the output.

>>> import jax.numpy as jnp, nnmjax, nnmjax.scale.sharding
>>> mesh = nnmjax.scale.sharding.worker_mesh()          # every device on the "workers" axis
>>> agg = nnmjax.scale.sharding.shard_rule(nnmjax.rule("nnm+cwtm", f=4), mesh)
>>> x = jnp.arange(17 * 6, dtype=jnp.float32).reshape(17, 6)   # (n, d), any placement
>>> agg(x).shape
(6,)
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from nnmjax.robust._checks import as_matrix
from nnmjax.robust._shard import columns_sharded

__all__ = ["worker_mesh", "on_columns", "shard_rule"]


def worker_mesh(workers: int | None = None, *, runs: int = 1, devices=None) -> Mesh:
    """A ``(runs, workers)`` mesh over ``devices`` (default: all of ``jax.devices()``;
    ``workers`` defaults to ``len(devices) // runs``)."""
    devices = list(jax.devices() if devices is None else devices)
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive integer; got {runs!r}")
    workers = len(devices) // runs if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer; got {workers!r}")
    if runs * workers > len(devices):
        raise ValueError(f"a mesh of runs={runs} x workers={workers} needs {runs * workers} "
                         f"devices; {len(devices)} available")
    return Mesh(np.asarray(devices[: runs * workers]).reshape(runs, workers), ("runs", "workers"))


def on_columns(fn: Callable, mesh: Mesh, *, axis: str = "workers") -> Callable:
    """``fn(x, key, *vectors)`` evaluated with the columns of ``x: (n, d)`` (and of the
    ``(d,)`` ``vectors``) split over ``mesh``'s ``axis`` (``jax.shard_map``); returns what
    ``fn`` returns, a ``(d,)`` or ``(m, d)`` array sharded by columns. Not jitted: use it
    inside ``jit`` and ``vmap`` (``vmap(..., spmd_axis_name="runs")`` splits a batch axis over
    the mesh's ``runs`` axis). Sums over ``d`` inside ``fn`` must go through
    :mod:`nnmjax.robust._shard` (every rule of nnmjax does)."""
    if axis not in mesh.axis_names:
        raise ValueError(f"mesh has no axis {axis!r}; its axes are {mesh.axis_names}")
    k = mesh.shape[axis]

    def local(x, key, *vectors):
        with columns_sharded(axis):
            return fn(x, key, *vectors)

    def call(x, key, *vectors):
        d = x.shape[1]
        x = jnp.pad(x, [(0, 0), (0, -d % k)])
        vectors = [jnp.pad(v, (0, -d % k)) for v in vectors]
        rank = len(jax.eval_shape(fn, x, key, *vectors).shape)  # (d,) rules, (m, d) pre-rules
        spec = P(*([None] * (rank - 1)), axis)
        # check_vma=False: under vmap(spmd_axis_name=...) JAX's replication check rejects
        # constants (an identity matrix) meeting batched values; the collectives are explicit.
        body = jax.shard_map(local, mesh=mesh, out_specs=spec, check_vma=False,
                             in_specs=(P(None, axis), P()) + (P(axis),) * len(vectors))
        return body(x, key, *vectors)[..., :d]

    return call


#: Rules that pick coordinates (DnC's random subsets, SignGuard's random block) and so need
#: every column on one device: :func:`shard_rule` refuses them.
WHOLE_ROW_STAGES = frozenset({"dnc", "signguard"})


def shard_rule(rule: Callable, mesh: Mesh, *, axis: str = "workers") -> Callable:
    """``rule`` as a jitted function of ``x: (n, d)`` (and ``key`` for randomized rules) that
    runs with ``x``'s columns sharded over ``mesh``'s ``axis`` (:func:`on_columns`); a
    rule's ``(d,)`` output (or a pre-aggregator's ``(m, d)``) comes out sharded the same way
    and equals ``rule(x)`` up to float32 summation order. Costs per device ``O(n^2 d / k)``
    time (``k`` devices on ``axis``), ``O(n d / k + n^2)`` memory, and one all-reduce of
    ``O(n^2)`` floats. Rules with a stage in :data:`WHOLE_ROW_STAGES` raise ``ValueError``."""
    whole = sorted(set(getattr(rule, "stages", ())) & WHOLE_ROW_STAGES)
    if whole:
        raise ValueError(f"{rule!r}: {', '.join(whole)} draws coordinate subsets over all of d "
                         "and cannot run with its columns sharded; run it on one device")
    randomized = getattr(rule, "randomized", False)
    sharded = on_columns(lambda x, key: rule(x, key=key) if randomized else rule(x), mesh,
                         axis=axis)
    run = jax.jit(sharded)

    def call(x, key=None):
        x = as_matrix(x)
        if randomized and key is None:
            raise ValueError(f"{rule!r} is randomized: call it with key=jax.random.key(...)")
        return run(x, jax.random.key(0) if key is None else key)

    call.jitted = run  # ``call.jitted.lower(x, key)`` shows the compiled program
    return call
