"""Datasets, heterogeneous partitions over workers, and on-device per-worker data."""

from .datasets import (
    DATASETS,
    SOURCES,
    Dataset,
    DatasetNotFoundError,
    flip_horizontal,
    load_dataset,
    read_idx,
    write_idx,
)
from .device import (WorkerData, WorkerIndex, flip_worker_labels, gather_indexed, gather_workers,
                     sample_batches, sample_indexed_batches, to_worker_arrays, worker_index)
from .partition import (
    PARTITIONS,
    dirichlet,
    dirichlet_per_class,
    extreme,
    gamma_similarity,
    iid,
    label_flip,
    partition,
)

__all__ = [
    "DATASETS",
    "SOURCES",
    "Dataset",
    "DatasetNotFoundError",
    "flip_horizontal",
    "load_dataset",
    "read_idx",
    "write_idx",
    "WorkerData",
    "WorkerIndex",
    "worker_index",
    "sample_indexed_batches",
    "gather_indexed",
    "flip_worker_labels",
    "gather_workers",
    "sample_batches",
    "to_worker_arrays",
    "PARTITIONS",
    "dirichlet",
    "dirichlet_per_class",
    "extreme",
    "gamma_similarity",
    "iid",
    "label_flip",
    "partition",
]
