"""Partitions of a training set over ``h`` honest workers (paper Appendix 14.4).

Each function takes the training labels ``y`` (``int[N]``), the number of
honest workers ``num_workers`` and a ``seed`` (an ``int`` or a
``numpy.random.Generator``; the same int gives the same partition), and returns
a list of ``num_workers`` sorted ``int64`` index arrays into ``y`` that are
pairwise disjoint. **No worker is ever empty**: :func:`dirichlet` gives every
worker ``N // h >= 1`` samples by construction; :func:`dirichlet_per_class` and
:func:`gamma_similarity` move one random sample from the currently largest
worker into each worker that would otherwise be empty (a minimal, seeded
repair, possible because ``h <= N``); :func:`iid` and :func:`extreme` split
into near-equal chunks.

* ``iid``: shuffle, split into ``h`` near-equal chunks (sizes differ by <= 1).
* ``dirichlet`` (the default; the paper's reference [22], Hsu et al. 2019):
  worker ``i`` draws class proportions ``q_i ~ Dir(alpha * 1_K)`` and receives
  ``m = N // h`` samples, each drawn from class ``k`` with probability
  ``q_ik``, without replacement; once a class is exhausted, ``q_i`` is
  renormalized over the classes that still have samples (if all of ``q_i``'s
  mass sat on exhausted classes, the remaining classes are drawn in proportion
  to what is left). Workers are filled in order ``0..h-1``; the ``N - h m``
  leftover samples are unused. Hsu et al. scale the prior as ``alpha * p``
  with ``p`` the class prior; here the concentration is ``alpha`` per class.
* ``dirichlet_per_class`` (ByzFL's ``dirichlet_niid``): for each class ``k``
  the proportions over workers ``p_k ~ Dir(alpha * 1_h)``; class ``k``'s
  (shuffled) samples are cut at ``floor(cumsum(p_k) * N_k)``. Worker sizes
  vary.
* ``gamma_similarity`` (ByzFL's ``gamma_similarity_niid``): a random
  ``floor(gamma N)`` of the samples are split iid; the rest are sorted by label
  and split into ``h`` contiguous shards; worker ``i`` gets iid chunk ``i``
  plus shard ``i``. ``gamma=1`` is iid, ``gamma=0`` is extreme.
* ``extreme`` (ByzFL's ``extreme_niid``): sort by label (stable, ties by
  index) and split into ``h`` contiguous chunks. Deterministic.

:func:`label_flip` maps labels ``l -> K - 1 - l`` (the paper's LF attack,
``9 - l``).
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np

__all__ = [
    "PARTITIONS",
    "partition",
    "iid",
    "dirichlet",
    "dirichlet_per_class",
    "gamma_similarity",
    "extreme",
    "label_flip",
]

Seed = Union[int, np.random.Generator]

PARTITIONS = ("iid", "dirichlet", "dirichlet_per_class", "gamma_similarity", "extreme")


def _check(y, num_workers) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y: expected a 1-D label array, got shape {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
        raise ValueError("y: labels must be non-negative integers")
    if isinstance(num_workers, bool) or int(num_workers) != num_workers or num_workers < 1:
        raise ValueError(f"num_workers: must be a positive integer, got {num_workers!r}")
    if num_workers > y.shape[0]:
        raise ValueError(
            f"num_workers: {num_workers} workers but only {y.shape[0]} samples; "
            "every honest worker needs at least one sample"
        )
    return y


def _check_alpha(alpha) -> float:
    if alpha is None or not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha: the Dirichlet concentration must be finite and > 0, got {alpha!r}")
    return float(alpha)


def _finish(parts, rng: np.random.Generator) -> list[np.ndarray]:
    """Sorts each part and repairs empty ones by moving one sample from the largest."""
    parts = [np.asarray(p, dtype=np.int64) for p in parts]
    for i in range(len(parts)):
        if parts[i].size == 0:
            j = int(np.argmax([p.size for p in parts]))
            k = int(rng.integers(parts[j].size))
            parts[i] = parts[j][k : k + 1]
            parts[j] = np.delete(parts[j], k)
    return [np.sort(p) for p in parts]


def _dirichlet(rng: np.random.Generator, alpha: float, size: int) -> np.ndarray:
    """``Dir(alpha * 1)`` via normalized Gammas; robust to underflow at tiny alpha."""
    g = rng.gamma(alpha, size=size)
    s = g.sum()
    if not np.isfinite(s) or s <= 0:  # every Gamma underflowed: the alpha -> 0 limit
        g = np.zeros(size)
        g[rng.integers(size)] = 1.0
        s = 1.0
    return g / s


def iid(y, num_workers: int, *, seed: Seed = 0) -> list[np.ndarray]:
    """Uniformly random split into near-equal chunks (sizes differ by at most 1).

    Args:
      y: ``int[N]`` training labels (non-negative).
      num_workers: the number of honest workers ``h``, ``1 <= h <= N``.
      seed: an ``int`` or a ``numpy.random.Generator``; the same int gives the same split.

    Returns:
      ``num_workers`` sorted, pairwise disjoint, non-empty ``int64`` index arrays into ``y``.

    Raises:
      ValueError: ``y`` is not a 1-D array of non-negative integers, or ``num_workers`` is
        not an integer in ``[1, N]``.

    Examples:
      >>> import numpy as np
      >>> from nnmjax.data import iid
      >>> parts = iid(np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2]), 3, seed=0)
      >>> [len(p) for p in parts], sorted(np.concatenate(parts).tolist()) == list(range(10))
      ([4, 3, 3], True)
    """
    y = _check(y, num_workers)
    rng = np.random.default_rng(seed)
    return _finish(np.array_split(rng.permutation(y.shape[0]), num_workers), rng)


def extreme(y, num_workers: int, *, seed: Seed = 0) -> list[np.ndarray]:
    """Sort by label (ties by index) and split contiguously; ``seed`` is unused.

    Args:
      y: ``int[N]`` training labels (non-negative).
      num_workers: the number of honest workers ``h``, ``1 <= h <= N``.
      seed: unused (the split is deterministic).

    Returns:
      ``num_workers`` sorted, pairwise disjoint, non-empty ``int64`` index arrays into ``y``.

    Raises:
      ValueError: ``y`` is not a 1-D array of non-negative integers, or ``num_workers`` is
        not an integer in ``[1, N]``.

    Examples:
      >>> import numpy as np
      >>> from nnmjax.data import extreme
      >>> y = np.array([2, 0, 1, 0, 2, 1, 0])
      >>> [(p.tolist(), y[p].tolist()) for p in extreme(y, 3)]
      [([1, 3, 6], [0, 0, 0]), ([2, 5], [1, 1]), ([0, 4], [2, 2])]
    """
    y = _check(y, num_workers)
    order = np.argsort(y, kind="stable")
    return _finish(np.array_split(order, num_workers), np.random.default_rng(seed))


def gamma_similarity(y, num_workers: int, *, gamma: float, seed: Seed = 0) -> list[np.ndarray]:
    """A ``gamma`` fraction split iid, the rest sorted by label into contiguous shards.

    Args:
      y: ``int[N]`` training labels (non-negative).
      num_workers: the number of honest workers ``h``, ``1 <= h <= N``.
      gamma: the iid fraction, in ``[0, 1]`` (1: iid; 0: :func:`extreme`).
      seed: an ``int`` or a ``numpy.random.Generator``; the same int gives the same split.

    Returns:
      ``num_workers`` sorted, pairwise disjoint, non-empty ``int64`` index arrays into ``y``.

    Raises:
      ValueError: ``y`` is not a 1-D array of non-negative integers, or ``num_workers`` is
        not an integer in ``[1, N]``, or ``gamma`` is not in ``[0, 1]``.

    Examples:
      >>> import numpy as np
      >>> from nnmjax.data import extreme, gamma_similarity
      >>> y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
      >>> [len(p) for p in gamma_similarity(y, 3, gamma=0.5, seed=0)]
      [4, 4, 2]
      >>> [p.tolist() for p in gamma_similarity(y, 3, gamma=0.0)] == [
      ...     p.tolist() for p in extreme(y, 3)]
      True
    """
    y = _check(y, num_workers)
    if gamma is None or not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma: the iid fraction must be in [0, 1], got {gamma!r}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(y.shape[0])
    n_iid = int(y.shape[0] * gamma)
    iid_part, rest = perm[:n_iid], perm[n_iid:]
    rest = rest[np.lexsort((rest, y[rest]))]  # by label, then by index
    chunks = np.array_split(iid_part, num_workers)
    shards = np.array_split(rest, num_workers)
    return _finish([np.concatenate([a, b]) for a, b in zip(chunks, shards)], rng)


def dirichlet_per_class(y, num_workers: int, *, alpha: float, seed: Seed = 0) -> list[np.ndarray]:
    """ByzFL's split: per class ``k``, ``p_k ~ Dir(alpha 1_h)`` cuts class ``k`` over workers.

    Args:
      y: ``int[N]`` training labels (non-negative).
      num_workers: the number of honest workers ``h``, ``1 <= h <= N``.
      alpha: the Dirichlet concentration, finite and ``> 0`` (smaller: more heterogeneous).
      seed: an ``int`` or a ``numpy.random.Generator``; the same int gives the same split.

    Returns:
      ``num_workers`` sorted, pairwise disjoint, non-empty ``int64`` index arrays into ``y``.

    Raises:
      ValueError: ``y`` is not a 1-D array of non-negative integers, or ``num_workers`` is
        not an integer in ``[1, N]``, or ``alpha`` is not finite and positive.

    Examples:
      >>> import numpy as np
      >>> from nnmjax.data import dirichlet_per_class
      >>> y = np.repeat(np.arange(5), 20)
      >>> parts = dirichlet_per_class(y, 4, alpha=0.5, seed=0)
      >>> sum(len(p) for p in parts), min(len(p) for p in parts) >= 1
      (100, True)
    """
    y = _check(y, num_workers)
    alpha = _check_alpha(alpha)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_workers)]
    for k in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == k))
        p = _dirichlet(rng, alpha, num_workers)
        cuts = (np.cumsum(p)[:-1] * idx.size).astype(np.int64)
        for i, piece in enumerate(np.split(idx, cuts)):
            parts[i].append(piece)
    return _finish([np.concatenate(p) for p in parts], rng)


def dirichlet(y, num_workers: int, *, alpha: float, seed: Seed = 0) -> list[np.ndarray]:
    """Hsu et al. (2019): ``q_i ~ Dir(alpha 1_K)``, ``N // h`` samples per worker.

    Sampling ``m`` labels from ``q_i`` with exhausted classes renormalized away
    is done exactly, in rounds: draw ``Multinomial(r, q_i)`` over the classes
    still available, keep ``min(draw, available)`` per class, redraw the ``r``
    overflowing samples from ``q_i`` restricted to the non-exhausted classes.

    Args:
      y: ``int[N]`` training labels (non-negative).
      num_workers: the number of honest workers ``h``, ``1 <= h <= N``.
      alpha: the Dirichlet concentration, finite and ``> 0`` (smaller: more heterogeneous).
      seed: an ``int`` or a ``numpy.random.Generator``; the same int gives the same split.

    Returns:
      ``num_workers`` sorted, pairwise disjoint, non-empty ``int64`` index arrays into ``y``.

    Raises:
      ValueError: ``y`` is not a 1-D array of non-negative integers, or ``num_workers`` is
        not an integer in ``[1, N]``, or ``alpha`` is not finite and positive.

    Examples:
      Every worker gets ``N // h`` samples; with a small ``alpha`` few classes each:

      >>> import numpy as np
      >>> from nnmjax.data import dirichlet
      >>> y = np.repeat(np.arange(10), 30)
      >>> parts = dirichlet(y, 7, alpha=0.1, seed=0)
      >>> [len(p) for p in parts]
      [42, 42, 42, 42, 42, 42, 42]
      >>> all(len(np.unique(y[p])) < 10 for p in parts)
      True
    """
    y = _check(y, num_workers)
    alpha = _check_alpha(alpha)
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    pools = [rng.permutation(np.flatnonzero(y == k)) for k in classes]
    taken = np.zeros(classes.size, dtype=np.int64)
    sizes = np.array([p.size for p in pools], dtype=np.int64)
    m = y.shape[0] // num_workers
    parts = []
    for _ in range(num_workers):
        q = _dirichlet(rng, alpha, classes.size)
        want = np.zeros(classes.size, dtype=np.int64)
        remaining = m
        while remaining > 0:
            avail = sizes - taken - want
            open_ = avail > 0
            w = np.where(open_, q, 0.0)
            if w.sum() <= 0:  # q's mass is all on exhausted classes
                w = avail.astype(np.float64)
            draw = rng.multinomial(remaining, w / w.sum())
            got = np.minimum(draw, avail)
            want += got
            remaining -= int(got.sum())
        parts.append(np.concatenate([pools[k][taken[k] : taken[k] + want[k]]
                                     for k in range(classes.size)]))
        taken += want
    return _finish(parts, rng)


_FUNCS = {
    "iid": iid,
    "dirichlet": dirichlet,
    "dirichlet_per_class": dirichlet_per_class,
    "gamma_similarity": gamma_similarity,
    "extreme": extreme,
}


def partition(
    y,
    num_workers: int,
    *,
    method: str = "dirichlet",
    alpha: Optional[float] = 1.0,
    gamma: Optional[float] = 0.5,
    seed: Seed = 0,
) -> list[np.ndarray]:
    """Dispatches to one of :data:`PARTITIONS` by name (``alpha``/``gamma`` where used).

    Args:
      y: ``int[N]`` training labels (non-negative).
      num_workers: the number of honest workers ``h``, ``1 <= h <= N``.
      method: one of :data:`PARTITIONS`.
      alpha: the Dirichlet concentration of ``"dirichlet"`` and ``"dirichlet_per_class"``.
      gamma: the iid fraction of ``"gamma_similarity"``.
      seed: an ``int`` or a ``numpy.random.Generator``; the same int gives the same split.

    Returns:
      ``num_workers`` sorted, pairwise disjoint, non-empty ``int64`` index arrays into ``y``.

    Raises:
      ValueError: ``y`` is not a 1-D array of non-negative integers, or ``num_workers`` is
        not an integer in ``[1, N]``, ``method`` is unknown, or the method's
        ``alpha``/``gamma`` is out of range.

    Examples:
      >>> import numpy as np
      >>> from nnmjax.data import partition
      >>> y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
      >>> [p.tolist() for p in partition(y, 3, method="extreme")]
      [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
      >>> [len(p) for p in partition(y, 3, method="dirichlet", alpha=0.1, seed=0)]
      [3, 3, 3]
    """
    if method not in _FUNCS:
        raise ValueError(f"method: unknown partition {method!r}; valid partitions are {PARTITIONS}")
    if method in ("dirichlet", "dirichlet_per_class"):
        return _FUNCS[method](y, num_workers, alpha=alpha, seed=seed)
    if method == "gamma_similarity":
        return gamma_similarity(y, num_workers, gamma=gamma, seed=seed)
    return _FUNCS[method](y, num_workers, seed=seed)


def label_flip(y, num_classes: int):
    """Flipped labels ``num_classes - 1 - y`` (paper Appendix 14.3: ``l' = 9 - l``).

    Works on NumPy and JAX arrays (and inside ``jax.jit``).

    Args:
      y: integer labels in ``[0, num_classes)``, any shape.
      num_classes: the number of classes ``K``, a positive integer.

    Returns:
      ``num_classes - 1 - y``, of ``y``'s array type.

    Raises:
      ValueError: ``num_classes`` is not a positive integer.

    Examples:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from nnmjax.data import label_flip
      >>> label_flip(np.array([0, 3, 9]), 10)
      array([9, 6, 0])
      >>> jax.jit(lambda y: label_flip(y, 10))(jnp.array([0, 3, 9]))
      Array([9, 6, 0], dtype=int32)
    """
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes: must be a positive integer, got {num_classes!r}")
    return (num_classes - 1) - y
