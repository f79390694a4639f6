"""The workers' gradients of vmapped runs: as one batch against one run after another.

``python benchmarks/gradients.py [--model byzfl_cnn_mnist] [--runs 1 5] [--repeats 7] [--out F]``

The simulator vmaps its runs, each with its own parameters; inside a run the 13 honest
workers share the parameters and each takes the gradient on its own 25 images (one
``jax.vmap``). This times ``jit(vmap over runs of vmap over workers of value_and_grad)``
two ways, compiled with :func:`nnmjax.xla_options.compiler_options`: ``batched`` (plain
``jax.vmap`` over runs, so each convolution's matmuls are batched over the runs) and
``one_by_one`` (the per-run function wrapped in ``jax.custom_batching.sequential_vmap``,
what :func:`nnmjax.sim.step.runs_one_by_one` picks on CPU). Median of ``--repeats`` calls
after one warm-up, in interleaved rounds; ``per_run_ms`` divides by the runs.

Results go to ``benchmarks/results/gradients-<backend>.json`` (or ``--out``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training import interleaved_samples, machine_info, write_record  # noqa: E402

from nnmjax.models import make_model  # noqa: E402
from nnmjax.models.losses import nll  # noqa: E402
from nnmjax.xla_options import jit  # noqa: E402

WORKERS, BATCH = 13, 25


def programs(model_name: str, runs: int):
    """``(args, {way: compiled function})`` for ``runs`` runs."""
    model = make_model(model_name, 10, (28, 28, 1))
    x = jax.random.normal(jax.random.key(1), (runs, WORKERS, BATCH, 28, 28, 1))
    y = jax.random.randint(jax.random.key(2), (runs, WORKERS, BATCH), 0, 10)
    keys = jax.random.split(jax.random.key(0), runs)
    params = jax.vmap(lambda k: model.init(k, x[0, 0])["params"])(keys)

    def loss(p, xb, yb):
        return nll(model.apply({"params": p}, xb), yb)

    workers = jax.vmap(jax.value_and_grad(loss), in_axes=(None, 0, 0))
    one_by_one = jax.custom_batching.sequential_vmap(lambda *a: workers(*a))
    return (params, x, y), {"batched": jit(jax.vmap(workers)),
                            "one_by_one": jit(jax.vmap(one_by_one))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="byzfl_cnn_mnist")
    p.add_argument("--runs", type=int, nargs="+", default=[1, 5])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=f"benchmarks/results/gradients-{jax.default_backend()}.json")
    args = p.parse_args(argv)
    rows = []
    for runs in args.runs:
        fargs, fns = programs(args.model, runs)
        for k, v in interleaved_samples(fns, fargs, args.repeats).items():
            med = statistics.median(v)
            rows.append({"runs": runs, "way": k, "median_s": med, "per_run_ms": 1e3 * med / runs,
                         "samples_s": v})
            print(f"{runs} runs  {k:10s}  {1e3 * med:8.1f} ms  {1e3 * med / runs:7.1f} ms/run",
                  flush=True)
    out = {"schema": 1, "machine": machine_info(), "argv": list(argv or sys.argv[1:]),
           "model": args.model, "workers": WORKERS, "batch": BATCH, "results": rows}
    write_record(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
