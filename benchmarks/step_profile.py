"""Where one robust D-SHB step goes: its parts timed one by one against their floors.

``python benchmarks/step_profile.py [--attacks A ...] [--rules R ...] [--repeats 7]
[--dataset fashion_mnist] [--model paper_cnn] [--out F]``

The setting is the paper's Fashion-MNIST one (paper CNN, 176,050 parameters, n = 17,
f = 4, Dirichlet alpha = 0.1, batch 25), one run. Each part of a step is jitted on its own
and timed on the run's actual state (median of ``--repeats`` calls after one warm-up,
each ended by ``jax.block_until_ready``):

- **gradients**: the 13 honest workers' losses and gradients (``nnmjax.sim.step.
  worker_grads``: minibatch gather, forward, backward);
- **clip + momentum**: per-worker clipping and worker momentum on the stacked gradients;
- **attack**: the Byzantine rows from the honest momenta (the searching attacks evaluate
  the rule in use for every candidate ``eta``);
- **aggregation**: the rule on the ``(17, d)`` rows (pre-aggregation included);
- **optimizer**: SGD with the schedule and ``optax.apply_updates``;
- **kappa-hat**: eq. (26) on the aggregate and the honest momenta;
- **step**: the whole step (``nnmjax.sim.step.step``) compiled as one program, to compare
  with the sum of its parts (XLA fuses across them);
- **chunk overhead**: ``Experiment.run_chunk(state, 1)`` less the jitted step: dispatch,
  host transfers of the loss and kappa-hat, per chunk;
- **evaluation**: ``Experiment.evaluate`` on the 10,000 test images.

Every part compiles with :func:`nnmjax.xla_options.compiler_options`, as the simulator does.

Floors: the gradients' FLOPs (XLA's cost analysis of the compiled gradient program) at the
machine's measured GEMM rate (the median rate of a jitted ``2048 x 2048`` float32 matmul,
with XLA's default options);
the aggregation's bytes (one read of the ``(17, d)`` float32 rows) at the measured
streaming rate (a jitted ``2 * x`` over a 64 MiB array, read and written). Each part is
reported in ms and as a multiple of its floor. Results in a table and in JSON
(``benchmarks/results/step-profile-<backend>.json``).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _timed(fn, *args, repeats: int) -> float:
    """Median seconds of ``fn(*args)`` over ``repeats`` calls after one warm-up call."""
    import jax

    jax.block_until_ready(fn(*args))
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def machine_rates(repeats: int) -> dict:
    """The GEMM rate (FLOP/s) and streaming rate (bytes/s) this machine sustains in XLA."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (2048, 2048), jnp.float32)
    gemm = _timed(jax.jit(lambda a: a @ a), a, repeats=repeats)
    x = jnp.ones((16 * 2 ** 20,), jnp.float32)  # 64 MiB
    stream = _timed(jax.jit(lambda x: 2.0 * x), x, repeats=repeats)
    return {"gemm_flops_per_s": 2 * 2048 ** 3 / gemm, "stream_bytes_per_s": 2 * x.nbytes / stream}


def _flops(jitted, *args) -> float | None:
    try:
        cost = jitted.lower(*args).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops")) if cost and cost.get("flops") else None
    except Exception:  # noqa: BLE001 - cost analysis is optional on some backends
        return None


