"""Per-worker data held on device as padded stacked arrays, and jittable sampling.

Worker ``i``'s ``counts[i]`` samples sit in rows ``0..counts[i]-1`` of
``x[i]``/``y[i]``; rows past ``counts[i]`` are zero padding and are never
sampled. Memory is ``h * max_i counts[i]`` rows, so very unequal partitions
(e.g. ``dirichlet_per_class`` at small ``alpha``) pay for the largest worker;
the default ``dirichlet`` partition has equal sizes and no padding.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .partition import label_flip

__all__ = ["WorkerData", "to_worker_arrays", "gather_workers", "sample_batches", "flip_worker_labels"]


class WorkerData(NamedTuple):
    """Padded per-worker data.

    Attributes:
      x: ``[h, m_max, ...]`` inputs (worker ``i`` valid in rows ``< counts[i]``).
      y: ``int32[h, m_max]`` labels (padding rows hold 0).
      counts: ``int32[h]`` number of valid rows per worker, all ``>= 1``.
    """

    x: jax.Array
    y: jax.Array
    counts: jax.Array


def to_worker_arrays(x, y, parts: Sequence[np.ndarray]) -> WorkerData:
    """Gathers ``x[parts[i]], y[parts[i]]`` into a padded :class:`WorkerData` on device.

    Args:
      x: ``[N, ...]`` dataset inputs (NumPy or JAX).
      y: ``[N]`` integer labels.
      parts: one index array per worker (e.g. from :mod:`nnmjax.data.partition`).

    Returns:
      The :class:`WorkerData`, padded to the largest part.

    Raises:
      ValueError: no parts, an empty part, or ``x``/``y`` length mismatch.

    Examples:
      >>> import numpy as np
      >>> from nnmjax.data import to_worker_arrays
      >>> x, y = np.arange(5, dtype=np.float32)[:, None] * 10, np.arange(5)
      >>> data = to_worker_arrays(x, y, [np.array([0, 1, 2]), np.array([4])])
      >>> data.y, data.counts
      (Array([[0, 1, 2],
             [4, 0, 0]], dtype=int32), Array([3, 1], dtype=int32))
      >>> data.x.shape
      (2, 3, 1)
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.shape[0] != y.shape[0] or y.ndim != 1:
        raise ValueError(f"x, y: need x [N, ...] and y [N]; got {x.shape} and {y.shape}")
    if len(parts) == 0:
        raise ValueError("parts: need at least one worker")
    parts = [np.asarray(p, dtype=np.int64).reshape(-1) for p in parts]
    empty = [i for i, p in enumerate(parts) if p.size == 0]
    if empty:
        raise ValueError(f"parts: workers {empty} have no samples; every worker needs at least one")
    return WorkerData(*map(jnp.asarray, gather_workers(x, y, parts)))


def gather_workers(x: np.ndarray, y: np.ndarray, parts: Sequence[np.ndarray], *,
                   rows: Optional[int] = None):
    """NumPy ``(xs, ys, counts)`` of the workers holding ``parts``, each padded with zeros to
    ``rows`` rows (default: the largest part). An empty part is a padding worker: zeros, one
    "valid" row (label 0), so it can be sampled like any worker and then discarded.

    Args:
      x: ``[N, ...]`` dataset inputs.
      y: ``[N]`` integer labels.
      parts: one index array per worker; an empty one is a padding worker.
      rows: the rows per worker, at least the largest part; ``None``: the largest part.

    Returns:
      ``(xs, ys, counts)``: ``[h, rows, ...]`` inputs of ``x``'s dtype, ``int32[h, rows]``
      labels and ``int32[h]`` valid rows (1 for a padding worker).

    Examples:
      >>> import numpy as np
      >>> from nnmjax.data import gather_workers
      >>> x, y = np.arange(5, dtype=np.float32)[:, None] * 10, np.arange(5)
      >>> xs, ys, counts = gather_workers(x, y, [np.array([1, 3]), np.array([], int)], rows=3)
      >>> xs[..., 0], ys, counts
      (array([[10., 30.,  0.],
             [ 0.,  0.,  0.]], dtype=float32), array([[1, 3, 0],
             [0, 0, 0]], dtype=int32), array([2, 1], dtype=int32))
    """
    counts = np.array([max(p.size, 1) for p in parts], dtype=np.int32)
    rows = int(counts.max()) if rows is None else rows
    xs = np.zeros((len(parts), rows) + x.shape[1:], dtype=x.dtype)
    ys = np.zeros((len(parts), rows), dtype=np.int32)
    for i, p in enumerate(parts):
        xs[i, : p.size] = x[p]
        ys[i, : p.size] = y[p]
    return xs, ys, counts


