"""The adaptive attack's cost against the optimal attacks', and the audit's wall time.

``python benchmarks/adaptive.py [--d 176050] [--rules cwtm nnm+cwtm krum gm] [--rounds 5]``

For each rule, on ``h = 13`` honest rows of dimension ``d`` (the paper CNN's 176,050
parameters by default, D-SHB's momenta at ``n = 17, f = 4``), the jitted attack call of
``optimal_alie``, ``optimal_alie(search="byzfl")``, ``optimal_foe`` and ``adaptive`` is
compiled with :func:`nnmjax.xla_options.compiler_options` (as the simulator compiles them),
then timed in interleaved rounds; the median and the ratio of each to
``optimal_alie`` measured in the same run are reported, with the damage
``||R(x) - s||^2`` each attack reaches. The attack is the part of a D-SHB step that
``adaptive`` changes (the gradients, aggregation and optimizer are the same).

``--audit`` times ``nnmjax audit`` of every rule and its ``nnm+`` variant at ``n = 17``,
``f = 1..8`` instead (the command's own defaults, ``--jobs 2``).

Results go to ``benchmarks/results/adaptive-<backend>.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent


def _attacks():
    from nnmjax.robust import attacks

    return {
        "optimal_alie": lambda h, r: attacks.optimal_alie(h, 4, rule=r),
        "optimal_alie_byzfl": lambda h, r: attacks.optimal_alie(h, 4, rule=r, search="byzfl"),
        "optimal_foe": lambda h, r: attacks.optimal_foe(h, 4, rule=r),
        "adaptive": lambda h, r: attacks.adaptive(h, 4, rule=r),
    }


def attack_costs(rules, d, rounds):
    import nnmjax
    from nnmjax.xla_options import jit

    rng = np.random.default_rng(0)
    honest = jnp.asarray(rng.normal(size=(13, d)) * 0.01 + rng.normal(size=d) * 0.01,
                         jnp.float32)
    out = {}
    for name in rules:
        rule = nnmjax.rule(name, 4)
        fns = {k: jit(lambda h, fn=fn: fn(h, rule)) for k, fn in _attacks().items()}
        damage, times = {}, {k: [] for k in fns}
        for k, fn in fns.items():
            byz = jax.block_until_ready(fn(honest))  # compile
            agg = rule(jnp.concatenate([honest, byz]))
            damage[k] = float(jnp.sum(jnp.square(agg - honest.mean(0))))
        for _ in range(rounds):
            for k, fn in fns.items():
                t = time.perf_counter()
                jax.block_until_ready(fn(honest))
                times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        out[name] = {"median_s": med, "ratio_to_optimal_alie":
                     {k: v / med["optimal_alie"] for k, v in med.items()},
                     "damage": damage, "times_s": times}
        print(f"{name:10s} " + "  ".join(f"{k} {med[k] * 1e3:8.1f} ms ({med[k] / med['optimal_alie']:.2f}x,"
                                         f" damage {damage[k]:.3g})" for k in med), flush=True)
    return out


def audit_time():
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "nnmjax.cli", "audit", "--n", "17", "--f",
                        *map(str, range(1, 9)), "--jobs", "2", "--out", "out/bench-audit"],
                       capture_output=True, text=True)
    return {"wall_s": time.perf_counter() - t, "returncode": p.returncode,
            "table": p.stdout}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=176_050)
    ap.add_argument("--rules", nargs="+", default=["cwtm", "nnm+cwtm", "krum", "gm"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--audit", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "backend": jax.default_backend(),
                          "devices": [str(d) for d in jax.devices()]},
              "command": " ".join(["python", "benchmarks/adaptive.py", *(argv or sys.argv[1:])])}
    if args.audit:
        result["audit"] = audit_time()
        print(f"audit: {result['audit']['wall_s']:.0f} s")
    else:
        result["d"] = args.d
        result["attacks"] = attack_costs(args.rules, args.d, args.rounds)
    out = Path(args.out or HERE / "results" / f"adaptive-{jax.default_backend()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