def profile(config, attack: str, rule_name: str, dataset, repeats: int, rates: dict) -> dict:
    """Every part of one step of ``(attack, rule_name)`` under ``config``, in seconds."""
    import jax
    import optax

    from nnmjax.optim import transforms
    from nnmjax.optim.tree import ravel_workers
    from nnmjax.robust import attacks, metrics
    from nnmjax.sim import build_experiment
    from nnmjax.sim.step import server_chain, step, worker_grads
    from nnmjax.xla_options import jit

    exp = build_experiment(config, attack, rule_name, [1], dataset=dataset)
    state = exp.init()
    one = jax.tree.map(lambda a: a[0], state)
    data = exp.data._replace(index=jax.tree.map(lambda a: a[0], exp.data.index))
    spec, hyper, c = exp.spec, {}, config
    server, agg, opt = one.opt_state
    key = jax.random.key(2)

    grads_fn = jit(lambda p, s, d, k: worker_grads(spec, p, s, d, k, c.weight_decay))
    args = (one.params, one.model_state, data, key)
    out = {"gradients": _timed(grads_fn, *args, repeats=repeats)}
    flops = _flops(grads_fn, *args)
    _, grads, _ = grads_fn(*args)

    chain, sgd = server_chain(spec, hyper)
    plain = optax.chain(transforms.clip_by_worker_norm(c.clip) if c.clip else optax.identity(),
                        transforms.worker_momentum(c.momentum, c.honest))
    plain_state = plain.init(one.params)
    out["clip + momentum"] = _timed(jit(lambda g, s: plain.update(g, s, one.params)),
                                    grads, plain_state, repeats=repeats)
    rows, _ = jit(lambda g, s: chain.update(g, s, one.params))(grads, server)
    x, _ = ravel_workers(rows)
    honest = x[: c.honest]
    rule = exp.rule
    options = {"rule": rule} if attack in attacks.SEARCHING_ATTACKS else {}
    if attack != "none":
        fn = attacks.ATTACKS[attack]
        out["attack"] = _timed(jit(lambda h: fn(h, c.f, **options)), honest, repeats=repeats)
    out["aggregation"] = _timed(jit(lambda x: rule(x)), x, repeats=repeats)
    aggregate = rule(x)
    out["kappa-hat"] = _timed(jit(metrics.kappa_hat), aggregate, honest, repeats=repeats)
    tree_agg = jax.tree.map(lambda g: g[0], grads)

    def apply(g, s, p):
        updates, s = sgd.update(g, s, p)
        return optax.apply_updates(p, updates), s

    out["optimizer"] = _timed(jit(apply), tree_agg, opt, one.params, repeats=repeats)
    whole = jit(functools.partial(step, spec))
    out["step"] = _timed(whole, one, data, hyper, repeats=repeats)
    chunk = _timed(lambda s: exp.run_chunk(s, 1)[0], state, repeats=repeats)
    out["chunk overhead"] = max(chunk - out["step"], 0.0)
    out["evaluation"] = _timed(exp.evaluate, state, repeats=max(repeats // 2, 1))
    d = x.shape[1]
    floors = {"gradients": flops / rates["gemm_flops_per_s"] if flops else None,
              "aggregation": x.shape[0] * d * 4 / rates["stream_bytes_per_s"]}
    return {"attack": attack, "rule": rule_name, "d": d, "gradient_flops": flops,
            "seconds": out, "floors_s": floors,
            "of_floor": {k: out[k] / v for k, v in floors.items() if v}}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--attacks", nargs="+", default=["alie", "optimal_alie", "optimal_foe"])
    p.add_argument("--rules", nargs="+", default=["cwtm", "nnm+cwtm", "krum", "gm"])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--model", default="paper_cnn")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path)
    return p


PARTS = ("gradients", "clip + momentum", "attack", "aggregation", "optimizer", "kappa-hat",
         "step", "chunk overhead", "evaluation")


def format_table(results: list[dict]) -> str:
    head = f"{'attack / rule':<26}" + "".join(f"{p:>16}" for p in PARTS)
    lines = [head, "-" * len(head)]
    for r in results:
        cells = [f"{1e3 * r['seconds'][p]:>13.1f} ms" if p in r["seconds"] else f"{'-':>16}"
                 for p in PARTS]
        lines.append(f"{r['attack'] + ' / ' + r['rule']:<26}" + "".join(cells))
        of = r["of_floor"]
        lines.append(f"{'  x floor':<26}" + "".join(
            f"{of[p]:>15.1f}x" if p in of else f"{'':>16}" for p in PARTS))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    import jax

    from nnmjax.experiments.config import Config

    config = Config(dataset=args.dataset, model=args.model, n=17, f=4, alpha=0.1,
                    batch_size=25, seeds=(1,))
    dataset = config.load_data()
    rates = machine_rates(args.repeats)
    t0 = time.perf_counter()
    results = [profile(config, a, r, dataset, args.repeats, rates)
               for a in args.attacks for r in args.rules]
    print(f"GEMM {rates['gemm_flops_per_s'] / 1e9:.1f} GFLOP/s, streaming "
          f"{rates['stream_bytes_per_s'] / 1e9:.1f} GB/s")
    print(format_table(results))
    out = args.out or HERE / "results" / f"step-profile-{jax.default_backend()}.json"
    out.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "backend": jax.default_backend(),
                    "device": jax.devices()[0].device_kind, "jax": jax.__version__},
        "command": " ".join(["python", "benchmarks/step_profile.py", *(argv or sys.argv[1:])]),
        "wall_s": time.perf_counter() - t0, "rates": rates, "results": results}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
