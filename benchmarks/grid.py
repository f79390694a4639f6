"""Grid cost: one compiled program per (attack, rule) vmapped over seeds, against the same
runs one by one.

``python benchmarks/grid.py [--steps 100] [--dataset digits --model mlp] [--sweep] [--out F]``

The grid is 3 variants of CWTM (``cwtm``, ``bucketing+cwtm``, ``nnm+cwtm``) x 5 attacks
(the paper's: optimal ALIE, optimal FOE, LF, SF, Mimic) x 5 seeds, the paper's setting
otherwise (n = 17, f = 4, Dirichlet alpha = 0.1, D-SHB). Both sides start from an empty
output directory in a fresh process and include everything ``nnmjax run`` does:

- **grid**: ``run_grid`` on the config (15 compiled programs, each advancing 5 seeds);
- **one by one**: ``run_grid`` on 75 configs of one seed each (75 compiled programs).

With ``--sweep`` the grid also sweeps Dirichlet ``alpha`` over 0.1, 1 and 10 (225 runs) and
the comparison is between vmapping over the shape-free ``alpha`` too (15 programs of 15 runs)
and one program per ``alpha`` (45 programs of 5 seeds, how the grid ran before it vmapped
shape-free settings).

Reports both wall times and their ratio, in a table and in JSON
(``benchmarks/results/grid-<backend>.json``, ``grid-sweep-<backend>.json``).
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
ALPHAS = [0.1, 1.0, 10.0]
#: the two sides compared: (vmapped, its baseline)
MODES = {False: ("grid", "one_by_one"), True: ("sweep", "per_setting")}


def _overrides(args, seeds):
    return [f"dataset='{args.dataset}'", f"model='{args.model}'", f"steps={args.steps}",
            f"eval_every={args.steps}", f"seeds={seeds}", f"attacks={ATTACKS}",
            f"rules={RULES}", "baseline=false", "lr=0.5"]


def _child(mode: str, args) -> float:
    """Run one side in this process; return its wall time."""
    from nnmjax.experiments.config import load_config
    from nnmjax.experiments.grid import run_grid

    out = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    if mode in ("sweep", "per_setting"):
        configs = [load_config(None, _overrides(args, SEEDS) + [f"alpha={a}"]) for a in ALPHAS]
        for group in ([configs] if mode == "sweep" else [[c] for c in configs]):
            run_grid(group, out, progress=False)
    elif mode == "grid":
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
    p.add_argument("--sweep", action="store_true",
                   help="compare vmapping over alpha in {0.1, 1, 10} with one program per alpha")
    p.add_argument("--child", choices=[m for pair in MODES.values() for m in pair],
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps({"wall_s": _child(args.child, args)}))
        return 0
    import jax

    walls = {}
    fast, slow = MODES[args.sweep]
    for mode in (fast, slow):
        print(f"{mode} ...", end=" ", flush=True, file=sys.stderr)
        cmd = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps),
               "--dataset", args.dataset, "--model", args.model]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        walls[mode] = json.loads(res.stdout.strip().splitlines()[-1])["wall_s"]
        print(f"{walls[mode]:.1f} s", file=sys.stderr)
    runs = 75 * (len(ALPHAS) if args.sweep else 1)
    result = {
        "grid": {"attacks": ATTACKS, "rules": RULES, "seeds": SEEDS, "steps": args.steps,
                 "dataset": args.dataset, "model": args.model, "runs": runs,
                 **({"alphas": ALPHAS} if args.sweep else {})},
        f"{fast}_wall_s": walls[fast], f"{slow}_wall_s": walls[slow],
        "speedup": walls[slow] / walls[fast],
        "machine": {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
                    "cpu_count": os.cpu_count(), "processor": platform.processor(),
                    "loadavg_after": list(os.getloadavg())},
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    name = "grid-sweep" if args.sweep else "grid"
    out = Path(args.out or HERE / "results" / f"{name}-{jax.default_backend()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    rows = ({"sweep": "sweep: 15 programs x 15 vmapped (alpha, seed) runs",
             "per_setting": "one program per alpha: 45 programs x 5 vmapped seeds"}
            if args.sweep else {"grid": "grid: 15 programs x 5 vmapped seeds",
                                "one_by_one": "one by one: 75 programs"})
    print(f"| {runs} runs ({args.dataset}/{args.model}, {args.steps} steps) | wall s |\n|---|---|\n"
          + "".join(f"| {rows[m]} | {walls[m]:.1f} |\n" for m in (fast, slow))
          + f"| speed-up | {result['speedup']:.2f}x |\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
