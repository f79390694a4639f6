"""Per-worker data on device, and jittable sampling of the workers' minibatches.

Two forms:

- :class:`WorkerIndex` (what the simulator uses): the training set is held **once** on the
  device and each worker holds the indices of its rows, ``int32[h, m_max]`` (worker ``i``
  valid in columns ``< counts[i]``), and whether its labels are flipped. A run's data then
  costs ``4 h m_max`` bytes, about a thousandth of the images it points to, so many runs
  share one copy of the dataset (:func:`worker_index`, :func:`sample_indexed_batches`).
- :class:`WorkerData`: each worker's rows copied, padded stacked arrays ``[h, m_max, ...]``
  (:func:`to_worker_arrays`, :func:`sample_batches`).

Both draw the same minibatch indices from the same key, so they give the same batches.
Rows past ``counts[i]`` are padding and are never sampled.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .partition import label_flip

__all__ = ["WorkerData", "WorkerIndex", "to_worker_arrays", "gather_workers", "worker_index",
           "sample_batches", "sample_indexed_batches", "gather_indexed", "flip_worker_labels"]


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


class WorkerIndex(NamedTuple):
    """Each worker's rows of one training set held once on the device.

    Attributes:
      index: ``int32[h, m_max]`` rows of the training set worker ``i`` holds, valid in
        columns ``< counts[i]`` (padding columns hold 0 and are never sampled).
      counts: ``int32[h]`` number of valid rows per worker, all ``>= 1``.
      flipped: ``bool[h]`` whether worker ``i``'s labels are flipped (``l -> C - 1 - l``:
        the label-flipping attack's Byzantine workers).
    """

    index: jax.Array
    counts: jax.Array
    flipped: jax.Array


def worker_index(parts: Sequence[np.ndarray], *, rows: Optional[int] = None,
                 flip_from: Optional[int] = None):
    """NumPy ``(index, counts, flipped)`` of the workers holding ``parts``, each padded to
    ``rows`` columns (default: the largest part). An empty part is a padding worker: one
    "valid" row (row 0 of the training set), so it can be sampled like any worker and
    then discarded.

    Args:
      parts: one index array per worker.
      rows: columns per worker after padding.
      flip_from: workers from this index on have flipped labels (``None``: none).

    Returns:
      ``(int32[h, rows], int32[h], bool[h])``, the fields of :class:`WorkerIndex`.

    Examples:
      >>> import numpy as np
      >>> index, counts, flipped = worker_index([np.array([3, 5]), np.array([7])], flip_from=1)
      >>> index.tolist(), counts.tolist(), flipped.tolist()
      ([[3, 5], [7, 0]], [2, 1], [False, True])
    """
    counts = np.array([max(p.size, 1) for p in parts], dtype=np.int32)
    rows = int(counts.max()) if rows is None else rows
    index = np.zeros((len(parts), rows), dtype=np.int32)
    for i, p in enumerate(parts):
        index[i, : p.size] = p
    first = len(parts) if flip_from is None else flip_from
    return index, counts, np.arange(len(parts)) >= first


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
    idx = _draw(key, data.counts, batch_size, workers)
    xb = jax.vmap(lambda xi, ii: xi[ii])(data.x, idx)
    yb = jnp.take_along_axis(data.y, idx, axis=1)
    return xb, yb


def _draw(key: jax.Array, counts: jax.Array, batch_size: int, workers: Optional[int]):
    """``idx[i, j] ~ Uniform{0, ..., counts[i] - 1}`` for the first ``workers`` workers, 0
    for the rest: the columns of each worker's minibatch."""
    h = counts.shape[0]
    w = h if workers is None else workers
    idx = jax.random.randint(key, (w, batch_size), 0, counts[:w, None])
    return jnp.pad(idx, [(0, h - w), (0, 0)])


def _labels(y: jax.Array, flipped: jax.Array, num_classes: int) -> jax.Array:
    """Labels ``y`` (``[h, ...]``), flipped on the workers where ``flipped``."""
    flip = flipped.reshape(flipped.shape + (1,) * (y.ndim - 1))
    return jnp.where(flip, label_flip(y, num_classes), y).astype(jnp.int32)


def sample_indexed_batches(key: jax.Array, x: jax.Array, y: jax.Array, index: WorkerIndex,
                           batch_size: int, *, num_classes: int,
                           workers: Optional[int] = None):
    """Each worker's minibatch from the shared training set ``(x, y)``: the same draws as
    :func:`sample_batches` on the workers' copied rows, so the same batches.

    Args:
      key: a PRNG key.
      x: ``[N, ...]`` training inputs, held once.
      y: ``int32[N]`` training labels.
      index: the workers' :class:`WorkerIndex`.
      batch_size: rows per worker ``b``.
      num_classes: ``C``, for the flipped labels ``C - 1 - l``.
      workers: the number of workers that draw; ``None``: all ``h``.

    Returns:
      ``(xb, yb)``: ``[h, b, ...]`` inputs and ``int32[h, b]`` labels.

    Examples:
      >>> import jax, numpy as np
      >>> x, y = np.arange(5, dtype=np.float32)[:, None] * 10, np.arange(5)
      >>> parts = [np.array([0, 1, 2]), np.array([4])]
      >>> index = WorkerIndex(*worker_index(parts))
      >>> xb, yb = sample_indexed_batches(jax.random.key(0), x, y, index, 4, num_classes=5)
      >>> same = sample_batches(jax.random.key(0), to_worker_arrays(x, y, parts), 4)
      >>> bool((xb == same[0]).all() and (yb == same[1]).all())
      True
    """
    idx = _draw(key, index.counts, batch_size, workers)
    rows = jnp.take_along_axis(index.index, idx, axis=1)
    return jnp.asarray(x)[rows], _labels(jnp.asarray(y)[rows], index.flipped, num_classes)


def gather_indexed(x: jax.Array, y: jax.Array, index: WorkerIndex, *,
                   num_classes: int) -> WorkerData:
    """Every worker's rows of the shared training set as :class:`WorkerData` (all rows
    at once, as full-batch gradient descent uses them).

    Examples:
      >>> import numpy as np
      >>> x, y = np.arange(5, dtype=np.float32)[:, None], np.arange(5)
      >>> index = WorkerIndex(*worker_index([np.array([1, 2]), np.array([4])], flip_from=1))
      >>> data = gather_indexed(x, y, index, num_classes=5)
      >>> data.x[..., 0].tolist(), data.y.tolist(), data.counts.tolist()
      ([[1.0, 2.0], [4.0, 0.0]], [[1, 2], [0, 4]], [2, 1])
    """
    return WorkerData(jnp.asarray(x)[index.index],
                      _labels(jnp.asarray(y)[index.index], index.flipped, num_classes),
                      index.counts)


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
