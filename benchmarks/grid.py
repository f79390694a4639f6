"""Grid cost: one compiled program per (attack, rule) vmapped over seeds, against the same
runs one by one.

``python benchmarks/grid.py [--steps 100] [--dataset digits --model mlp] [--out F]``

The grid is 3 variants of CWTM (``cwtm``, ``bucketing+cwtm``, ``nnm+cwtm``) x 5 attacks
(the paper's: optimal ALIE, optimal FOE, LF, SF, Mimic) x 5 seeds, the paper's setting
otherwise (n = 17, f = 4, Dirichlet alpha = 0.1, D-SHB). Both sides start from an empty
output directory in a fresh process and include everything ``nnmjax run`` does:

- **grid**: ``run_grid`` on the config (15 compiled programs, each advancing 5 seeds);
- **one by one**: ``run_grid`` on 75 configs of one seed each (75 compiled programs).

Reports both wall times and their ratio, in a table and in JSON
(``benchmarks/results/grid-<backend>.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ATTACKS = ["optimal_alie", "optimal_foe", "label_flipping", "sign_flipping", "mimic"]
RULES = ["cwtm", "bucketing+cwtm", "nnm+cwtm"]
SEEDS = [1, 2, 3, 4, 5]


def _overrides(args, seeds):
    return [f"dataset='{args.dataset}'", f"model='{args.model}'", f"steps={args.steps}",
            f"eval_every={args.steps}", f"seeds={seeds}", f"attacks={ATTACKS}",
            f"rules={RULES}", "baseline=false", "lr=0.5"]


def _child(mode: str, args) -> float:
    """Run one side in this process; return its wall time."""
    from nnmjax.config import load_config
    from nnmjax.grid import run_grid

    out = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    if mode == "grid":
        run_grid(load_config(None, _overrides(args, SEEDS)), out, progress=False)
    else:
        base = load_config(None, _overrides(args, [SEEDS[0]]))
        configs = [load_config(None, _overrides(args, [s]) + [f"attacks=['{a}']",
                                                             f"rules=['{r}']"])
                   for a in base.attacks for r in base.rules for s in SEEDS]
        for c in configs:  # one compiled program per run
            run_grid(c, out, progress=False)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="mlp")
    p.add_argument("--out", default=None)
    p.add_argument("--child", choices=["grid", "one_by_one"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps({"wall_s": _child(args.child, args)}))
        return 0
    import jax

    walls = {}
    for mode in ("grid", "one_by_one"):
        print(f"{mode} ...", end=" ", flush=True, file=sys.stderr)
        cmd = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps),
               "--dataset", args.dataset, "--model", args.model]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        walls[mode] = json.loads(res.stdout.strip().splitlines()[-1])["wall_s"]
        print(f"{walls[mode]:.1f} s", file=sys.stderr)
    result = {
        "grid": {"attacks": ATTACKS, "rules": RULES, "seeds": SEEDS, "steps": args.steps,
                 "dataset": args.dataset, "model": args.model, "runs": 75},
        "grid_wall_s": walls["grid"], "one_by_one_wall_s": walls["one_by_one"],
        "speedup": walls["one_by_one"] / walls["grid"],
        "machine": {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
                    "cpu_count": os.cpu_count(), "processor": platform.processor(),
                    "loadavg_after": list(os.getloadavg())},
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    out = Path(args.out or HERE / "results" / f"grid-{jax.default_backend()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"| 75 runs ({args.dataset}/{args.model}, {args.steps} steps) | wall s |\n|---|---|\n"
          f"| grid: 15 programs x 5 vmapped seeds | {walls['grid']:.1f} |\n"
          f"| one by one: 75 programs | {walls['one_by_one']:.1f} |\n"
          f"| speed-up | {result['speedup']:.2f}x |\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
