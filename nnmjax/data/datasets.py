"""Datasets as plain NumPy arrays: ``digits`` (embedded), MNIST, Fashion-MNIST, CIFAR-10.

Every loader returns a :class:`Dataset` whose images are ``float32`` in NHWC
layout ``(N, H, W, C)`` and whose labels are ``int32`` in ``[0, num_classes)``.

Preprocessing follows the paper ("Fixing by Mixing", Allouah et al., AISTATS
2023, Appendix 14.2):

* MNIST: ``x / 255`` normalized with mean 0.1307, std 0.3081.
* Fashion-MNIST: ``x / 255`` normalized with mean 0.2860, std 0.3530 (the
  train-set statistics; the paper does not state them). The paper says the
  set "is expanded with horizontally flipped images": ``augment_flip=True``
  appends a horizontally flipped copy of every *training* image (doubling the
  training set to 120,000). The test set is never flipped (ByzFL evaluates on
  randomly flipped test images; we do not).
* CIFAR-10: per-channel normalization with means (0.4914, 0.4822, 0.4465) and
  stds (0.2023, 0.1994, 0.2010); ``augment_flip=True`` appends flipped training
  copies (a static stand-in for the paper's random horizontal flips).
* ``digits`` (scikit-learn's bundled 8x8 digits, 1,797 images, always
  offline): ``x / 16``, a stratified 80/20 train/test split with a fixed seed,
  standardized with the train set's scalar mean and std.

Where the files come from (``source="local"``, the default):

* MNIST / Fashion-MNIST: a directory with the four MNIST-format IDX files
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each optionally
  ``.gz``; ``-idx3-ubyte`` may also be spelled ``.idx3-ubyte``). Searched in
  order: ``data_dir`` (itself, then ``data_dir/<name>`` and common
  sub-directory spellings such as ``fashion-mnist`` or torchvision's
  ``FashionMNIST/raw``); otherwise ``$NNMJAX_DATA_DIR`` the same way;
  otherwise, for Fashion-MNIST, ``/usr/share/datasets/fashion-mnist``, where
  Debian's package ``dataset-fashion-mnist`` installs the four ``.gz`` files.
  A named ``data_dir`` or ``$NNMJAX_DATA_DIR`` is strict: files missing there are an
  error, never a silent fall-back to the system location.
* CIFAR-10: a ``cifar-10-batches-py`` directory (the official Python pickle
  release: ``data_batch_1..5``, ``test_batch``) found the same way.

``source="tfds"`` loads MNIST, Fashion-MNIST or CIFAR-10 through
``tensorflow_datasets`` (the optional ``tfds`` extra), which is imported
lazily; ``data_dir`` is then passed to ``tfds.load``.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np

__all__ = [
    "Dataset",
    "DatasetNotFoundError",
    "DATASETS",
    "SOURCES",
    "DEBIAN_FASHION_MNIST_DIR",
    "ENV_VAR",
    "load_dataset",
    "read_idx",
    "write_idx",
    "flip_horizontal",
]

PathLike = Union[str, os.PathLike]

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")
#: Where a dataset's files come from (:func:`load_dataset`'s ``source``).
SOURCES = ("local", "tfds")
ENV_VAR = "NNMJAX_DATA_DIR"
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# (mean, std) applied after scaling pixels to [0, 1]; paper Appendix 14.2.
NORMALIZATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

# Sub-directory spellings tried under data_dir / $NNMJAX_DATA_DIR.
_SUBDIRS = {
    "mnist": ("mnist", "MNIST", "MNIST/raw"),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist", "FashionMNIST", "FashionMNIST/raw"),
    "cifar10": ("cifar10", "cifar-10", "CIFAR10"),
}
_SYSTEM_DIRS = {
    "mnist": (),
    "fashion_mnist": (DEBIAN_FASHION_MNIST_DIR,),
    "cifar10": (),
}

_INSTALL_HINT = {
    "mnist": (
        "put the four MNIST IDX files (train-images-idx3-ubyte[.gz], ...) in a "
        "directory and pass data_dir=... or set NNMJAX_DATA_DIR, or use "
        "source='tfds' (pip install 'nnmjax[tfds]')"
    ),
    "fashion_mnist": (
        "run `apt-get install dataset-fashion-mnist` (installs "
        f"{DEBIAN_FASHION_MNIST_DIR}), or put the four IDX files in a directory "
        "and pass data_dir=... or set NNMJAX_DATA_DIR, or use source='tfds' "
        "(pip install 'nnmjax[tfds]')"
    ),
    "cifar10": (
        "unpack the CIFAR-10 python release (cifar-10-batches-py) and pass "
        "data_dir=... or set NNMJAX_DATA_DIR, or use source='tfds' "
        "(pip install 'nnmjax[tfds]')"
    ),
}


class Dataset(NamedTuple):
    """A train/test split held as NumPy arrays.

    Attributes:
      x_train: ``float32[N, H, W, C]`` preprocessed training images.
      y_train: ``int32[N]`` training labels.
      x_test: ``float32[M, H, W, C]`` preprocessed test images.
      y_test: ``int32[M]`` test labels.
      num_classes: number of classes.
      name: dataset name (one of :data:`DATASETS`).

    Examples:
      >>> from nnmjax.data import load_dataset
      >>> ds = load_dataset("digits")
      >>> ds.name, ds.num_classes, ds.x_train.shape, ds.y_test.shape
      ('digits', 10, (1437, 8, 8, 1), (360,))
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files were not found; the message lists where we looked.

    A ``FileNotFoundError``, raised by :func:`load_dataset`; the message also says how to get
    the data.

    Examples:
      >>> import tempfile
      >>> from nnmjax.data import DatasetNotFoundError, load_dataset
      >>> with tempfile.TemporaryDirectory() as d:
      ...     try:
      ...         load_dataset("mnist", data_dir=d)
      ...     except DatasetNotFoundError as e:
      ...         print(str(e).replace(d, "DIR"))
      dataset 'mnist': could not find the IDX files (train-images-idx3-ubyte[.gz], ...).
      Looked in (data_dir):
        - DIR
        - DIR/mnist
        - DIR/MNIST
        - DIR/MNIST/raw
      To get the data: put the four MNIST IDX files ...
    """


# --------------------------------------------------------------------------- IDX

# IDX type codes (third byte of the magic number) -> big-endian dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: PathLike) -> np.ndarray:
    """Reads an IDX file (``.gz`` or plain) into a native-endian NumPy array.

    The format (LeCun's MNIST page): a 4-byte magic ``0x00 0x00 <type> <ndim>``,
    ``ndim`` big-endian uint32 sizes, then the data in C order, big-endian.

    Args:
      path: the file; read through gzip when its name ends in ``.gz``.

    Returns:
      The array, with the file's shape and element type (native byte order).

    Raises:
      ValueError: a bad magic number, an unknown type code or a size mismatch.

    Examples:
      >>> import os, tempfile
      >>> import numpy as np
      >>> from nnmjax.data import read_idx, write_idx
      >>> with tempfile.TemporaryDirectory() as d:
      ...     write_idx(os.path.join(d, "labels.gz"), np.array([[0, 1, 2], [3, 4, 5]], np.uint8))
      ...     x = read_idx(os.path.join(d, "labels.gz"))
      >>> x, x.dtype
      (array([[0, 1, 2],
             [3, 4, 5]], dtype=uint8), dtype('uint8'))
    """
    path = Path(path)
    with _open(path) as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4]!r})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: unknown IDX type code 0x{code:02x}; valid codes are "
            f"{sorted(hex(c) for c in _IDX_DTYPES)}"
        )
    dtype = _IDX_DTYPES[code]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"{path}: IDX header says shape {shape} ({count * dtype.itemsize} bytes) "
            f"but the file holds {len(raw) - header} data bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header)
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: PathLike, array: np.ndarray) -> None:
    """Writes ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``).

    Args:
      path: the file to write (replaced when it exists).
      array: the data; its dtype must have an IDX type code.

    Raises:
      ValueError: a dtype other than uint8, int8, int16, int32, float32 or float64.

    Examples:
      >>> import os, tempfile
      >>> import numpy as np
      >>> from nnmjax.data import read_idx, write_idx
      >>> with tempfile.TemporaryDirectory() as d:
      ...     write_idx(os.path.join(d, "x"), np.float32([[0.5, -1.0]]))
      ...     print(read_idx(os.path.join(d, "x")), os.path.getsize(os.path.join(d, "x")))
      [[ 0.5 -1. ]] 20
      >>> write_idx("unused", np.zeros(2, np.int64))
      Traceback (most recent call last):
      ...
      ValueError: array: dtype int64 has no IDX type code; valid dtypes are uint8, int8, ...
    """
    path = Path(path)
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(
            f"array: dtype {array.dtype} has no IDX type code; valid dtypes are "
            "uint8, int8, int16, int32, float32, float64"
        )
    code = codes[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(header + body)


def _find_file(directory: Path, stem: str) -> Optional[Path]:
    variants = (stem, stem.replace("-idx", ".idx"))
    for v in variants:
        for suffix in ("", ".gz"):
            p = directory / (v + suffix)
            if p.is_file():
                return p
    return None


def _candidate_dirs(name: str, data_dir: Optional[PathLike]) -> list[Path]:
    """Directories searched for ``name``, in order (see the module docstring)."""
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    elif os.environ.get(ENV_VAR):
        roots.append(Path(os.environ[ENV_VAR]).expanduser())
    dirs: list[Path] = []
    for root in roots:
        if name == "cifar10":
            dirs.append(root / "cifar-10-batches-py")
            dirs.extend(root / s / "cifar-10-batches-py" for s in _SUBDIRS[name])
        dirs.append(root)
        dirs.extend(root / s for s in _SUBDIRS[name])
    if not roots:  # data_dir and $NNMJAX_DATA_DIR are strict: no fallback once one is named
        dirs.extend(Path(p) for p in _SYSTEM_DIRS[name])
    return dirs


def _not_found(name: str, dirs: Sequence[Path], what: str, data_dir) -> DatasetNotFoundError:
    where = "\n".join(f"  - {d}" for d in dirs) or "  (nowhere)"
    origin = (
        "data_dir" if data_dir is not None
        else (f"${ENV_VAR}" if os.environ.get(ENV_VAR) else "the system default locations")
    )
    return DatasetNotFoundError(
        f"dataset {name!r}: could not find {what}. Looked in ({origin}):\n{where}\n"
        f"To get the data: {_INSTALL_HINT[name]}."
    )


def _load_idx_dir(name: str, data_dir: Optional[PathLike]):
    dirs = _candidate_dirs(name, data_dir)
    for d in dirs:
        files = {k: _find_file(d, stem) for k, stem in _IDX_FILES.items()}
        if all(files.values()):
            arrays = {k: read_idx(p) for k, p in files.items()}
            for split in ("train", "test"):
                x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
                if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
                    raise ValueError(
                        f"{d}: {split} images have shape {x.shape} and labels "
                        f"{y.shape}; expected (N, H, W) and (N,)"
                    )
            return tuple(arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    files = ", ".join(f"{s}[.gz]" for s in _IDX_FILES.values())
    raise _not_found(name, dirs, f"the IDX files ({files})", data_dir)


def _load_cifar_dir(data_dir: Optional[PathLike]):
    dirs = _candidate_dirs("cifar10", data_dir)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for d in dirs:
        if all((d / n).is_file() for n in names):
            xs, ys = [], []
            for n in names:
                with open(d / n, "rb") as fh:
                    batch = pickle.load(fh, encoding="bytes")
                data = np.asarray(batch[b"data"], dtype=np.uint8)
                xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                ys.append(np.asarray(batch[b"labels"]))
            return (np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5])
    raise _not_found("cifar10", dirs, "cifar-10-batches-py (data_batch_1..5, test_batch)", data_dir)


def _load_tfds(name: str, data_dir: Optional[PathLike]):
    try:
        import tensorflow_datasets as tfds  # noqa: PLC0415 (optional dependency)
    except ImportError as e:
        raise ImportError(
            f"load_dataset({name!r}, source='tfds') needs tensorflow-datasets, an "
            "optional dependency: pip install 'nnmjax[tfds]' (or pip install "
            "tensorflow-datasets tensorflow-cpu). The local source needs no extra: "
            "source='local'."
        ) from e
    out = []
    for split in ("train", "test"):  # in batches: batch_size=-1 needs a known cardinality
        ds = tfds.load(name, split=split, as_supervised=True,
                       data_dir=None if data_dir is None else str(data_dir))
        batches = list(tfds.as_numpy(ds.batch(10_000)))
        out += [np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])]
    return tuple(out)


# ------------------------------------------------------------------ preprocessing


def flip_horizontal(x: np.ndarray) -> np.ndarray:
    """Mirrors NHWC (or NHW) images left-right: ``x[:, :, ::-1]``.

    Args:
      x: images ``[N, H, W, C]`` or ``[N, H, W]``.

    Returns:
      A C-contiguous copy with the width axis reversed.

    Examples:
      >>> import numpy as np
      >>> from nnmjax.data import flip_horizontal
      >>> flip_horizontal(np.arange(6).reshape(1, 2, 3))
      array([[[2, 1, 0],
              [5, 4, 3]]])
    """
    return np.ascontiguousarray(x[:, :, ::-1])


def _normalize(x: np.ndarray, mean, std) -> np.ndarray:
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    return ((x - mean) / std).astype(np.float32)


def _load_digits(test_fraction: float, seed: int, normalize: bool) -> Dataset:
    from sklearn.datasets import load_digits  # noqa: PLC0415 (import cost)
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    y = bunch.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    if normalize:
        mean, std = float(x_tr.mean()), float(x_tr.std())
        x_tr, x_te = _normalize(x_tr, mean, std), _normalize(x_te, mean, std)
    return Dataset(np.ascontiguousarray(x_tr), y_tr, np.ascontiguousarray(x_te), y_te,
                   10, "digits")


def load_dataset(
    name: str,
    *,
    data_dir: Optional[PathLike] = None,
    source: str = "local",
    augment_flip: bool = False,
    normalize: bool = True,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Loads and preprocesses a dataset (paper Appendix 14.2; module docstring).

    Args:
      name: one of ``"digits"``, ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``.
      data_dir: directory to search (see module docstring); default
        ``$NNMJAX_DATA_DIR``, then system locations.
      source: ``"local"`` (files on disk; digits is bundled with scikit-learn)
        or ``"tfds"`` (``tensorflow_datasets``; not for digits).
      augment_flip: append horizontally flipped copies of the training images
        (labels repeated); the paper's Fashion-MNIST / CIFAR-10 preprocessing.
        Never applied to the test set.
      normalize: apply the dataset's normalization (else pixels in ``[0, 1]``).
      test_fraction, seed: the stratified train/test split of ``digits`` only.

    Returns:
      A :class:`Dataset`.

    Raises:
      ValueError: unknown ``name`` or ``source``.
      DatasetNotFoundError: (a ``FileNotFoundError``) local files are missing;
        the message lists every directory searched and how to get the data.
      ImportError: ``source="tfds"`` without ``tensorflow_datasets``.

    Examples:
      >>> from nnmjax.data import load_dataset
      >>> ds = load_dataset("digits")
      >>> ds.x_train.shape, ds.x_train.dtype, ds.y_train.dtype, ds.x_test.shape
      ((1437, 8, 8, 1), dtype('float32'), dtype('int32'), (360, 8, 8, 1))
      >>> round(float(ds.x_train.mean()), 4), round(float(ds.x_train.std()), 4)
      (0.0, 1.0)
      >>> load_dataset("digits", augment_flip=True).x_train.shape
      (2874, 8, 8, 1)
      >>> load_dataset("mnist", source="tfds")  # doctest: +SKIP
      Dataset(x_train=array(...), ..., num_classes=10, name='mnist')
    """
    if name not in DATASETS:
        raise ValueError(f"name: unknown dataset {name!r}; valid names are {DATASETS}")
    if source not in ("local", "tfds"):
        raise ValueError(f"source: unknown source {source!r}; valid sources are ('local', 'tfds')")
    if name == "digits":
        if source != "local":
            raise ValueError("source: 'digits' is bundled with scikit-learn; use source='local'")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction: must be in (0, 1), got {test_fraction}")
        ds = _load_digits(test_fraction, seed, normalize)
        if augment_flip:
            ds = ds._replace(x_train=np.concatenate([ds.x_train, flip_horizontal(ds.x_train)]),
                             y_train=np.concatenate([ds.y_train, ds.y_train]))
        return ds

    if source == "tfds":
        x_tr, y_tr, x_te, y_te = _load_tfds(name, data_dir)
    elif name == "cifar10":
        x_tr, y_tr, x_te, y_te = _load_cifar_dir(data_dir)
    else:
        x_tr, y_tr, x_te, y_te = _load_idx_dir(name, data_dir)

    def prep(x):
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[..., None]
        x = x.astype(np.float32) / 255.0
        if normalize:
            x = _normalize(x, *NORMALIZATION[name])
        return np.ascontiguousarray(x)

    x_tr, x_te = prep(x_tr), prep(x_te)
    y_tr = np.asarray(y_tr).astype(np.int32).reshape(-1)
    y_te = np.asarray(y_te).astype(np.int32).reshape(-1)
    if augment_flip:
        x_tr = np.concatenate([x_tr, flip_horizontal(x_tr)])
        y_tr = np.concatenate([y_tr, y_tr])
    return Dataset(x_tr, y_tr, x_te, y_te, 10, name)
