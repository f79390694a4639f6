"""Memory per run of a Fashion-MNIST D-SHB program, and the widest group that fits.

``python benchmarks/memory.py [--runs 1 5] [--code DIR ...] [--attacks A ...] [--out F]``

For each code tree (``--code``: a checkout of nnmjax, default this one; give an older
checkout to measure before a change) and each number of vmapped runs ``R``, a fresh
process builds the program of the paper's Fashion-MNIST setting (paper CNN, n = 17,
f = 4, Dirichlet alpha = 0.1, batch 25, ``nnm+cwtm`` under each of ``--attacks``, by default
optimal ALIE and plain ALIE) for ``R`` seeds, runs one chunk of 2 steps and reports its peak resident memory (``ru_maxrss``).
The memory one more run costs is the slope between the smallest and the largest ``R``;
the widest group that fits in ``M`` bytes is ``(M - base) / per_run``, ``base`` the
intercept (the process, XLA, the dataset). Also reported: what the program holds for its
runs' data (``nnmjax.sim.worker_data_bytes``, the figure the grid budgets with).
Results in a table and in JSON (``benchmarks/results/memory-<backend>.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GIB = 2 ** 30


def _child(runs: int, attack: str) -> dict:
    """Build and run one chunk of the program for ``runs`` seeds; peak RSS in bytes."""
    import resource
    import time

    import jax

    from nnmjax.experiments.config import Config
    from nnmjax.sim import build_experiment, worker_data_bytes

    config = Config(dataset="fashion_mnist", model="paper_cnn", n=17, f=4, alpha=0.1,
                    batch_size=25, steps=2, eval_every=2, seeds=tuple(range(1, runs + 1)))
    t0 = time.perf_counter()
    exp = build_experiment(config, attack, "nnm+cwtm", list(config.seeds))
    state, _ = exp.run_chunk(exp.init(), 2)
    jax.block_until_ready(state)
    data = worker_data_bytes([(config, s) for s in config.seeds], attack, exp.dataset)
    return {"runs": runs, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            * 1024, "run_data_bytes": data, "wall_s": time.perf_counter() - t0}


def _measure(code: Path, runs: int, attack: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code))
    out = subprocess.run([sys.executable, __file__, "--child", str(runs), "--attack", attack],
                         env=env,
                         capture_output=True, text=True, check=True, cwd=code)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _commit(code: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=code,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, nargs="+", default=[1, 5])
    p.add_argument("--code", type=Path, nargs="+", default=[HERE.parent])
    p.add_argument("--budgets-gib", type=float, nargs="+", default=[16.0, 80.0])
    p.add_argument("--attacks", nargs="+", default=["optimal_alie", "alie"])
    p.add_argument("--attack", default="optimal_alie", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path)
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.attack)))
        return 0
    import jax

    results = []
    for code, attack in [(c, a) for c in args.code for a in args.attacks]:
        points = [_measure(code.resolve(), r, attack) for r in sorted(args.runs)]
        lo, hi = points[0], points[-1]
        per_run = (hi["peak_rss_bytes"] - lo["peak_rss_bytes"]) / max(hi["runs"] - lo["runs"], 1)
        base = lo["peak_rss_bytes"] - per_run * lo["runs"]
        fits = {f"{m:g}": int((m * GIB - base) // per_run) if per_run > 0 else None
                for m in args.budgets_gib}
        results.append({"code": str(code), "commit": _commit(code), "attack": attack,
                        "points": points,
                        "per_run_bytes": per_run, "base_bytes": base,
                        "run_data_bytes_per_run": hi["run_data_bytes"] / hi["runs"],
                        "widest_group_fitting": fits})
    print(f"{'commit':<10} {'attack':<13} {'runs':>5} {'peak RSS (GiB)':>15} {'per run (MiB)':>14} "
          f"{'run data / run (MiB)':>21} " + " ".join(f"{'fits ' + k + ' GiB':>13}"
                                                    for k in results[0]["widest_group_fitting"]))
    for r in results:
        for pt in r["points"]:
            print(f"{r['commit']:<10} {r['attack']:<13} {pt['runs']:>5} {pt['peak_rss_bytes'] / GIB:>15.2f} "
                  f"{r['per_run_bytes'] / 2 ** 20:>14.1f} "
                  f"{r['run_data_bytes_per_run'] / 2 ** 20:>21.2f} "
                  + " ".join(f"{v:>13}" for v in r["widest_group_fitting"].values()))
    out = args.out or HERE / "results" / f"memory-{jax.default_backend()}.json"
    out.write_text(json.dumps({"machine": {"platform": platform.platform(),
                                           "processor": platform.processor(),
                                           "cpus": os.cpu_count(),
                                           "backend": jax.default_backend()},
                               "command": " ".join(["python", "benchmarks/memory.py",
                                                    *(argv or sys.argv[1:])]),
                               "results": results}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
