"""Independent float64 NumPy reference implementations of the aggregation rules.

Written from the original definitions (Allouah et al., "Fixing by Mixing",
AISTATS 2023, Appendix 8, and the rules' own papers / the nnmjax docstrings),
with plain loops and sorts. Nothing here imports nnmjax: these are the oracle
the library is checked against.

Conventions (those the project commits to in docs/design.md):

* nearest-neighbour sets include the point itself, ties to the lower index;
* Krum is the paper's variant (score = sum of squared distances to the
  ``n - f`` nearest rows, itself included), argmin with ties to lower index;
* subset rules (MDA, SMEA) take the first optimal subset in lexicographic order.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = ["mean", "cwmed", "cwtm", "meamed", "krum", "krum_scores", "multikrum", "gm",
           "gm_objective", "gm_grad_sum", "mda", "monna", "cclip", "caf", "smea", "nnm",
           "cge", "bulyan", "dnc", "signguard", "worst_case_kappa", "kappa_bound", "REFERENCES", "rule"]


def _f64(x):
    x = np.asarray(x, dtype=np.float64)
    assert x.ndim == 2
    return x


def mean(x, f=0):
    return _f64(x).mean(axis=0)


def cwmed(x, f=0):
    x = _f64(x)
    n = x.shape[0]
    s = np.sort(x, axis=0)
    if n % 2:
        return s[n // 2]
    return 0.5 * (s[n // 2 - 1] + s[n // 2])


def cwtm(x, f):
    x = _f64(x)
    n = x.shape[0]
    s = np.sort(x, axis=0)
    return s[f:n - f].mean(axis=0)


def meamed(x, f):
    """Per coordinate: the mean of the ``n - f`` values closest to the median (equidistant
    values: the lower first)."""
    x = _f64(x)
    n, d = x.shape
    med = cwmed(x)
    out = np.empty(d)
    for k in range(d):
        col = x[:, k]
        # ties in distance to the lower value (never to a worker's index)
        order = np.lexsort((col, np.abs(col - med[k])))[: n - f]
        out[k] = col[order].mean()
    return out


def _sqdist(x):
    x = _f64(x)
    n = x.shape[0]
    d2 = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            d2[i, j] = np.sum((x[i] - x[j]) ** 2)
    return d2


def _nearest(d2, i, k):
    """Indices of the ``k`` nearest rows to row ``i``: itself first, ties to lower index."""
    n = d2.shape[0]
    key = [(-1.0 if j == i else d2[i, j], j) for j in range(n)]
    return [j for _, j in sorted(key)[:k]]


def krum_scores(x, f):
    d2 = _sqdist(x)
    n = d2.shape[0]
    return np.array([sum(d2[j, i] for i in _nearest(d2, j, n - f)) for j in range(n)])


def krum(x, f):
    x = _f64(x)
    return x[int(np.argmin(krum_scores(x, f)))].copy()


def multikrum(x, f, m=None):
    x = _f64(x)
    n = x.shape[0]
    m = n - f if m is None else m
    order = np.argsort(krum_scores(x, f), kind="stable")[:m]
    return x[order].mean(axis=0)


def cge(x, f):
    """The mean of the ``n - f`` rows of least Euclidean norm (ties to the lower index)."""
    x = _f64(x)
    norms = np.array([math.sqrt(float(np.sum(r * r))) for r in x])
    return x[np.argsort(norms, kind="stable")[: x.shape[0] - f]].mean(axis=0)


def bulyan(x, f):
    """El Mhamdi et al. (2018): ``n - 2f`` rounds of Krum (score: the ``max(r - f - 2, 1)`` nearest
    other remaining rows, ``r`` remaining; ties to the lower index), each winner removed,
    then per coordinate the mean of the ``n - 4f`` picked values closest to their median."""
    x = _f64(x)
    n = x.shape[0]
    d2 = _sqdist(x)
    remaining, picked = list(range(n)), []
    for _ in range(n - 2 * f):
        k = max(len(remaining) - f - 2, 1)
        scores = [sum(sorted(d2[i, j] for j in remaining if j != i)[:k]) for i in remaining]
        best = remaining[int(np.argmin(scores))]
        picked.append(best)
        remaining.remove(best)
    return meamed(x[picked], 2 * f)


def _finite_rows(x):
    return np.array([np.isfinite(math.sqrt(float(np.sum(r * r)))) for r in x])


def dnc(x, f, *, subsets=None, filter_frac=1.0):
    """Shejwalkar and Houmansadr's DnC: for each coordinate subset (all coordinates when
    ``subsets`` is None), remove the ``floor(filter_frac f)`` rows of largest squared
    projection on the top right singular vector of the centred sub-rows (rows with a
    non-finite norm first; ties to the lower index); the mean of the rows never removed."""
    x = _f64(x)
    n, d = x.shape
    ok = _finite_rows(x)
    keep = ok.copy()
    remove = min(int(filter_frac * f), n - 1)
    for idx in subsets if subsets is not None else [np.arange(d)]:
        s = np.where(ok[:, None], x[:, idx], 0.0)
        c = s - s[ok].mean(axis=0)
        c[~ok] = 0.0
        v = np.linalg.svd(c, full_matrices=False)[2][0]
        score = np.where(ok, (c @ v) ** 2, np.inf)
        good = np.zeros(n, bool)
        good[np.argsort(score, kind="stable")[: n - remove]] = True
        keep &= good
    return x[keep].mean(axis=0) if keep.any() else np.zeros(d)


def signguard(x, f=0, *, start=0, fraction=1.0, lower=0.1, upper=3.0, quantile=0.5):
    """Xu et al.'s SignGuard (their ``signguard_multiclass``) on the coordinate block
    ``[start, start + floor(fraction d))``, with every row a mean-shift seed: the norm filter,
    the largest sign-statistics cluster, the mean of the rows in both clipped to the median
    norm (rows with a non-finite norm removed)."""
    x = _f64(x)
    n, d = x.shape
    norms = np.array([math.sqrt(float(np.sum(r * r))) for r in x])
    ok = np.isfinite(norms)
    norms = np.where(ok, norms, np.inf)
    med = float(np.median(norms))
    s1 = (norms > lower * med) & (norms < upper * med)
    w = max(1, int(fraction * d))
    block = np.where(ok[:, None], x[:, start:start + w], 0.0)
    feats = np.stack([(block > 0).mean(1), (block == 0).mean(1), (block < 0).mean(1)], 1)
    feats = feats / (np.where(ok[:, None], feats, 0.0).max(axis=0) + 1e-8)
    feats[~ok] = 1e9
    labels = _mean_shift(feats, _bandwidth(feats[ok], quantile))
    counts = [np.sum((labels == j) & ok) for j in range(n)]
    chosen = s1 & (labels == int(np.argmax(counts))) & ok
    if not chosen.any():
        return np.zeros(d)
    clipped = x[chosen] * np.minimum(1.0, med / np.where(norms[chosen] > 0, norms[chosen], 1.0))[:, None]
    return clipped.mean(axis=0)


def _bandwidth(p, quantile):
    k = max(1, int(len(p) * quantile))
    dist = np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1))
    return float(np.mean(np.sort(dist, axis=1)[:, k - 1]))


def _mean_shift(p, bw, max_iter=300):
    """Flat-kernel mean shift from every point (scikit-learn's MeanShift without bin seeding,
    cluster_all=False); centres ranked by intensity, then coordinates, both descending."""
    n = len(p)
    bw = bw * (1 + 1e-5)  # distances equal to the bandwidth in exact arithmetic count as within
    centres, intensity = [], []
    for i in range(n):
        c = p[i].copy()
        for _ in range(max_iter):
            inside = np.sqrt(((p - c) ** 2).sum(1)) <= bw
            if not inside.any():
                break
            new = p[inside].mean(0)
            moved = np.sqrt(((new - c) ** 2).sum())
            c = new
            if moved <= 1e-3 * bw:
                break
        centres.append(c)
        intensity.append(int((np.sqrt(((p - c) ** 2).sum(1)) <= bw).sum()))
    order = sorted(range(n), key=lambda i: (intensity[i], tuple(centres[i])), reverse=True)
    kept = []
    for i in order:
        if all(np.sqrt(((centres[i] - centres[j]) ** 2).sum()) > bw for j in kept):
            kept.append(i)
    dist = np.array([[np.sqrt(((q - centres[j]) ** 2).sum()) for j in kept] for q in p])
    nearest = dist.argmin(1)
    return np.where(dist.min(1) <= bw, nearest, -1)


def gm_objective(z, x):
    return float(np.sum(np.linalg.norm(_f64(x) - z, axis=1)))


def gm(x, f=0, *, tol=1e-12, max_iter=100_000):
    """Geometric median by Weiszfeld's algorithm with the Vardi-Zhang fix for iterates that land
    on a data point, in float64, until the step is below ``tol`` (relative)."""
    x = _f64(x)
    z = x.mean(axis=0)
    for _ in range(max_iter):
        r = np.linalg.norm(x - z, axis=1)
        at = r <= 1e-15 * (1.0 + np.linalg.norm(z))
        w = np.where(at, 0.0, 1.0 / np.where(at, 1.0, r))
        t = (w[:, None] * x).sum(axis=0) / w.sum()
        if at.any():
            rvec = (w[:, None] * (x - z)).sum(axis=0)
            rn = np.linalg.norm(rvec)
            gamma = 1.0 if rn == 0 else min(1.0, at.sum() / rn)
            z_new = (1 - gamma) * t + gamma * z
        else:
            z_new = t
        step = np.linalg.norm(z_new - z)
        z = z_new
        if step <= tol * (1.0 + np.linalg.norm(z)):
            break
    return z


def gm_grad_sum(x):
    """Gradient of ``sum(GM(x))`` w.r.t. ``x`` by the implicit function theorem (GM not at a
    data point): with ``r_i = ||z - x_i||``, ``u_i = (z - x_i) / r_i``,
    ``P_i = (I - u_i u_i^T) / r_i`` and ``H = sum_i P_i``, ``dz/dx_i = H^{-1} P_i``."""
    x = _f64(x)
    z = gm(x)
    n, d = x.shape
    diff = z - x
    r = np.linalg.norm(diff, axis=1)
    u = diff / r[:, None]
    p = [(np.eye(d) - np.outer(u[i], u[i])) / r[i] for i in range(n)]
    h = sum(p)
    v = np.linalg.solve(h, np.ones(d))  # H symmetric: H^{-T} 1
    return np.stack([p[i] @ v for i in range(n)])


def mda(x, f):
    """Minimum diameter averaging: mean of the first (lexicographic) ``n - f`` subset with the
    smallest largest pairwise distance."""
    x = _f64(x)
    n = x.shape[0]
    d2 = _sqdist(x)
    best, best_diam = None, np.inf
    for s in itertools.combinations(range(n), n - f):
        idx = np.array(s)
        diam = d2[np.ix_(idx, idx)].max()
        if diam < best_diam:
            best, best_diam = idx, diam
    return x[best].mean(axis=0)


def monna(x, f, idx=0):
    x = _f64(x)
    n = x.shape[0]
    return x[_nearest(_sqdist(x), idx, n - f)].mean(axis=0)


def cclip(x, f=0, *, tau=100.0, n_iter=1, init=None):
    """Centered clipping: ``v <- v + (1/n) sum_i (x_i - v) min(1, tau / ||x_i - v||)``."""
    x = _f64(x)
    n, d = x.shape
    v = np.zeros(d) if init is None else np.asarray(init, np.float64).copy()
    for _ in range(n_iter):
        diff = x - v
        r = np.linalg.norm(diff, axis=1)
        scale = np.minimum(1.0, tau / np.where(r > 0, r, 1.0))
        v = v + (diff * scale[:, None]).sum(axis=0) / n
    return v


def caf(x, f):
    """Covariance-bound agnostic filter, as described in the nnmjax ``caf`` docstring, with the
    exact top eigenpair (numpy ``eigh``) of the weighted ``d x d`` covariance; ``max tau`` over
    the rows that still have weight, so each round zeroes a row (at most ``n`` rounds)."""
    x = _f64(x)
    n = x.shape[0]
    c = np.ones(n)
    best_mu, best_lam = x.mean(axis=0), np.inf
    for _ in range(n):
        if not c.sum() > n - 2 * f:
            break
        mu = (c[:, None] * x).sum(axis=0) / c.sum()
        xc = x - mu
        cov = (c[:, None, None] * np.einsum("ni,nj->nij", xc, xc)).sum(axis=0) / c.sum()
        lams, vecs = np.linalg.eigh(cov)
        lam, v = lams[-1], vecs[:, -1]
        if lam < best_lam:
            best_mu, best_lam = mu, lam
        tau = np.where(c > 0, (xc @ v) ** 2, 0.0)
        if tau.max() <= 0:
            break
        c = np.where(tau >= tau.max(), 0.0, c * (1.0 - tau / tau.max()))
    return best_mu


def smea(x, f):
    """Mean of the first (lexicographic) ``n - f`` subset whose empirical covariance has the
    smallest top eigenvalue."""
    x = _f64(x)
    n = x.shape[0]
    best, best_lam = None, np.inf
    for s in itertools.combinations(range(n), n - f):
        idx = np.array(s)
        xc = x[idx] - x[idx].mean(axis=0)
        lam = np.linalg.eigvalsh(xc.T @ xc / len(idx))[-1]
        if lam < best_lam:
            best, best_lam = idx, lam
    return x[best].mean(axis=0)


def nnm(x, f):
    """Nearest Neighbor Mixing: each row -> the mean of its ``n - f`` nearest rows (itself
    included, ties to lower index)."""
    x = _f64(x)
    n = x.shape[0]
    d2 = _sqdist(x)
    return np.stack([x[_nearest(d2, i, n - f)].mean(axis=0) for i in range(n)])


def nnm_matrix(x, f):
    """The ``(n, n)`` mixing matrix ``W`` with ``nnm(x, f) = W @ x``."""
    x = _f64(x)
    n = x.shape[0]
    d2 = _sqdist(x)
    w = np.zeros((n, n))
    for i in range(n):
        w[i, _nearest(d2, i, n - f)] = 1.0 / (n - f)
    return w


REFERENCES = {
    "mean": mean, "cwmed": cwmed, "cwtm": cwtm, "gm": gm, "krum": krum,
    "multikrum": multikrum, "mda": mda, "meamed": meamed, "cclip": cclip,
    "monna": monna, "caf": caf, "smea": smea, "cge": cge, "bulyan": bulyan,
    "dnc": dnc, "signguard": signguard,
}


def rule(name, f, **options):
    """Reference of a composed rule name such as ``"nnm+cwtm"``."""
    *pres, last = name.split("+")
    assert all(p == "nnm" for p in pres), name

    def apply(x):
        x = _f64(x)
        for _ in pres:
            x = nnm(x, f)
        return REFERENCES[last](x, f, **options)

    return apply


def worst_case_kappa(output, x, f, slack=0.0):
    """``max_S ||F - mean_S||^2 / ((1/|S|) sum_{i in S} ||x_i - mean_S||^2)`` over all ``S`` of
    size ``n - f`` (Definition 2), in float64; a ``0/0`` term (F equals the mean of an
    identical subset) satisfies the definition for every kappa and counts as 0.

    ``slack`` is subtracted from every numerator (clamped at 0): an absolute allowance for
    float32 rounding of ``F``, which matters only for (near) zero-variance subsets."""
    x = _f64(x)
    out = np.asarray(output, np.float64)
    n = x.shape[0]
    worst = 0.0
    for s in itertools.combinations(range(n), n - f):
        rows = x[list(s)]
        centre = rows.mean(axis=0)
        num = max(np.sum((out - centre) ** 2) - slack, 0.0)
        den = np.mean(np.sum((rows - centre) ** 2, axis=1))
        if den == 0:
            ratio = 0.0 if num == 0 else np.inf
        else:
            ratio = num / den
        worst = max(worst, ratio)
    return worst


def kappa_bound(name, n, f):
    """The paper's proven coefficients (Propositions 2-5, Lemma 1), written out again."""
    r = f / (n - 2 * f)
    base = {"cwtm": 6 * f / (n - 2 * f) * (1 + r), "krum": 6 * (1 + r),
            "gm": 4 * (1 + r) ** 2, "cwmed": 4 * (1 + r) ** 2}
    if name.startswith("nnm+"):
        return 8 * f / (n - f) * (base[name[4:]] + 1)
    return base[name]


