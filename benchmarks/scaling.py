"""Simulator throughput on 1, 2, 4, 8 devices (``jax.sharding``), with the scaling curve.

``python benchmarks/scaling.py [--devices 1 2 4 8] [--steps 20] [--dataset fashion_mnist]
[--model paper_cnn] [--out F]``

For each device count ``k`` a fresh process is started with ``k`` devices (on CPU:
``XLA_FLAGS=--xla_force_host_platform_device_count=k``; on a GPU host: the first ``k``
GPUs) and runs robust D-SHB (n = 17, f = 4, Dirichlet alpha = 0.1, optimal ALIE against
``nnm+cwtm``, the paper's hyperparameters) in two layouts:

- **workers**: one seed, ``mesh = {workers = k}``: each device computes the gradients of
  ``ceil(17 / k)`` workers and aggregates ``d / k`` coordinates;
- **runs**: 8 seeds vmapped, ``mesh = {runs = k}``: each device advances ``8 / k`` seeds.

Each layout compiles once, runs one warm-up chunk, then times ``--steps`` steps
(median of ``--repeats`` chunks). Reported: worker-steps per second (``17 x steps / s``;
``x seeds`` for the runs layout) and the speed-up over one device, in a table, in JSON
(``benchmarks/results/scaling-<backend>.json``) and as a plot (``scaling-<backend>.png``).
On a CPU, the ``k`` simulated devices share the machine's cores: the curve shows what
device parallelism buys on top of XLA's own multi-threading (on the 2-core CI machine,
at most the 2 cores), not a multi-accelerator speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAYOUTS = {"workers": (1, "mesh={{workers = {k}}}"), "runs": (8, "mesh={{runs = {k}}}")}


def _child(k: int, args) -> dict:
    """Measure both layouts with the ``k`` devices of this process."""
    import jax

    from nnmjax.experiments.config import load_config
    from nnmjax.data import load_dataset
    from nnmjax.sim import build_experiment

    if len(jax.devices()) < k:
        raise SystemExit(f"need {k} devices, have {len(jax.devices())}")
    out = {"devices": k, "backend": jax.default_backend(),
           "device_kind": jax.devices()[0].device_kind}
    dataset = None
    for layout, (seeds, mesh) in LAYOUTS.items():
        config = load_config(None, [f"dataset='{args.dataset}'", f"model='{args.model}'",
                                    f"seeds={list(range(1, seeds + 1))}",
                                    mesh.format(k=k)])
        if dataset is None:
            dataset = load_dataset(config.dataset, data_dir=config.data_dir)
        exp = build_experiment(config, "optimal_alie", "nnm+cwtm", config.seeds, dataset=dataset)
        t0 = time.perf_counter()
        state = exp.init()
        state, _ = exp.run_chunk(state, args.steps)  # compile + warm-up
        jax.block_until_ready(state)
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            state, _ = exp.run_chunk(state, args.steps)
            jax.block_until_ready(state)
            times.append(time.perf_counter() - t0)
        sec = statistics.median(times)
        out[layout] = {"seeds": seeds, "steps": args.steps, "median_s": sec, "samples_s": times,
                       "warmup_s": compile_s,
                       "worker_steps_per_s": config.n * seeds * args.steps / sec}
    return out


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["devices"] for r in result["rows"]]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for layout in LAYOUTS:
        base = result["rows"][0][layout]["worker_steps_per_s"]
        ax.plot(ks, [r[layout]["worker_steps_per_s"] / base for r in result["rows"]], "o-",
                label=f"{layout} axis")
    ax.plot(ks, ks, "k:", label="linear")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("devices")
    ax.set_ylabel("throughput / one device")
    ax.set_title(f"simulator scaling ({result['rows'][0]['backend']}, "
                 f"{result['machine']['cpu_count']} cores)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--model", default="paper_cnn")
    p.add_argument("--out", default=None)
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_child(args.child, args)))
        return 0
    rows = []
    for k in args.devices:
        env = dict(os.environ)
        if os.environ.get("JAX_PLATFORMS", "cpu") == "cpu":
            env.update(JAX_PLATFORMS="cpu",
                       XLA_FLAGS=f"--xla_force_host_platform_device_count={k}")
        cmd = [sys.executable, __file__, "--child", str(k), "--steps", str(args.steps),
               "--repeats", str(args.repeats), "--dataset", args.dataset, "--model", args.model]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(res.stderr[-3000:])
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{k} devices: workers {r['workers']['worker_steps_per_s']:8.1f} worker-steps/s   "
              f"runs {r['runs']['worker_steps_per_s']:8.1f} worker-steps/s", flush=True)
    backend = rows[0]["backend"]
    result = {"schema": "nnmjax.bench.scaling/1", "rows": rows,
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpu_count": os.cpu_count(), "device_kind": rows[0]["device_kind"]},
              "config": vars(args) | {"attack": "optimal_alie", "rule": "nnm+cwtm", "n": 17,
                                      "f": 4}}
    out = Path(args.out) if args.out else HERE / "results" / f"scaling-{backend}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    _plot(result, out.with_suffix(".png"))
    print("devices  workers-axis speed-up  runs-axis speed-up")
    for r in rows:
        print(f"{r['devices']:7d}  {r['workers']['worker_steps_per_s'] / rows[0]['workers']['worker_steps_per_s']:20.2f}x"
              f"  {r['runs']['worker_steps_per_s'] / rows[0]['runs']['worker_steps_per_s']:17.2f}x")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
