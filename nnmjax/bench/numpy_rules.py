"""NumPy baselines for ``nnmjax bench``: straightforward formulations, float32 throughout.

Krum, Multi-Krum, MoNNA and NNM use the Gram identity
``||x_i - x_j||^2 = ||x_i||^2 + ||x_j||^2 - 2 <x_i, x_j>``; ``nnm+X`` chains NNM and ``X``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from nnmjax.bench.cases import rule_stages

def _np_sqdist(x):
    g = x @ x.T
    sq = np.diagonal(g).copy()
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * g, 0.0)
    np.fill_diagonal(d2, 0.0)
    return d2


def _np_krum_scores(x, f):
    n = x.shape[0]
    return np.sort(_np_sqdist(x), axis=1)[:, : n - f].sum(axis=1)


def _np_krum(x, f):
    return x[np.argmin(_np_krum_scores(x, f))].copy()


def _np_multikrum(x, f):
    n = x.shape[0]
    best = np.argsort(_np_krum_scores(x, f), kind="stable")[: n - f]
    c = np.zeros(n, x.dtype)
    c[best] = 1.0 / (n - f)
    return c @ x


def _np_nearest(x, f):
    d2 = _np_sqdist(x)
    np.fill_diagonal(d2, -1.0)
    return np.argsort(d2, axis=1, kind="stable")[:, : x.shape[0] - f]


def _np_nnm(x, f):
    n = x.shape[0]
    w = np.zeros((n, n), x.dtype)
    w[np.arange(n)[:, None], _np_nearest(x, f)] = 1.0 / (n - f)
    return w @ x


def _np_monna(x, f):
    n = x.shape[0]
    d2 = np.sum(np.square(x - x[0]), axis=1)
    d2[0] = -1.0
    c = np.zeros(n, x.dtype)
    c[np.argsort(d2, kind="stable")[: n - f]] = 1.0 / (n - f)
    return c @ x


def _np_cwtm(x, f):
    n = x.shape[0]
    return np.sort(x, axis=0)[f: n - f].mean(axis=0)


def _np_meamed(x, f):
    n = x.shape[0]
    s = np.sort(x, axis=0)
    med = np.median(s, axis=0)
    k = np.arange(f + 1)
    cost = np.maximum(med - s[k], s[k + n - f - 1] - med)  # (f+1, d)
    best = np.argmin(cost, axis=0)
    cs = np.concatenate([np.zeros_like(s[:1]), np.cumsum(s, axis=0)])
    total = (np.take_along_axis(cs, (best + n - f)[None], 0)
             - np.take_along_axis(cs, best[None], 0))[0]
    return total / (n - f)


def _np_cclip(x, f, tau=100.0):
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))
    s = np.minimum(1.0, tau / norm).astype(x.dtype)
    return (s / x.shape[0]) @ x


def _np_cge(x, f):
    norm = np.einsum("ij,ij->i", x, x)
    keep = np.argsort(norm, kind="stable")[: x.shape[0] - f]
    return x[keep].mean(axis=0)


def _np_bulyan(x, f):
    n = x.shape[0]
    d2 = _np_sqdist(x)
    np.fill_diagonal(d2, np.inf)
    remaining, picked = np.ones(n, bool), []
    for t in range(n - 2 * f):
        k = max(n - t - f - 2, 1)
        near = np.sort(np.where(remaining[None, :], d2, np.inf), axis=1)[:, :k].sum(axis=1)
        left = np.flatnonzero(remaining)
        best = int(left[np.argmin(near[left])])
        picked.append(best)
        remaining[best] = False
    return _np_meamed(x[picked], 2 * f)


NUMPY_AGGREGATORS: dict[str, Callable] = {
    "mean": lambda x, f: x.mean(axis=0),
    "cwmed": lambda x, f: np.median(x, axis=0),
    "cwtm": _np_cwtm,
    "meamed": _np_meamed,
    "krum": _np_krum,
    "multikrum": _np_multikrum,
    "monna": _np_monna,
    "cclip": _np_cclip,
    "cge": _np_cge,
    "bulyan": _np_bulyan,
}
NUMPY_PREAGGREGATORS: dict[str, Callable] = {"nnm": _np_nnm}


def numpy_fn(name: str, f: int):
    stages = rule_stages(name)
    *pres, last = stages
    if len(stages) == 1 and last in NUMPY_PREAGGREGATORS:
        pres, last = stages, None
    if any(s not in NUMPY_PREAGGREGATORS for s in pres):
        return None
    if last is not None and last not in NUMPY_AGGREGATORS:
        return None

    def fn(x):
        for s in pres:
            x = NUMPY_PREAGGREGATORS[s](x, f)
        return x if last is None else NUMPY_AGGREGATORS[last](x, f)

    return fn

