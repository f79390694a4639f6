"""Every run's workers' training data, padded and placed on the program's devices.

Run ``s``'s worker ``i`` holds ``x_train[parts[s][i]]`` (its partition under the run's
config), padded to the largest part of any run; under label flipping the Byzantine workers
hold data too, with labels ``C - 1 - l``.

Examples:
    >>> from nnmjax.experiments.config import Config
    >>> config = Config(n=5, f=1)
    >>> ds = config.load_data()
    >>> [p.size > 0 for p in worker_parts(config, ds, seed=1, workers=4)]
    [True, True, True, True]
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
from jax.sharding import PartitionSpec as P

from nnmjax.data import WorkerData, gather_workers, partition
from nnmjax.data.partition import label_flip
from nnmjax.experiments.config import Config
from nnmjax.sim.placement import Placement

__all__ = ["data_workers", "worker_parts", "place_worker_data", "worker_data_bytes"]


def data_workers(config: Config, attack: str) -> int:
    """Workers holding data: the ``n - f`` honest ones, and the ``f`` Byzantine ones too
    under label flipping (a data attack)."""
    return config.n if attack == "label_flipping" and config.f > 0 else config.honest


def worker_parts(config: Config, ds, seed: int, workers: int) -> list[np.ndarray]:
    """Each worker's training-set indices under ``config``'s partition, drawn with its
    ``data_seed`` if set, else with the run's ``seed``.

    Raises:
        ValueError: when a worker gets no sample.
    """
    seed = seed if config.data_seed is None else config.data_seed
    parts = [np.asarray(p, dtype=np.int64).reshape(-1) for p in partition(
        ds.y_train, workers, method=config.partition, alpha=config.alpha, gamma=config.gamma,
        seed=seed)]
    empty = [i for i, p in enumerate(parts) if p.size == 0]
    if empty:
        raise ValueError(f"partition: workers {empty} have no samples (seed {seed})")
    return parts


def place_worker_data(place: Placement, ds, parts: Sequence[Sequence[np.ndarray]],
                      padded: int, *, flip_from: int, loaded: set[int] | None = None
                      ) -> WorkerData:
    """Every run's workers' data, ``(runs, padded, rows, ...)``.

    Args:
        place: the program's layout (blocks over ``(runs, workers)``).
        ds: the dataset.
        parts: ``parts[s][i]``, the indices worker ``i`` of run ``s`` holds.
        padded: workers per run after padding; workers ``>= len(parts[s])`` are empty.
        flip_from: workers from this index on hold flipped labels.
        loaded: filled with the worker indices this process gathered.
    """
    x, y = ds.x_train, ds.y_train
    workers = len(parts[0])
    rows = max(p.size for ps in parts for p in ps)
    empty = np.zeros((0,), np.int64)

    @functools.lru_cache(maxsize=None)
    def gathered(runs: range, block: range):
        if loaded is not None:
            loaded.update(i for i in block if i < workers)
        blocks = [gather_workers(x, y, [parts[s][i] if i < workers else empty for i in block],
                                 rows=rows) for s in runs]
        xs, ys, counts = (np.stack(b) for b in zip(*blocks))
        flip = np.array([i >= flip_from for i in block])[None, :, None]
        return xs, np.where(flip, label_flip(ys, ds.num_classes), ys).astype(np.int32), counts

    def field(j, shape):
        def block(index):
            runs, block_workers = range(len(parts))[index[0]], range(padded)[index[1]]
            return gathered(runs, block_workers)[j][(slice(None), slice(None)) + index[2:]]

        return place.build(shape, block, P("runs", "workers"))

    s = len(parts)
    return WorkerData(field(0, (s, padded, rows) + x.shape[1:]), field(1, (s, padded, rows)),
                      field(2, (s, padded)))


def worker_data_bytes(runs: Sequence[tuple[Config, int]], attack: str, dataset) -> int:
    """Bytes of the worker data a program of ``runs`` ((config, seed) pairs) holds on its
    devices: every run's workers padded to the largest part of any run."""
    config = runs[0][0]
    workers = data_workers(config, attack)
    rows = max(p.size for c, s in runs for p in worker_parts(c, dataset, s, workers))
    image = int(np.prod(dataset.x_train.shape[1:])) * dataset.x_train.dtype.itemsize
    return len(runs) * workers * rows * (image + 4)