def sample_batches(key: jax.Array, data: WorkerData, batch_size: int, *,
                   workers: Optional[int] = None):
    """Each worker's minibatch, ``batch_size`` rows uniform with replacement from its own data.

    ``idx[i, j] ~ Uniform{0, ..., counts[i] - 1}`` independently; returns
    ``(x[i, idx[i]], y[i, idx[i]])`` stacked as ``([h, b, ...], int32[h, b])``.
    With ``workers=w < h`` only the first ``w`` workers draw (the same draws as for a
    ``w``-worker ``data``); the rest are padding and take row 0.
    Pure and jittable (``batch_size`` static), vmappable over ``key``.

    Args:
      key: a PRNG key.
      data: the workers' :class:`WorkerData`.
      batch_size: rows per worker ``b``.
      workers: the number of workers that draw; ``None``: all ``h``.

    Returns:
      ``(xb, yb)``: ``[h, b, ...]`` inputs and ``int32[h, b]`` labels.

    Examples:
      >>> import numpy as np
      >>> from nnmjax.data import to_worker_arrays
      >>> x, y = np.arange(5, dtype=np.float32)[:, None] * 10, np.arange(5)
      >>> data = to_worker_arrays(x, y, [np.array([0, 1, 2]), np.array([4])])
      >>> import jax
      >>> from nnmjax.data import sample_batches
      >>> xb, yb = sample_batches(jax.random.key(0), data, 4)
      >>> xb.shape, set(yb[0].tolist()) <= {0, 1, 2}, yb[1].tolist()
      ((2, 4, 1), True, [4, 4, 4, 4])
    """
    h = data.y.shape[0]
    w = h if workers is None else workers
    idx = jax.random.randint(key, (w, batch_size), 0, data.counts[:w, None])
    idx = jnp.pad(idx, [(0, h - w), (0, 0)])
    xb = jax.vmap(lambda xi, ii: xi[ii])(data.x, idx)
    yb = jnp.take_along_axis(data.y, idx, axis=1)
    return xb, yb


def flip_worker_labels(
    data: WorkerData, num_classes: int, *, workers: Optional[Sequence[int]] = None
) -> WorkerData:
    """Label-flipped copy of (some) workers' data, for the LF attack (``l -> K - 1 - l``).

    With ``workers`` (indices into the worker axis, repeats allowed), returns
    only those workers, e.g. the data whose flipped-label gradients the
    Byzantine workers send; by default all workers. Padding rows are flipped
    too but never sampled.

    Args:
      data: the workers' :class:`WorkerData`.
      num_classes: the number of classes ``K``.
      workers: indices of the workers to return; ``None``: all.

    Returns:
      A :class:`WorkerData` with labels ``K - 1 - l``.

    Examples:
      >>> import numpy as np
      >>> from nnmjax.data import to_worker_arrays
      >>> x, y = np.arange(5, dtype=np.float32)[:, None] * 10, np.arange(5)
      >>> data = to_worker_arrays(x, y, [np.array([0, 1, 2]), np.array([4])])
      >>> from nnmjax.data import flip_worker_labels
      >>> flip_worker_labels(data, 5).y
      Array([[4, 3, 2],
             [0, 4, 4]], dtype=int32)
      >>> flip_worker_labels(data, 5, workers=[1, 1]).counts
      Array([1, 1], dtype=int32)
    """
    if workers is not None:
        w = jnp.asarray(np.asarray(workers, dtype=np.int32))
        data = WorkerData(data.x[w], data.y[w], data.counts[w])
    return data._replace(y=label_flip(data.y, num_classes).astype(jnp.int32))
