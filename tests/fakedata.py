"""Tiny fake datasets on disk in the real formats (MNIST IDX files, CIFAR-10 python batches),
for tests that must not download anything."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from nnmjax.data import write_idx


def write_fake_mnist(directory: Path, *, n_train=30, n_test=10, gz=True, sep="-"):
    """MNIST-format IDX files (labels cycling through 0-9); returns the arrays written."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    arrays = {
        "train-images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for stem, a in arrays.items():
        kind = "idx3" if a.ndim == 3 else "idx1"
        write_idx(directory / f"{stem}{sep}{kind}-ubyte{sfx}", a)
    return arrays


def write_fake_cifar(directory: Path, *, per_batch=4, n_test=4):
    """``directory/cifar-10-batches-py`` with five training batches and a test batch."""
    d = Path(directory) / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, m in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        with open(d / name, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, (m, 3072), dtype=np.uint8),
                         b"labels": [int(v) for v in np.arange(m) % 10]}, fh)
    return d
