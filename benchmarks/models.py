"""Convolution formulations of a model: the simulator's step and a plain worker gradient.

``python benchmarks/models.py [--model resnet18] [--impls im2col xla] [--rounds 3]``

For each ``impl`` of :class:`nnmjax.models.Conv5` (the model's convolutions), two cases,
compiled first and then timed in interleaved rounds (the median is reported, with the
ratio to the first impl measured in the same run):

- **simulator**: ``run_chunk`` of ``--steps`` robust D-SHB steps of one seed
  (``n = 5`` workers, ``f = 1``, sign flipping, ``nnm+cwtm``, batch 4) on fake
  CIFAR-sized data: each run's parameters are batched over the runs axis, so XLA's CPU
  convolution meets batched kernels;
- **gradient**: ``jit(vmap(grad(loss)))`` over 5 workers x 4 images with shared
  parameters (BatchNorm on each worker's batch).

Results go to ``benchmarks/results/models-<model>-<backend>.json``.
"""
from __future__ import annotations

import argparse
import functools
import json
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


def _timed(fn) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t


def _simulator_case(model: str, impl: str, steps: int, data_dir: Path):
    import nnmjax.sim as simulate
    from nnmjax.experiments.config import load_config

    cfg = load_config(None, ["dataset='cifar10'", f"data_dir='{data_dir}'", f"model='{model}'",
                             "n=5", "f=1", "batch_size=4", f"steps={steps}", "seeds=[1]",
                             "attacks=['sign_flipping']", "rules=['nnm+cwtm']"])
    make = simulate.make_model
    simulate.make_model = functools.partial(make, impl=impl)
    try:
        exp = simulate.build_experiment(cfg, "sign_flipping", "nnm+cwtm", [1])
    finally:
        simulate.make_model = make
    state = exp.init()
    return lambda: exp.run_chunk(state, steps)[1][0]


def _gradient_case(model: str, impl: str):
    from nnmjax.models import make_model

    m = make_model(model, 10, (32, 32, 3), impl=impl)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4, 32, 32, 3)), jnp.float32)
    y = jnp.zeros((5, 4), jnp.int32)
    v = m.init(jax.random.key(0), x[0])
    stats = {k: s for k, s in v.items() if k != "params"}

    def loss(p, xx, yy):
        lp, _ = m.apply({"params": p, **stats}, xx, train=True, mutable=list(stats))
        return -jnp.mean(jnp.take_along_axis(lp, yy[:, None], 1))

    g = jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))
    return lambda: g(v["params"], x, y)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--impls", nargs="+", default=["im2col", "xla"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="steps per simulator chunk")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from fakedata import write_fake_cifar

    with tempfile.TemporaryDirectory() as tmp:
        write_fake_cifar(Path(tmp), per_batch=20, n_test=8)
        cases, compile_s = {}, {}
        for impl in args.impls:
            for case in ("simulator", "gradient"):
                fn = (_simulator_case(args.model, impl, args.steps, Path(tmp))
                      if case == "simulator" else _gradient_case(args.model, impl))
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
            print(f"{case:9s}  {impl:7s}  median {med:8.3f} s  x{med / base:5.2f}  "
                  f"(first call {compile_s[case, impl]:.1f} s)")
    out = Path(args.out or HERE / "results" / f"models-{args.model}-{jax.default_backend()}.json")
    out.write_text(json.dumps({"model": args.model, "steps": args.steps, "rounds": args.rounds,
                               "backend": jax.default_backend(), "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
