"""Tests for nnmjax.data: IDX files, dataset loading, partitions, device sampling."""

import gzip
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fakedata import write_fake_cifar, write_fake_mnist

from nnmjax.data import datasets as ds_mod
from nnmjax.data import (
    DATASETS,
    PARTITIONS,
    Dataset,
    DatasetNotFoundError,
    WorkerData,
    dirichlet,
    dirichlet_per_class,
    extreme,
    flip_worker_labels,
    gamma_similarity,
    iid,
    label_flip,
    load_dataset,
    partition,
    read_idx,
    sample_batches,
    to_worker_arrays,
    write_idx,
)

FASHION_DIR = Path(ds_mod.DEBIAN_FASHION_MNIST_DIR)


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    a = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    p = tmp_path / f"a.idx{suffix}"
    write_idx(p, a)
    b = read_idx(p)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative
    np.testing.assert_array_equal(a, b)


def test_idx_known_bytes(tmp_path):
    # Hand-written MNIST-style label file: magic 0x00000801, count 3, labels 7 0 9.
    p = tmp_path / "labels"
    p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 0, 9]))
    np.testing.assert_array_equal(read_idx(p), [7, 0, 9])
    with gzip.open(tmp_path / "labels.gz", "wb") as fh:
        fh.write(p.read_bytes())
    np.testing.assert_array_equal(read_idx(tmp_path / "labels.gz"), [7, 0, 9])


@pytest.mark.parametrize(
    "raw, msg",
    [
        (bytes([1, 0, 8, 1, 0, 0, 0, 1, 5]), "magic"),
        (bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 5]), "type code"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 4, 5]), "shape"),
        (bytes([0, 0, 8, 2, 0, 0]), "header"),
    ],
)
def test_idx_bad_files(tmp_path, raw, msg):
    p = tmp_path / "bad"
    p.write_bytes(raw)
    with pytest.raises(ValueError, match=msg):
        read_idx(p)