def worst_case_kappa_batch(output, x, f, slack=None):
    """:func:`worst_case_kappa` for a batch, vectorised over the ``C(n, f)`` subsets: with
    rows centred at the output, ``x_i - F``, the ratio of subset ``S`` is
    ``||m_S||^2 / (q_S - ||m_S||^2)`` where ``m_S`` is the subset mean and ``q_S`` the mean
    squared norm. ``output``: ``(B, d)``, ``x``: ``(B, n, d)``; returns ``(B,)``.
    ``slack`` (scalar or ``(B,)``) as in :func:`worst_case_kappa`."""
    x = np.asarray(x, np.float64)
    out = np.asarray(output, np.float64)
    b, n, d = x.shape
    k = n - f
    member = np.zeros((math.comb(n, k), n))
    for row, s in enumerate(itertools.combinations(range(n), k)):
        member[row, list(s)] = 1.0 / k
    xc = x - out[:, None, :]
    m = np.einsum("cn,bnd->bcd", member, xc)
    m2 = np.sum(m * m, axis=-1)
    q = np.einsum("cn,bn->bc", member, np.sum(xc * xc, axis=-1))
    den = np.maximum(q - m2, 0.0)
    if slack is not None:
        m2 = np.maximum(m2 - np.reshape(slack, (-1, 1)), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(den > 0, m2 / np.where(den > 0, den, 1.0),
                         np.where(m2 > 0, np.inf, 0.0))
    return ratio.max(axis=1)
