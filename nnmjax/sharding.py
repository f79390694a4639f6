"""Robust rules on a device mesh (``jax.sharding``): the ``(n, d)`` worker matrix split by
columns over the mesh's ``workers`` axis.

With ``x`` laid out as ``P(None, "workers")`` every device holds all ``n`` rows of its
block of coordinates, so:

* coordinate-wise rules (``cwmed``, ``cwtm``, ``meamed``, ``mean``) and the final
  combination ``c @ x`` of the distance-based ones are local: **no communication**;
* distance-based rules (NNM, Krum, Multi-Krum, GM, MDA, MoNNA, CAF, SMEA, centred
  clipping) and norm-based pre-aggregators (clipping, ARC) need the ``n x n`` Gram matrix
  or the ``n`` row norms: each device computes its block's partial sums and **one
  all-reduce** of ``n^2`` (or ``n``) floats combines them (:mod:`nnmjax._shard`); their
  iterations then run replicated in ``n``-dimensional coefficient space.

The output ``(d,)`` is sharded like the columns. ``d`` that the mesh axis does not
divide is padded with zero columns (which change no distance, norm or order statistic of
the real columns) and the padding is dropped from the output.

>>> mesh = nnmjax.sharding.worker_mesh()          # every device on the "workers" axis
>>> agg = nnmjax.sharding.shard_rule(nnmjax.rule("nnm+cwtm", f=4), mesh)
>>> agg(x)                                         # x: (17, d), any placement
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nnmjax._checks import as_matrix
from nnmjax._shard import columns_sharded

__all__ = ["worker_mesh", "shard_rule"]


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


def shard_rule(rule: Callable, mesh: Mesh, *, axis: str = "workers") -> Callable:
    """``rule`` as a jitted function of ``x: (n, d)`` (and ``key`` for randomized rules) that
    runs with ``x``'s columns sharded over ``mesh``'s ``axis``; a rule's ``(d,)`` output
    (or a pre-aggregator's ``(m, d)``) comes out sharded the same way and equals ``rule(x)``
    up to float32 summation order. Costs per device ``O(n^2 d / k)`` time (``k`` devices
    on ``axis``), ``O(n d / k + n^2)`` memory, and one all-reduce of ``O(n^2)`` floats."""
    if axis not in mesh.axis_names:
        raise ValueError(f"mesh has no axis {axis!r}; its axes are {mesh.axis_names}")
    k = mesh.shape[axis]
    randomized = getattr(rule, "randomized", False)

    def plain(x, key):
        return rule(x, key=key) if randomized else rule(x)

    def local(x, key):
        with columns_sharded(axis):
            return plain(x, key)

    columns = NamedSharding(mesh, P(None, axis))

    @jax.jit
    def run(x, key):
        d = x.shape[1]
        x = jnp.pad(x, [(0, 0), (0, -d % k)])
        rank = len(jax.eval_shape(plain, x, key).shape)  # (d,) for rules, (m, d) for pre-rules
        spec = P(*([None] * (rank - 1)), axis)
        body = jax.shard_map(local, mesh=mesh, in_specs=(P(None, axis), P()), out_specs=spec)
        return body(jax.lax.with_sharding_constraint(x, columns), key)[..., :d]

    def call(x, key=None):
        x = as_matrix(x)
        if randomized and key is None:
            raise ValueError(f"{rule!r} is randomized: call it with key=jax.random.key(...)")
        return run(x, jax.random.key(0) if key is None else key)

    call.jitted = run  # ``call.jitted.lower(x, key)`` shows the compiled program
    return call
