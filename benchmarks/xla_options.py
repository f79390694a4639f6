"""XLA's CPU kernels with and without the YNNPACK fusions (:mod:`nnmjax.xla_options`).

``python benchmarks/xla_options.py [--repeats 9] [--out F]``

Each case is compiled twice in this process, with XLA's default options (``default``) and
with :data:`nnmjax.xla_options.CPU_OPTIONS` (``nnmjax``), and timed in interleaved rounds;
the median of ``--repeats`` calls each, compile excluded, and ``ratio = default / nnmjax``.
The cases are the reductions a robust step makes over ``(17, 431080)`` worker rows
(ByzFL's ``cnn_mnist`` size), the Gram matrix of those rows, a ``2048 x 2048`` matmul,
the 13 honest workers' gradients of ``byzfl_cnn_mnist`` on 25 images each (one vmap, the
model's default convolutions) and NNM + CWTM.

Results go to ``benchmarks/results/xla-options-<backend>.json`` (or ``--out``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training import interleaved_samples, machine_info, write_record  # noqa: E402

from nnmjax import xla_options  # noqa: E402
from nnmjax.aggregators import cwtm  # noqa: E402
from nnmjax.models import make_model  # noqa: E402
from nnmjax.models.losses import nll  # noqa: E402
from nnmjax.preaggregators import nnm  # noqa: E402


def cases() -> dict:
    """``name -> (fn, args)``."""
    z = jax.random.normal(jax.random.key(0), (17, 431080)) + 1.0
    a = jax.random.normal(jax.random.key(1), (2048, 2048))
    model = make_model("byzfl_cnn_mnist", 10, (28, 28, 1))
    x = jax.random.normal(jax.random.key(2), (13, 25, 28, 28, 1))
    y = jax.random.randint(jax.random.key(3), (13, 25), 0, 10)
    params = model.init(jax.random.key(4), x[0])["params"]

    def loss(p, xb, yb):
        return nll(model.apply({"params": p}, xb), yb)

    grads = jax.vmap(jax.value_and_grad(loss), in_axes=(None, 0, 0))
    return {
        "x.sum(0) (17, 431080)": (lambda z: z.sum(0), (z,)),
        "x.std(0) (17, 431080)": (lambda z: z.std(0), (z,)),
        "x @ x.T (17, 431080)": (lambda z: z @ z.T, (z,)),
        "matmul 2048 x 2048": (lambda a: a @ a, (a,)),
        "13 workers' gradients, byzfl_cnn_mnist": (grads, (params, x, y)),
        "nnm + cwtm (17, 431080)": (lambda z: cwtm(nnm(z, 4), 4), (z,)),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--out", default=f"benchmarks/results/xla-options-{jax.default_backend()}.json")
    args = p.parse_args(argv)
    options = {"default": None, "nnmjax": xla_options.compiler_options()}
    rows = []
    for name, (fn, fargs) in cases().items():
        compiled = {k: jax.jit(fn, compiler_options=o).lower(*fargs).compile()
                    for k, o in options.items()}
        samples = interleaved_samples(compiled, fargs, args.repeats)
        med = {k: statistics.median(v) for k, v in samples.items()}
        rows.append({"case": name, "median_s": med, "ratio": med["default"] / med["nnmjax"],
                     "samples_s": samples})
        print(f"{name:42s} default {1e3 * med['default']:8.1f} ms  nnmjax "
              f"{1e3 * med['nnmjax']:8.1f} ms  x{med['default'] / med['nnmjax']:.2f}", flush=True)
    out = {"schema": 1, "machine": machine_info(), "argv": list(argv or sys.argv[1:]),
           "options": options, "results": rows}
    write_record(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
