"""Every run's workers' training data: the training set held once on the program's devices,
and each run's workers' rows of it as index arrays.

Run ``s``'s worker ``i`` holds ``x_train[parts[s][i]]`` (its partition under the run's
config); under label flipping the Byzantine workers hold data too, with labels ``C - 1 - l``.
The images are stored once per program whatever the number of runs; a run adds its
``int32[workers, rows]`` indices (:class:`~nnmjax.data.WorkerIndex`), about 240 KB for
Fashion-MNIST over 13 workers.

Examples:
    >>> from nnmjax.experiments.config import Config
    >>> config = Config(n=5, f=1)
    >>> ds = config.load_data()
    >>> [p.size > 0 for p in worker_parts(config, ds, seed=1, workers=4)]
    [True, True, True, True]
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from nnmjax.data import WorkerIndex, partition, worker_index
from nnmjax.experiments.config import Config
from nnmjax.sim.placement import Placement

__all__ = ["RunData", "RUN_AXES", "data_workers", "worker_parts", "place_worker_data",
           "worker_data_bytes"]


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


class RunData(NamedTuple):
    """What a program's step reads: the training set (held once, shared by every run) and
    each run's workers' rows of it (a leading run axis on every field of ``index``)."""

    x: jax.Array
    y: jax.Array
    index: WorkerIndex


#: How a vmap over runs maps a :class:`RunData`: the training set shared, the index per run.
RUN_AXES = RunData(None, None, WorkerIndex(0, 0, 0))


def place_worker_data(place: Placement, ds, parts: Sequence[Sequence[np.ndarray]],
                      padded: int, *, flip_from: int, loaded: set[int] | None = None
                      ) -> RunData:
    """The training set on the program's devices (replicated) and every run's workers'
    indices into it, ``(runs, padded, rows)``.

    Args:
        place: the program's layout (index blocks over ``(runs, workers)``).
        ds: the dataset.
        parts: ``parts[s][i]``, the indices worker ``i`` of run ``s`` holds.
        padded: workers per run after padding; workers ``>= len(parts[s])`` are empty.
        flip_from: workers from this index on hold flipped labels.
        loaded: filled with the worker indices whose blocks this process built.
    """
    workers = len(parts[0])
    rows = max(p.size for ps in parts for p in ps)
    empty = np.zeros((0,), np.int64)

    @functools.lru_cache(maxsize=None)
    def built(runs: range, block: range):
        if loaded is not None:
            loaded.update(i for i in block if i < workers)
        blocks = [worker_index([parts[s][i] if i < workers else empty for i in block],
                               rows=rows, flip_from=flip_from - block.start) for s in runs]
        return tuple(np.stack(b) for b in zip(*blocks))

    def field(j, shape):
        def block(index):
            runs, block_workers = range(len(parts))[index[0]], range(padded)[index[1]]
            return built(runs, block_workers)[j][(slice(None), slice(None)) + index[2:]]

        return place.build(shape, block, P("runs", "workers"))

    s = len(parts)
    index = WorkerIndex(field(0, (s, padded, rows)), field(1, (s, padded)), field(2, (s, padded)))
    return RunData(place.put(np.asarray(ds.x_train), replicated=True),
                   place.put(np.asarray(ds.y_train, np.int32), replicated=True), index)


def worker_data_bytes(runs: Sequence[tuple[Config, int]], attack: str, dataset) -> int:
    """Bytes a program of ``runs`` ((config, seed) pairs) adds on its devices for its runs'
    data: every run's workers' indices, padded to the largest part of any run (the training
    set itself is held once per program, whatever the number of runs)."""
    config = runs[0][0]
    workers = data_workers(config, attack)
    rows = max(p.size for c, s in runs for p in worker_parts(c, dataset, s, workers))
    return len(runs) * workers * (rows * 4 + 5)
