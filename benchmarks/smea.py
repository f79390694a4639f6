"""SMEA's subset selection: the pruned arg-min against ``eigvalsh`` of every subset.

``python benchmarks/smea.py [--d 1000 100000] [--f 4 6 8] [--repeats 9] [--out F]``

Times ``jit(aggregators.smea)`` (power-iteration lower bounds, exact ``eigvalsh`` only on
the subsets that can still win: ``nnmjax.robust._spectral``) against the direct
formulation ``argmin_S eigvalsh(P G_S P)[-1]`` over all ``C(17, f)`` subsets, on two inputs
of ``n = 17`` rows: ``heterogeneous`` (rows of different spreads and means, as honest
gradients under heterogeneity with Byzantine rows) and ``iid`` (i.i.d. standard normal
rows, where in high dimension every subset's top eigenvalue is nearly the same and the
bounds prune least). Medians of ``--repeats`` interleaved rounds after a warm-up; the two
outputs must be identical.

Results go to ``benchmarks/results/smea-<backend>.json`` (or ``--out``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training import interleaved_samples, machine_info, write_record  # noqa: E402

from nnmjax.robust import _gram, aggregators  # noqa: E402

N = 17


def direct(x, f):
    """SMEA with ``eigvalsh`` of every subset's centred Gram matrix."""
    n, k = x.shape[0], x.shape[0] - f
    subsets = _gram.subset_indices(n, k, rule="smea", max_subsets=10**6)
    geo = _gram.Geometry(x)
    g = geo.gram[subsets[:, :, None], subsets[:, None, :]]
    centre = jnp.eye(k, dtype=x.dtype) - 1.0 / k
    top = jnp.linalg.eigvalsh(centre @ g @ centre)[:, -1]
    top = jnp.where(jnp.any(geo.far[subsets], axis=1), jnp.inf, top)
    weights = jnp.zeros((n,), x.dtype).at[subsets[jnp.argmin(top)]].set(1.0 / k)
    return _gram.combine(weights, x, far=geo.far)


def inputs(d: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    het = rng.normal(size=(N, d)) * rng.uniform(0.5, 3.0, size=(N, 1)) + rng.normal(size=(N, 1))
    return {"heterogeneous": het.astype(np.float32),
            "iid": rng.normal(size=(N, d)).astype(np.float32)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, nargs="+", default=[1000, 100_000])
    p.add_argument("--f", type=int, nargs="+", default=[4, 6, 8])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--out", default=f"benchmarks/results/smea-{jax.default_backend()}.json")
    args = p.parse_args(argv)
    rows = []
    for d in args.d:
        for kind, x in inputs(d).items():
            for f in args.f:
                fns = {"pruned": jax.jit(lambda x, f=f: aggregators.smea(x, f)),
                       "direct": jax.jit(lambda x, f=f: direct(x, f))}
                x = jnp.asarray(x)
                same = bool(jnp.array_equal(fns["pruned"](x), fns["direct"](x)))
                med = {k: statistics.median(v)
                       for k, v in interleaved_samples(fns, (x,), args.repeats).items()}
                rows.append({"n": N, "d": d, "f": f, "input": kind, "subsets": len(
                    _gram.subset_indices(N, N - f, rule="smea", max_subsets=10**6)),
                    "pruned_ms": 1e3 * med["pruned"], "direct_ms": 1e3 * med["direct"],
                    "speedup": med["direct"] / med["pruned"], "identical": same})
                r = rows[-1]
                print(f"d={d:<7} {kind:13s} f={f}  pruned {r['pruned_ms']:7.1f} ms  direct "
                      f"{r['direct_ms']:7.1f} ms  {r['speedup']:5.2f}x  identical {same}",
                      flush=True)
    out = {"schema": 1, "machine": machine_info(), "argv": list(argv or sys.argv[1:]),
           "results": rows}
    write_record(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