@pytest.mark.parametrize("gz, sep", [(True, "-"), (False, "-"), (False, ".")])
def test_load_mnist_from_idx_dir(tmp_path, gz, sep):
    arrays = write_fake_mnist(tmp_path, gz=gz, sep=sep)
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert isinstance(ds, Dataset) and ds.name == "mnist" and ds.num_classes == 10
    assert ds.x_train.shape == (30, 28, 28, 1) and ds.x_train.dtype == np.float32
    assert ds.y_train.dtype == np.int32 and ds.x_test.shape == (10, 28, 28, 1)
    want = (arrays["train-images"][..., None] / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(ds.x_train, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels"])
    raw = load_dataset("mnist", data_dir=tmp_path, normalize=False)
    assert 0.0 <= raw.x_train.min() and raw.x_train.max() <= 1.0


def test_data_dir_subdir_and_env_var(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path / "fashion-mnist")
    ds = load_dataset("fashion_mnist", data_dir=tmp_path)
    assert ds.x_train.shape == (30, 28, 28, 1)
    write_fake_mnist(tmp_path / "mnist", n_train=20)
    monkeypatch.setenv("NNMJAX_DATA_DIR", str(tmp_path))
    assert load_dataset("mnist").x_train.shape == (20, 28, 28, 1)


def test_augment_flip_train_only(tmp_path):
    arrays = write_fake_mnist(tmp_path)
    ds = load_dataset("fashion_mnist", data_dir=tmp_path, augment_flip=True, normalize=False)
    assert ds.x_train.shape == (60, 28, 28, 1) and ds.x_test.shape == (10, 28, 28, 1)
    np.testing.assert_allclose(ds.x_train[30:], ds.x_train[:30, :, ::-1])
    np.testing.assert_array_equal(ds.y_train[30:], ds.y_train[:30])
    np.testing.assert_allclose(ds.x_test[..., 0], arrays["t10k-images"] / 255.0, atol=1e-6)


def test_missing_dir_error_lists_places(tmp_path, monkeypatch):
    monkeypatch.delenv("NNMJAX_DATA_DIR", raising=False)
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("mnist", data_dir=missing)
    assert isinstance(e.value, DatasetNotFoundError)
    msg = str(e.value)
    assert str(missing) in msg and "NNMJAX_DATA_DIR" in msg and "data_dir" in msg
    # Without data_dir: the env var's dir, strictly (no fall-back to the Debian dir) ...
    monkeypatch.setenv("NNMJAX_DATA_DIR", str(missing))
    monkeypatch.setattr(ds_mod, "_SYSTEM_DIRS", {**ds_mod._SYSTEM_DIRS,
                                                  "fashion_mnist": (str(tmp_path / "deb"),)})
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("fashion_mnist")
    msg = str(e.value)
    assert str(missing) in msg and str(tmp_path / "deb") not in msg
    # ... and with neither, the system locations
    monkeypatch.delenv("NNMJAX_DATA_DIR")
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("fashion_mnist")
    assert str(tmp_path / "deb") in str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg


def test_partial_dir_is_not_found(tmp_path):
    write_fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels"):
        load_dataset("mnist", data_dir=tmp_path)


def test_cifar_python_batches(tmp_path):
    write_fake_cifar(tmp_path)
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(ds.y_test, [0, 1, 2, 3])


def test_bad_names():
    with pytest.raises(ValueError, match="valid names"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="source"):
        load_dataset("mnist", source="http")
    with pytest.raises(ValueError, match="source"):
        load_dataset("digits", source="tfds")


def test_tfds_missing_gives_install_hint(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("tensorflow_datasets"):
            raise ImportError("no tfds here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"nnmjax\[tfds\]"):
        load_dataset("mnist", source="tfds")


def test_tfds_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        ds = load_dataset("mnist", source="tfds")
    assert ds.x_train.shape == (12, 28, 28, 1) and ds.y_train.shape == (12,)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32


def test_digits():
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1437, 8, 8, 1) and ds.x_test.shape == (360, 8, 8, 1)
    assert ds.y_train.shape == (1437,) and ds.y_test.shape == (360,)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.num_classes == 10 and ds.name == "digits"
    assert abs(ds.x_train.mean()) < 1e-4 and abs(ds.x_train.std() - 1) < 1e-4
    # stratified: every class in both splits, deterministic
    assert (np.bincount(ds.y_test, minlength=10) >= 35).all()
    ds2 = load_dataset("digits")
    np.testing.assert_array_equal(ds.x_train, ds2.x_train)
    raw = load_dataset("digits", normalize=False)
    assert raw.x_train.min() == 0.0 and raw.x_train.max() == 1.0


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_debian_fashion_mnist(monkeypatch):
    monkeypatch.delenv("NNMJAX_DATA_DIR", raising=False)
    ds = load_dataset("fashion_mnist")
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert (np.bincount(ds.y_train) == 6000).all()
    assert abs(float(ds.x_train.mean())) < 1e-3 and abs(float(ds.x_train.std()) - 1) < 1e-3


# ----------------------------------------------------------------------- partitions

Y = np.repeat(np.arange(10), 50)  # 500 samples, 10 balanced classes
np.random.default_rng(0).shuffle(Y)

ALL = [
    ("iid", {}),
    ("dirichlet", {"alpha": 0.1}),
    ("dirichlet", {"alpha": 10.0}),
    ("dirichlet_per_class", {"alpha": 0.1}),
    ("dirichlet_per_class", {"alpha": 1.0}),
    ("gamma_similarity", {"gamma": 0.3}),
    ("extreme", {}),
]


@pytest.mark.parametrize("method, kw", ALL)
def test_partition_properties(method, kw):
    parts = partition(Y, 13, method=method, seed=3, **kw)
    again = partition(Y, 13, method=method, seed=3, **kw)
    assert len(parts) == 13
    for a, b in zip(parts, again):
        np.testing.assert_array_equal(a, b)
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx)  # disjoint
    assert allidx.min() >= 0 and allidx.max() < len(Y)
    assert min(len(p) for p in parts) >= 1  # no empty worker
    if method != "dirichlet":  # dirichlet leaves N mod h samples out
        assert len(allidx) == len(Y)
    else:
        assert all(len(p) == len(Y) // 13 for p in parts)


def test_partition_generator_seed():
    a = dirichlet(Y, 5, alpha=1.0, seed=np.random.default_rng(7))
    b = dirichlet(Y, 5, alpha=1.0, seed=np.random.default_rng(7))
    c = dirichlet(Y, 5, alpha=1.0, seed=8)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c))


def _skew(parts, y=Y):
    fr = [np.bincount(y[p], minlength=10).max() / len(p) for p in parts]
    return float(np.mean(fr))


@pytest.mark.parametrize("fn", [dirichlet, dirichlet_per_class])
def test_dirichlet_small_alpha_is_more_skewed(fn):
    small = np.mean([_skew(fn(Y, 10, alpha=0.1, seed=s)) for s in range(5)])
    large = np.mean([_skew(fn(Y, 10, alpha=100.0, seed=s)) for s in range(5)])
    assert small > 0.5 and large < 0.3 and small > large


def test_iid_sizes_and_extreme_sorted():
    sizes = [len(p) for p in iid(Y, 7, seed=0)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(Y)
    parts = extreme(Y, 10)
    assert all(len(np.unique(Y[p])) == 1 for p in parts)
    labels = np.concatenate([Y[p] for p in parts])
    assert (np.diff(labels) >= 0).all()


def test_gamma_limits():
    g1 = gamma_similarity(Y, 10, gamma=1.0, seed=0)
    assert _skew(g1) < 0.4
    g0 = gamma_similarity(Y, 10, gamma=0.0, seed=0)
    assert all(len(np.unique(Y[p])) == 1 for p in g0)


def test_tiny_alpha_and_many_workers_never_empty():
    y = np.repeat(np.arange(3), 4)  # 12 samples
    for s in range(20):
        for fn in (dirichlet, dirichlet_per_class):
            parts = fn(y, 12, alpha=1e-3, seed=s)
            assert all(len(p) >= 1 for p in parts)
            assert len(np.unique(np.concatenate(parts))) == sum(len(p) for p in parts)
        parts = gamma_similarity(y, 12, gamma=0.5, seed=s)
        assert all(len(p) == 1 for p in parts)


def test_dirichlet_exhausts_and_renormalizes():
    # A class is much rarer than a worker's share: renormalization must still fill workers.
    y = np.concatenate([np.zeros(95, int), np.ones(5, int)])
    parts = dirichlet(y, 4, alpha=0.01, seed=1)
    assert [len(p) for p in parts] == [25] * 4
    assert len(np.unique(np.concatenate(parts))) == 100


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: dirichlet(Y, 3, alpha=0.0), "alpha"),
        (lambda: dirichlet(Y, 3, alpha=-1.0), "alpha"),
        (lambda: dirichlet_per_class(Y, 3, alpha=0.0), "alpha"),
        (lambda: gamma_similarity(Y, 3, gamma=1.5), "gamma"),
        (lambda: gamma_similarity(Y, 3, gamma=-0.1), "gamma"),
        (lambda: iid(Y, 501), "num_workers"),
        (lambda: iid(Y, 0), "num_workers"),
        (lambda: partition(Y, 3, method="pathological"), "valid partitions"),
        (lambda: iid(Y.reshape(10, 50), 3), "y"),
        (lambda: label_flip(Y, 0), "num_classes"),
    ],
)
def test_partition_bad_args(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_partitions_constant():
    assert set(PARTITIONS) == {"iid", "dirichlet", "dirichlet_per_class", "gamma_similarity",
                               "extreme"}
    assert "digits" in DATASETS


def test_label_flip():
    np.testing.assert_array_equal(label_flip(np.arange(10), 10), 9 - np.arange(10))
    out = jax.jit(lambda y: label_flip(y, 10))(jnp.arange(10))
    np.testing.assert_array_equal(out, 9 - np.arange(10))
    np.testing.assert_array_equal(label_flip(label_flip(Y, 10), 10), Y)


# ------------------------------------------------------------------- device data


def _small_worker_data():
    # 4 workers with 1, 2, 5, 3 samples; x encodes the global index, y = index % 10.
    x = np.arange(11, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 2, 1), np.float32)
    y = np.arange(11) % 10
    parts = [np.array([0]), np.array([1, 2]), np.array([3, 4, 5, 6, 7]), np.array([8, 9, 10])]
    return x, y, parts, to_worker_arrays(x, y, parts)


