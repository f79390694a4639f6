"""Convolution formulations of a model: the simulator's step and a plain worker gradient.

``python benchmarks/models.py [--model paper_cnn] [--impls xla_cpu im2col xla] [--n 17]
[--batch 25] [--steps 2] [--rounds 3]``

For each ``impl`` of :class:`nnmjax.models.Conv5` (the model's convolutions), two cases,
compiled first and then timed in interleaved rounds (the median is reported, with the
ratio to the first impl measured in the same run):

- **simulator**: ``run_chunk`` of ``--steps`` robust D-SHB steps of one seed (``--n``
  workers, ``f = (n - 1) // 4``, sign flipping, ``nnm+cwtm``, ``--batch`` images per
  worker) on fake data of the model's image size (Fashion-MNIST's for ``paper_cnn`` and
  ``byzfl_cnn_mnist``, CIFAR-10's otherwise): the steps run inside a ``lax.scan``;
- **gradient**: ``jit(vmap(grad(loss)))`` over the ``n - f`` honest workers' batches with
  shared parameters (BatchNorm on each worker's batch), outside any loop.

Results go to ``benchmarks/results/models-<model>-<backend>.json``.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nnmjax.xla_options import jit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from training import machine_info, write_record  # noqa: E402


def _timed(fn) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t


MNIST_MODELS = ("paper_cnn", "byzfl_cnn_mnist")


def _image_shape(model: str) -> tuple:
    return (28, 28, 1) if model in MNIST_MODELS else (32, 32, 3)


def _simulator_case(model: str, impl: str, steps: int, data_dir: Path, n: int, batch: int):
    import nnmjax.sim as simulate
    import nnmjax.sim.experiment as experiment
    from nnmjax.experiments.config import load_config

    dataset = "fashion_mnist" if model in MNIST_MODELS else "cifar10"
    cfg = load_config(None, [f"dataset='{dataset}'", f"data_dir='{data_dir}'",
                             f"model='{model}'", f"n={n}", f"f={(n - 1) // 4}",
                             f"batch_size={batch}", f"steps={steps}", "seeds=[1]",
                             "attacks=['sign_flipping']", "rules=['nnm+cwtm']"])
    make = experiment.make_model
    experiment.make_model = functools.partial(make, impl=impl)
    try:
        exp = simulate.build_experiment(cfg, "sign_flipping", "nnm+cwtm", [1])
    finally:
        experiment.make_model = make
    state = exp.init()
    return lambda: exp.run_chunk(state, steps)[1][0]


def _gradient_case(model: str, impl: str, workers: int, batch: int):
    from nnmjax.models import make_model

    shape = _image_shape(model)
    m = make_model(model, 10, shape, impl=impl)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(workers, batch) + shape),
                    jnp.float32)
    y = jnp.zeros((workers, batch), jnp.int32)
    v = m.init(jax.random.key(0), x[0])
    stats = {k: s for k, s in v.items() if k != "params"}

    def loss(p, xx, yy):
        lp, _ = m.apply({"params": p, **stats}, xx, train=True, mutable=list(stats),
                        rngs={"dropout": jax.random.key(0)})
        return -jnp.mean(jnp.take_along_axis(lp, yy[:, None], 1))

    g = jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))
    return lambda: g(v["params"], x, y)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="paper_cnn")
    p.add_argument("--impls", nargs="+", default=["xla_cpu", "im2col", "xla"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="steps per simulator chunk")
    p.add_argument("--n", type=int, default=17, help="workers (f = (n - 1) // 4)")
    p.add_argument("--batch", type=int, default=25, help="images per worker")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from fakedata import write_fake_cifar, write_fake_mnist

    honest = args.n - (args.n - 1) // 4
    with tempfile.TemporaryDirectory() as tmp:
        if args.model in MNIST_MODELS:
            write_fake_mnist(Path(tmp), n_train=20 * args.n * args.batch, n_test=8)
        else:
            write_fake_cifar(Path(tmp), per_batch=4 * args.n * args.batch, n_test=8)
        cases, compile_s = {}, {}
        for impl in args.impls:
            for case in ("simulator", "gradient"):
                fn = (_simulator_case(args.model, impl, args.steps, Path(tmp), args.n,
                                      args.batch)
                      if case == "simulator" else
                      _gradient_case(args.model, impl, honest, args.batch))
                compile_s[case, impl] = _timed(fn)
                cases[case, impl] = fn
        samples = {k: [] for k in cases}
        for _ in range(args.rounds):
            for k, fn in cases.items():
                samples[k].append(_timed(fn))
    rows = []
    for case in ("simulator", "gradient"):
        base = statistics.median(samples[case, args.impls[0]])
        for impl in args.impls:
            med = statistics.median(samples[case, impl])
            rows.append({"case": case, "impl": impl, "median_s": med, "ratio": med / base,
                         "first_call_s": compile_s[case, impl], "samples_s": samples[case, impl]})
            print(f"{case:9s}  {impl:8s}  median {med:8.3f} s  x{med / base:5.2f}  "
                  f"(first call {compile_s[case, impl]:.1f} s)")
    out = Path(args.out or HERE / "results" / f"models-{args.model}-{jax.default_backend()}.json")
    write_record(out, {"schema": 1, "machine": machine_info(), "argv": list(argv or sys.argv[1:]),
                       "model": args.model, "steps": args.steps, "rounds": args.rounds,
                       "n": args.n, "batch": args.batch, "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
