"""The optimal attacks' search: one instance against vmapped instances.

``python benchmarks/search.py [--rules nnm+cwtm cwtm krum] [--h 13] [--d 176050] [--f 4]
[--seeds 5] [--repeats 5] [--out F]``

A grid's runs are vmapped, so every run's attack searches ``eta`` under ``jax.vmap``. For
each rule, search (``"grid"``: 241 evaluations; ``"byzfl"``: ByzFL's 20) and attack
(``optimal_alie``, ``optimal_foe``), this times the jitted attack on one ``(h, d)`` honest
matrix (``one``) and on ``--seeds`` of them vmapped two ways: as the library runs them
(``library``: one after another where ``attacks._sequential_search`` says so, else as one
batch) and always as one batch (``batched``: the same attack traced with
``attacks._sequential_search`` answering no). Median of ``--repeats`` calls each, compile
excluded; ``*_ratio`` is a vmapped call's cost per instance against one instance's (below
1 the vmapped call is cheaper per instance). The honest rows are Gaussian with a common
offset, the scale of momenta.

Results go to ``benchmarks/results/search-<backend>.json`` (or ``--out``) with the machine,
the library's commit and every sample. Run it with ``PYTHONPATH`` pointing at another
checkout to time that checkout's library.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import nnmjax
from nnmjax.robust import attacks

ATTACKS = {"optimal_alie": attacks.optimal_alie, "optimal_foe": attacks.optimal_foe}
def _batched(fn):
    """``jit(vmap(fn))`` traced with the search always batched (``attacks._sequential_search``
    answering no while it traces), whatever the library would pick."""
    compiled = jax.jit(jax.vmap(fn))

    def call(batch):
        chooser = attacks._sequential_search
        attacks._sequential_search = lambda *_: False
        try:
            return compiled(batch)
        finally:
            attacks._sequential_search = chooser

    return call


def _median_ms(fn, arg, repeats):
    jax.block_until_ready(fn(arg))  # compile and warm up
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(arg))
        samples.append(1e3 * (time.perf_counter() - t))
    return statistics.median(samples), samples


def _commit(path):
    try:
        return subprocess.run(["git", "-C", path, "describe", "--always", "--dirty"],
                              check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rules", nargs="+", default=["nnm+cwtm", "cwtm", "krum"])
    p.add_argument("--searches", nargs="+", default=["grid", "byzfl"])
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    p.add_argument("--h", type=int, default=13, help="honest rows (default 13)")
    p.add_argument("--d", type=int, default=176050, help="dimension (default 176050)")
    p.add_argument("--f", type=int, default=4, help="Byzantine rows (default 4)")
    p.add_argument("--seeds", type=int, default=5, help="vmapped instances (default 5)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case (default 5)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    batch = (0.01 * rng.normal(size=(args.seeds, args.h, args.d))
             + 0.01 * rng.normal(size=(args.seeds, 1, args.d))).astype(np.float32)
    batch = jnp.asarray(batch)
    library = os.path.dirname(os.path.dirname(os.path.abspath(nnmjax.__file__)))
    records = []
    for name in args.rules:
        rule = nnmjax.rule(name, args.f)
        for attack in args.attacks:
            for search in args.searches:
                def one(h, attack=attack, search=search, rule=rule):
                    return ATTACKS[attack](h, args.f, rule=rule, search=search)

                cases = {"one": (jax.jit(one), batch[0]),
                         "library": (jax.jit(jax.vmap(one)), batch),
                         "batched": (_batched(one), batch)}
                sequential = attacks._sequential_search(rule, search)
                rec = {"rule": name, "attack": attack, "search": search,
                       "sequential": sequential}
                for case, (fn, arg) in cases.items():
                    rec[f"{case}_ms"], rec[f"samples_{case}_ms"] = _median_ms(fn, arg,
                                                                              args.repeats)
                for case in ("library", "batched"):
                    rec[f"{case}_ratio"] = rec[f"{case}_ms"] / args.seeds / rec["one_ms"]
                records.append(rec)
                print(f"{name:10s} {attack:13s} {search:6s} one {rec['one_ms']:8.1f} ms  "
                      f"x{args.seeds}: library {rec['library_ms']:8.1f} ms "
                      f"({rec['library_ratio']:.2f}x{', sequential' if rec['sequential'] else ''})"
                      f"  batched {rec['batched_ms']:8.1f} ms ({rec['batched_ratio']:.2f}x)",
                      flush=True)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"search-{jax.default_backend()}.json")
    meta = {"argv": sys.argv[1:], "library": library, "commit": _commit(library),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "cpu_count": os.cpu_count(), "load": os.getloadavg(),
            "shape": [args.h, args.d], "f": args.f, "seeds": args.seeds}
    with open(out, "w") as fh:
        json.dump({"machine": meta, "records": records}, fh, indent=1)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
