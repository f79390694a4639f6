"""A grid's cost on this machine from each group's measured step cost, with the current code.

``GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmarks/grid_cost.py [CONFIG] [--steps 10]
[--set KEY=VALUE ...] [--out F]``

(the huge pages ``nnmjax run`` gives itself, :mod:`nnmjax.bench.hugepages`; the JSON records
which were in effect).

Default CONFIG: the committed Fashion-MNIST Table 2 grid
(``experiments/paper/fashion_mnist_table2.toml``: 61 groups, 305 runs of 800 steps). Every
group is planned as a fresh run would run it (an empty output directory), then
:func:`nnmjax.experiments.measure.measure_groups` builds its program and times two chunks of
``--steps`` steps and two evaluations (what ``nnmjax run CONFIG --plan --measure K``
prints). The groups' estimates add up to the grid's; the JSON also sums them per attack.

Results go to ``benchmarks/results/grid-cost-<backend>.json`` (or ``--out``).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import jax

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from training import machine_info, write_record  # noqa: E402

from nnmjax.bench import hugepages  # noqa: E402
from nnmjax.experiments.config import load_grid  # noqa: E402
from nnmjax.experiments.estimate import format_seconds  # noqa: E402
from nnmjax.experiments.grid import load_datasets, plan_grid  # noqa: E402
from nnmjax.experiments.measure import measure_groups  # noqa: E402
from nnmjax.experiments.provenance import code_info  # noqa: E402

DEFAULT_CONFIG = HERE.parent / "experiments" / "paper" / "fashion_mnist_table2.toml"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG))
    p.add_argument("--steps", type=int, default=10, help="steps per timed chunk")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, as nnmjax run --set")
    p.add_argument("--out", default=str(HERE / "results" / f"grid-cost-{jax.default_backend()}.json"))
    args = p.parse_args(argv)

    config = load_grid(args.config, args.set)
    with tempfile.TemporaryDirectory() as empty:
        groups = plan_grid(config, empty).groups
    print(f"{len(groups)} groups, {sum(len(g.runs) for g in groups)} runs", flush=True)
    start = time.perf_counter()

    def line(c):
        print(f"{c.attack:15s} {c.rule:16s} {c.runs} runs  {1e3 * c.step_s:7.1f} ms/run-step  "
              f"eval {c.eval_s:5.2f} s  compile {c.compile_s:5.1f} s  "
              f"total {format_seconds(c.total_s)}", flush=True)

    costs = measure_groups(groups, load_datasets([s for g in groups for s in g.runs]),
                           steps=args.steps, progress=line)
    total = sum(c.total_s for c in costs)
    per_attack = defaultdict(float)
    for c in costs:
        per_attack[c.attack] += c.total_s
    print(f"estimated grid wall time: {format_seconds(total)} ({total / 3600:.2f} h); "
          + ", ".join(f"{a} {v / 3600:.2f} h" for a, v in per_attack.items()))
    out = {"schema": 1, "machine": machine_info(), "hugepages": hugepages.status(),
           "code": code_info(),
           "argv": list(argv if argv is not None else sys.argv[1:]), "config": args.config,
           "steps_per_chunk": args.steps, "measure_wall_s": time.perf_counter() - start,
           "total_s": total, "per_attack_s": dict(per_attack),
           "groups": [c._asdict() for c in costs]}
    write_record(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
