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
from .device import WorkerData, flip_worker_labels, gather_workers, sample_batches, to_worker_arrays
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