def test_to_worker_arrays():
    x, y, parts, wd = _small_worker_data()
    assert isinstance(wd, WorkerData)
    assert wd.x.shape == (4, 5, 2, 2, 1) and wd.y.shape == (4, 5) and wd.y.dtype == jnp.int32
    np.testing.assert_array_equal(wd.counts, [1, 2, 5, 3])
    for i, p in enumerate(parts):
        np.testing.assert_array_equal(wd.x[i, : len(p), 0, 0, 0], p)
        np.testing.assert_array_equal(wd.y[i, : len(p)], y[p])
    with pytest.raises(ValueError, match="no samples"):
        to_worker_arrays(x, y, [np.array([0]), np.array([], int)])
    with pytest.raises(ValueError, match="x, y"):
        to_worker_arrays(x, y[:5], parts)


def test_sample_batches_valid_rows_jit_vmap():
    x, y, parts, wd = _small_worker_data()
    f = jax.jit(sample_batches, static_argnums=2)
    xb, yb = f(jax.random.key(0), wd, 64)
    assert xb.shape == (4, 64, 2, 2, 1) and yb.shape == (4, 64)
    keys = jax.random.split(jax.random.key(1), 8)
    xv, yv = jax.jit(jax.vmap(sample_batches, in_axes=(0, None, None)), static_argnums=2)(keys, wd, 64)
    assert xv.shape == (8, 4, 64, 2, 2, 1)
    for xs, ys in [(xb[None], yb[None]), (xv, yv)]:
        xs, ys = np.asarray(xs), np.asarray(ys)
        for i, p in enumerate(parts):
            got = xs[:, i, :, 0, 0, 0].astype(int)
            assert set(np.unique(got)) <= set(p.tolist())  # only worker i's valid rows
            np.testing.assert_array_equal(ys[:, i], got % 10)  # x and y rows stay paired
    # uniform-ish over a worker's rows, and all rows of worker 2 are reachable
    xs = np.asarray(xv[:, 2, :, 0, 0, 0]).astype(int).ravel()
    counts = np.bincount(xs - 3, minlength=5)
    assert (counts > 0).all() and counts.max() < 2.0 * counts.min()
    # different keys give different batches
    assert not np.array_equal(np.asarray(xv[0]), np.asarray(xv[1]))


def test_flip_worker_labels():
    x, y, parts, wd = _small_worker_data()
    flipped = flip_worker_labels(wd, 10)
    np.testing.assert_array_equal(flipped.y, 9 - wd.y)
    some = flip_worker_labels(wd, 10, workers=[2, 2, 0])
    assert some.x.shape[0] == 3
    np.testing.assert_array_equal(some.counts, [5, 5, 1])
    np.testing.assert_array_equal(some.y[0], 9 - wd.y[2])
