"""The ``nnmjax`` console script.

Each subcommand lives in its own ``_add_<name>(subparsers)`` function that declares its
options and sets ``func`` (called with the parsed arguments, returning an exit status);
:func:`main` only builds the parser and dispatches. Add a subcommand by writing its
``_add_*`` function and listing it in :data:`SUBCOMMANDS`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

__all__ = ["main", "entry", "build_parser"]

#: Subcommands re-executed with huge pages (:mod:`nnmjax.bench.hugepages`): those that train.
#: Not ``bench``: it times nnmjax against ByzFL as a plain Python script would run them (set
#: ``GLIBC_TUNABLES`` yourself to time both with huge pages; the JSON records it).
HUGEPAGE_COMMANDS = ("run", "check")


# ---------------------------------------------------------------------- nnmjax bench

def _add_bench(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="time the aggregation rules against a streaming pass, NumPy and ByzFL",
        description=(
            "Time every aggregation rule (and nnm+<rule>) jitted, compared with one "
            "streaming pass over x (jnp.sum, x.sum), a straightforward NumPy version and "
            "ByzFL's faster backend (NumPy or torch inputs) when byzfl is importable. "
            "Prints a table and writes every raw timing and the machine to JSON."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  nnmjax bench --quick                     # writes out/bench/aggregators-cpu.json\n"
               "  nnmjax bench --cases 17:1e6:4 --rules cwtm nnm+cwtm --repeats 9\n"
               "  nnmjax bench --out benchmarks/results/aggregators-cpu.json   # the reference")
    p.add_argument("--quick", action="store_true",
                   help="only the cases 17:1e5:4 and 17:1e6:4 and a few rules")
    p.add_argument("--cases", nargs="+", metavar="N:D:F", default=None,
                   help="cases to run, e.g. 17:1e6:4 100:1e5:20 "
                        "(default: 17:1e5:4 17:1e6:4 100:1e5:20 1000:1e4:200)")
    p.add_argument("--rules", nargs="+", metavar="RULE", default=None,
                   help="rules to time (also comma-separated), e.g. cwtm nnm nnm+cwtm "
                        "(default: every aggregator, nnm, and nnm+<aggregator>)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed calls per rule after one warm-up call; the median is reported "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random normal data (default: %(default)s)")
    p.add_argument("--out", default=None, metavar="PATH.json",
                   help="JSON output (default: out/bench/aggregators-<platform>.json; the "
                        "repository's reference figures are benchmarks/results/*.json)")
    p.add_argument("--no-byzfl", dest="byzfl", action="store_false",
                   help="do not time ByzFL even if it is installed")
    p.add_argument("--no-numpy", dest="numpy", action="store_false",
                   help="do not time the NumPy baselines")
    p.add_argument("--budget", type=float, default=5.0, metavar="S",
                   help="seconds of timed calls per rule and implementation; stop "
                        "repeating past it (default: %(default)s)")
    p.add_argument("--single-call", type=float, default=3.0, metavar="S",
                   help="a warm-up call longer than this is the only sample "
                        "(default: %(default)s)")
    p.add_argument("--call-timeout", type=float, default=20.0, metavar="S",
                   help="kill and record as a timeout any single call running longer "
                        "(default: %(default)s)")
    p.add_argument("--compile-timeout", type=float, default=300.0, metavar="S",
                   help="kill and record as a timeout a compilation running longer "
                        "(default: %(default)s)")
    p.add_argument("--in-process", dest="isolate", action="store_false",
                   help="run in this process (no worker process, so no timeouts)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=_run_bench)


def _split(items: Sequence[str] | None) -> list[str] | None:
    if items is None:
        return None
    return [s for item in items for s in item.split(",") if s.strip()]


def _run_bench(args) -> int:
    from nnmjax import bench

    try:
        if args.cases is not None:
            cases = [bench.parse_case(c) for c in args.cases]
        else:
            cases = list(bench.QUICK_CASES if args.quick else bench.DEFAULT_CASES)
        rules = _split(args.rules)
        if rules is None and args.quick:
            rules = list(bench.QUICK_RULES)
        cfg = bench.BenchConfig(
            cases=cases, rules=rules, repeats=args.repeats, seed=args.seed,
            byzfl=args.byzfl, numpy=args.numpy, isolate=args.isolate,
            budget_s=args.budget, single_call_s=args.single_call,
            call_timeout_s=args.call_timeout, compile_timeout_s=args.compile_timeout)
        if args.out is not None:
            from pathlib import Path

            from nnmjax.experiments.results import check_writable

            check_writable(Path(args.out).parent)
    except ValueError as e:
        print(f"nnmjax bench: error: {e}", file=sys.stderr)
        return 2

    state = {"out": args.out}

    def save(result):
        if state["out"] is None:  # the platform is known once the worker has reported
            backend = (result.get("machine") or {}).get("jax_backend", "unknown")
            state["out"] = f"out/bench/aggregators-{backend}.json"
        bench.write_json(result, state["out"])

    try:
        result = bench.run(cfg, verbose=not args.quiet, on_update=save)
    except ValueError as e:
        print(f"nnmjax bench: error: {e}", file=sys.stderr)
        return 2
    m = result["machine"]
    print(f"# {m['processor'] or m['machine']}, {m['cpu_count']} CPUs, "
          f"jax {m['jax']} ({m['jax_backend']}: {m['device_kind']}), "
          f"byzfl {m['byzfl'] or 'not timed'}, {m['date']}")
    print(bench.format_table(result))
    if result.get("targets") or result.get("floor_targets"):
        print("\nTargets (speed-up over ByzFL's faster backend; multiple of the rule's floor):")
        print(bench.format_targets(result))
    print(f"\nwrote {state['out']} ({result['wall_s']:.0f} s)")
    return 0



# ----------------------------------------------------------- nnmjax run / table / plot

def _add_grid_arguments(p) -> None:
    """The config, ``--set`` and ``--out`` arguments shared by ``run`` and ``check``."""
    p.add_argument("config", nargs="?", default=None, help="TOML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key with a TOML literal, e.g. --set steps=200")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="the run directory (default: out/<config file's stem>, "
                        "out/quickstart without a config)")


def default_out(config: str | None) -> str:
    """``out/<stem of the config file>``, ``out/quickstart`` for the built-in quickstart."""
    from pathlib import Path

    return f"out/{Path(config).stem}" if config else "out/quickstart"


def _config_help() -> str:
    """The epilog of ``run`` and ``check``: examples, every config key with its default,
    and the names rules and attacks take."""
    import dataclasses
    import textwrap

    from nnmjax.robust import aggregators, preaggregators
    from nnmjax.experiments.config import ATTACK_NAMES, Config

    keys = ", ".join(f"{f.name}={f.default!r}" if not isinstance(f.default, tuple) or f.default
                     else f.name for f in dataclasses.fields(Config))
    wrap = lambda text: textwrap.fill(text, 88, initial_indent="  ", subsequent_indent="  ",
                                      break_on_hyphens=False)
    return "\n".join([
        "examples:",
        "  nnmjax run                                   # the quickstart, into out/quickstart",
        "  nnmjax run experiments/paper/fashion_mnist.toml --plan   # what it would run, how long",
        "  nnmjax run my.toml --set steps=200 --set 'rules=[\"nnm+cwtm\", \"krum\"]'",
        "  nnmjax run my.toml --shard 0/2 & nnmjax run my.toml --shard 1/2   # one directory",
        "",
        "Ctrl-C (or SIGTERM) stops at the end of the running chunk, saves the running group's",
        "checkpoint and says how to resume; the same command resumes. A second Ctrl-C quits",
        "at once (finished runs are kept).",
        "",
        "config keys (TOML file or --set KEY=VALUE; defaults shown):",
        wrap(keys),
        "attacks:",
        wrap(", ".join(ATTACK_NAMES)),
        "rules: pre+...+aggregator, e.g. cwtm, nnm+cwtm, bucketing+krum; aggregators:",
        wrap(", ".join(sorted(aggregators.AGGREGATORS)) + "; pre-aggregators: "
             + ", ".join(sorted(preaggregators.PREAGGREGATORS))),
    ])


def _add_run(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="run every (attack, rule, seed) of a config (default: the digits quickstart)",
        description="Run a config's grid: each (attack, rule) is compiled once and vmapped over "
                    "its seeds; finished runs are skipped. Without CONFIG, the quickstart on the "
                    "embedded digits data.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_config_help())
    _add_grid_arguments(p)
    p.add_argument("--shard", default="0/1", metavar="I/K",
                   help="run only the I-th of K interleaved slices of the grid (0-based), so K "
                        "processes can share one --out directory (default: %(default)s)")
    p.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                   help="save a running group's state under DIR/partial at most this often, "
                        "so an interrupted run resumes mid-group; 0 saves at every evaluation "
                        "point, a negative value never (default: %(default)s)")
    p.add_argument("--plan", action="store_true",
                   help="list the compiled groups a run would run, in order (and where a "
                        "checkpoint resumes one), then exit without running anything")
    p.add_argument("--measure", type=int, default=None, metavar="K",
                   help="with --plan: build each group's program and time two chunks of K "
                        "steps and two evaluations, then estimate from these measured costs "
                        "instead of the directory's records (each group compiles: minutes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", dest="plots", action="store_false",
                   help="write the records, table and summary but no figures (draw them later "
                        "with: nnmjax plot DIR)")
    p.add_argument("--jobs", type=int, default=1, metavar="K",
                   help="run the grid in K worker processes on this machine (each its "
                        "interleaved slice of the groups, logs under DIR/logs), so that one "
                        "compiles while the others run: for a many-core host with an "
                        "accelerator (default: %(default)s)")
    p.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                   help="join a multi-process run through jax.distributed (with "
                        "--num-processes and --process-id); each process then runs its own "
                        "slice of the grid into the shared --out directory, or, when the "
                        "config's mesh needs every process's devices, its share of each run")
    p.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="with --coordinator: how many processes join the run")
    p.add_argument("--process-id", type=int, default=None, metavar="I",
                   help="with --coordinator: this process's index, 0 ... N-1 (0 writes the "
                        "table and plots)")
    p.set_defaults(func=_run_run)


def _add_check(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="re-run finished runs of a config and compare them with their records",
        description="Rebuild finished groups of a config's grid exactly as `nnmjax run` compiled "
                    "them (same runs vmapped together, same chunks), run their first STEPS "
                    "steps and compare every run's loss, kappa-hat and test accuracy with its "
                    "record, bit for bit. Exit status 1 when any run differs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  nnmjax check                          # the quickstart's records in out/quickstart\n"
               "  nnmjax check experiments/paper/fashion_mnist.toml --out "
               "experiments/results/fashion_mnist_table2 \\\n"
               "      --attack sign_flipping --rule nnm+cwtm --steps 50")
    _add_grid_arguments(p)
    p.add_argument("--attack", default=None, help="only the groups of this attack")
    p.add_argument("--rule", default=None, help="only the groups of this rule")
    p.add_argument("--steps", type=int, default=None,
                   help="steps to re-run, an evaluation point (default: the first one)")
    p.set_defaults(func=_run_check)


def _run_check(args) -> int:
    from nnmjax.experiments.config import load_grid
    from nnmjax.experiments.reproduce import check_grid

    args.out = args.out or default_out(args.config)
    config = load_grid(args.config, args.overrides)
    checks = check_grid(config, args.out, attack=args.attack, rule=args.rule, steps=args.steps)
    print("| attack / rule | seed | steps | result | loss (rel) | kappa-hat | test acc | "
          "record's commit | same code |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in checks:
        result = "bit for bit" if c.equal else "**differs**"
        same = {True: "yes", False: "no", None: "?"}[c.same_code]
        print(f"| {c.attack} / {c.rule} | {c.seed} | {c.steps} | {result} | {c.loss_rel:.2g} | "
              f"{c.kappa_abs:.2g} | {c.acc_abs:.2g} | {(c.record_commit or '?')[:10]} | {same} |")
    equal = sum(c.equal for c in checks)
    print(f"\n{equal} of {len(checks)} runs reproduce their records bit for bit.")
    if any(not c.equal and c.same_code is not True for c in checks):
        print("Differing records written by other code (or not saying which, same code '?') "
              "may differ by float rounding that training amplifies; re-run at their commit.")
    return 0 if equal == len(checks) else 1


def _print_plan(config, out_dir, shard, *, measure: int | None = None, stop=None) -> int:
    from nnmjax.experiments import estimate, results
    from nnmjax.experiments.grid import plan_grid

    if measure is not None and measure < 1:
        raise ValueError(f"--measure must be >= 1 steps; got {measure}")
    done, groups, missing_data = plan_grid(config, out_dir, shard=shard)
    if measure is not None:
        return _print_measured_plan(groups, len(done), missing_data, measure, stop)
    runs = sum(len(g.runs) for g in groups)
    left = sum(len(g.runs) * (g.steps - g.resume_step) for g in groups)
    seconds, how = estimate.plan_seconds(groups, results.load_records(out_dir))
    print(f"{runs} runs in {len(groups)} compiled groups to run ({len(done)} already done), "
          f"{left:,} run-steps left:")
    for g in groups:
        resume = ""
        if g.checkpoint:
            resume = (f", resumes at step {g.resume_step}" if g.resume_step else
                      f", restarts (its checkpoint at step {g.checkpoint[0]} is from other code)")
        print(f"  {g.attack} / {g.rule}: {len(g.runs)} runs x {g.steps} steps{resume}")
    if groups:
        print(f"\nEstimated wall time: {estimate.format_seconds(seconds)} ({how})"
              if seconds is not None else f"\nEstimated wall time: {how}")
    if missing_data:
        print(f"\nThe run needs data not found here, so these groups are not split by memory "
              f"(a run splits a group whose worker data exceed its budget):\n{missing_data}")
    return 0


def _print_measured_plan(groups, done: int, missing_data: str | None, steps: int,
                         stop=None) -> int:
    """``--plan --measure K``: time each group's program, a line per group, then the total.
    A signal (``stop``) ends it after the group being measured, with one line and
    ``128 + signal``."""
    from nnmjax.experiments import estimate
    from nnmjax.experiments.grid import load_datasets
    from nnmjax.experiments.interrupt import Stopped, exit_status
    from nnmjax.experiments.measure import measure_groups

    if missing_data:
        raise ValueError(f"--measure runs the groups' programs, which need their data:\n"
                         f"{missing_data}")
    runs = sum(len(g.runs) for g in groups)
    print(f"{runs} runs in {len(groups)} compiled groups to run ({done} already done); "
          f"timing each group's program for 2 x {steps} steps:")
    print(f"  {'attack / rule':34s} {'runs':>4s} {'ms/run-step':>11s} {'eval s':>7s} "
          f"{'compile s':>9s} {'total':>8s}")

    measured = []

    def line(c):
        measured.append(c)
        print(f"  {c.attack + ' / ' + c.rule:34s} {c.runs:4d} {1e3 * c.step_s:11.1f} "
              f"{c.eval_s:7.2f} {c.compile_s:9.1f} {estimate.format_seconds(c.total_s):>8s}",
              flush=True)
        if stop is not None:
            stop.check()

    try:
        costs = measure_groups(groups, load_datasets([s for g in groups for s in g.runs]),
                               steps=steps, progress=line)
    except Stopped as e:
        print(f"nnmjax run: stopped by {e} after measuring {len(measured)} of {len(groups)} "
              f"groups; --plan writes nothing", file=sys.stderr)
        return exit_status(e.signum)
    if costs:
        total = sum(c.total_s for c in costs)
        print(f"\nEstimated wall time: {estimate.format_seconds(total)} (measured now: "
              f"{sum(c.compile_s for c in costs) / 60:.0f} min of compilation, the rest "
              f"run-steps and evaluations)")
    return 0


def _report(out_dir, records, *, plots: bool = True) -> None:
    """Write the table (Markdown and CSV) and, with ``plots``, the figures; print the table."""
    from pathlib import Path

    from nnmjax.experiments import table

    out_dir = Path(out_dir)
    md = table.format_markdown(records)
    (out_dir / "table.md").write_text(md + "\n")
    table.write_csv(records, out_dir / "table.csv")
    where = f"records: {out_dir / 'runs'}  summary: {out_dir / 'summary.csv'}"
    if plots:
        from nnmjax.experiments import plots as figures

        figures.plot_all(records, out_dir / "plots")
        where += f"  plots: {out_dir / 'plots'}"
    print(table.format_text(records))  # each table's title line says what its cells are
    print(f"\n{where}")


def _run_run(args) -> int:
    from nnmjax.experiments.interrupt import Stopped, stop_on_signals

    i, sep, k = args.shard.partition("/")
    if not (sep and i.isdigit() and k.isdigit() and int(i) < int(k)):
        raise ValueError(f"--shard must be I/K with 0 <= I < K, e.g. 0/2; got {args.shard!r}")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1; got {args.jobs}")
    args.out = args.out or default_out(args.config)
    config = None
    with stop_on_signals("nnmjax run") as stop:  # from the start: no signal ends in a traceback
        try:
            config, shard, reporter = _run_setup(args, (int(i), int(k)))
            if args.plan:
                return _print_plan(config, args.out, shard, measure=args.measure, stop=stop)
            stop.check()
            if args.jobs != 1:
                status = _run_jobs(args, config, shard, stop)
                if not stop:
                    return status
                e = Stopped(stop.signal)
                saved = len(list(Path(args.out, "partial").glob("*.npz")))
                e.kept = f"{saved} running groups' checkpoints in {args.out}/partial" if saved else None
                raise e
            from nnmjax.experiments.grid import run_grid

            every = args.checkpoint_every
            run_grid(config, args.out, progress=not args.quiet, shard=shard,
                     checkpoint_s=every if every >= 0 else None, stop=stop)
        except Stopped as e:
            return _stopped(args, config, e)
    if reporter:
        from nnmjax.experiments import results

        _report(args.out, results.load_records(args.out), plots=args.plots)
    return 0


def _run_setup(args, shard):
    """``(config, shard, reporter)`` of ``nnmjax run``: the grid loaded and validated, this
    process's shard, whether it writes the report; the output directory checked."""
    from nnmjax.experiments import results
    from nnmjax.experiments.config import load_grid
    from nnmjax.experiments.grid import grid_runs

    count = 1
    if args.coordinator or args.num_processes is not None or args.process_id is not None:
        from nnmjax.scale.distributed import initialize  # before anything touches a device

        pid, count = initialize(args.coordinator, args.num_processes, args.process_id)
    config = load_grid(args.config, args.overrides)
    reporter = True
    if count > 1:
        from nnmjax.sim import spans_processes

        if any(spans_processes(c) for c in config):  # all processes run every group
            reporter = pid == 0
        else:  # each process runs its own slice of the grid
            shard = (shard[0] * count + pid, shard[1] * count)
        if args.jobs != 1:
            raise ValueError("--jobs runs processes on one machine; with --coordinator start "
                             "one process per host instead")
    if args.plan:
        return config, shard, reporter
    results.check_out_dir(args.out)
    grid = {s.hash() for s in grid_runs(config)}
    others = sum(r["hash"] not in grid for r in results.load_records(args.out))
    if reporter and not args.quiet:
        held = (f"; it already holds {others} runs of other settings, which its table, summary "
                f"and plots show too" if others else "")
        print(f"nnmjax run: output directory {args.out}{held}", file=sys.stderr)
    return config, shard, reporter


def _stopped(args, config, e) -> int:
    """The one line an interrupted run prints; returns the exit status ``128 + signal``."""
    import shlex

    from nnmjax.experiments.grid import grid_runs, pending_runs
    from nnmjax.experiments.interrupt import exit_status

    if config is None:  # stopped while the config was being read
        print(f"nnmjax run: stopped by {e} before any run started", file=sys.stderr)
        return exit_status(e.signum)
    done, _ = pending_runs(config, args.out)
    kept = f"{len(done)} of {len(grid_runs(config))} runs finished in {args.out}/runs"
    if getattr(e, "kept", None):
        kept += f", and {e.kept}"
    print(f"nnmjax run: stopped by {e}; kept {kept}; resume with: nnmjax "
          f"{shlex.join(args.argv)}", file=sys.stderr)
    return exit_status(e.signum)


def _run_jobs(args, config, shard, stop) -> int:
    from nnmjax.experiments.grid import grid_runs, pending_runs, shard_slice
    from nnmjax.experiments.jobs import run_jobs

    _, todo = pending_runs(config, args.out)
    todo = [s.hash() for s in shard_slice(grid_runs(config), todo, shard)]
    worker = ([args.config] if args.config else []) + [
        a for o in args.overrides for a in ("--set", o)] + [
        "--out", args.out, "--checkpoint-every", str(args.checkpoint_every)]
    if run_jobs(worker, args.out, todo, shard=shard, jobs=args.jobs, progress=not args.quiet,
                stop=stop) or stop:
        return 1
    from nnmjax.experiments import results

    results.write_summary(args.out)
    _report(args.out, results.load_records(args.out), plots=args.plots)
    return 0


_TUNE_HELP = ("choose per setting and rule the values of these keys (lr, lr_schedule, momentum, "
              "weight_decay, clip, batch_size) with the best worst case over attacks, as "
              "ByzFL's benchmark does, and write the tuned results under DIR/tuned-KEYS/")


def _add_table(subparsers) -> None:
    p = subparsers.add_parser(
        "table", help="print and write the results table of a run directory",
        description="Print the max-test-accuracy table (paper Table 2 layout) of every record "
                    "in DIR and write DIR/table.md, DIR/table.csv and DIR/summary.csv.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  nnmjax table out/quickstart\n"
               "  nnmjax table experiments/results/fashion_mnist_table2\n"
               "  nnmjax table out/lr_sweep --tune lr momentum")
    p.add_argument("dir", help="output directory of nnmjax run")
    p.add_argument("--tune", nargs="+", metavar="KEY", help=_TUNE_HELP)
    p.set_defaults(func=_run_table)


def _load(dir_):
    from nnmjax.experiments import results

    records = results.load_records(dir_)
    if not records:
        raise ValueError(f"no run records under {dir_}/runs")
    return records


def _tuned(args, records):
    """``(records, out_dir, tuned)``: as they are, or tuned over ``--tune`` keys."""
    from pathlib import Path

    from nnmjax.experiments import tuning

    if not args.tune:
        return records, Path(args.dir), None
    tuned = tuning.tune(records, args.tune)
    out = Path(args.dir, "tuned-" + "-".join(args.tune))
    out.mkdir(exist_ok=True)
    return tuned.records, out, tuned


def _run_table(args) -> int:
    from nnmjax.experiments import results, table, tuning

    records = _load(args.dir)
    if not args.tune:
        results.write_summary(args.dir, records)
    records, out, tuned = _tuned(args, records)
    md, text = table.format_markdown(records), table.format_text(records)
    if tuned is not None:
        choices = tuning.format_choices(tuned)
        head = "\n\nChosen hyperparameters (best worst case over attacks):\n\n"
        md += head + choices
        text += head + table.markdown_as_text(choices)
        tuning.write_choices_csv(tuned, out / "hyperparameters.csv")
    (out / "table.md").write_text(md + "\n")
    table.write_csv(records, out / "table.csv")
    print(text)
    return 0


def _add_plot(subparsers) -> None:
    p = subparsers.add_parser(
        "plot", help="draw accuracy and kappa-hat curves of a run directory",
        description="Draw the accuracy and kappa-hat curves (paper Figures 4 and 2) of every "
                    "record in DIR into DIR/plots (PDF, and PNG beside it).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  nnmjax plot out/quickstart\n"
               "  nnmjax plot experiments/results/fashion_mnist_table2")
    p.add_argument("dir", help="output directory of nnmjax run")
    p.add_argument("--tune", nargs="+", metavar="KEY", help=_TUNE_HELP)
    p.set_defaults(func=_run_plot)


def _run_plot(args) -> int:
    from nnmjax.experiments import plots

    records, out, _ = _tuned(args, _load(args.dir))
    for path in plots.plot_all(records, out / "plots"):
        print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------- nnmjax audit

def _add_audit(subparsers) -> None:
    p = subparsers.add_parser(
        "audit",
        help="search adversarially for each rule's worst Definition 2 ratio",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "For every rule and f, search inputs maximising Definition 2's ratio\n"
            "||F(x) - mean_S||^2 / mean_{i in S} ||x_i - mean_S||^2 (nnmjax.robust.audit): the\n"
            "paper's constructions, attack directions and random starts, gradient ascent\n"
            "through the rule and a smoothed surrogate, all restarts in one compiled call.\n"
            "Prints a table; writes DIR/audit.json and DIR/audit.pdf / .png."),
        epilog=("examples:\n"
                "  nnmjax audit --rules cwtm nnm+cwtm --n 17 --f 1 2 4 8\n"
                "  nnmjax audit --n 17 --f 1 2 3 4 5 6 7 8 --jobs 2 --out out/audit"))
    p.add_argument("--rules", nargs="+", metavar="RULE", default=None,
                   help="rule names, also comma-separated (default: every aggregator and "
                        "nnm+<aggregator>)")
    p.add_argument("--n", type=int, default=17, help="workers (default: %(default)s)")
    p.add_argument("--f", type=int, nargs="+", default=None, metavar="F",
                   help="Byzantine workers, one audit each (default: 1 ... (n-1)//2)")
    p.add_argument("--d", type=int, default=8, help="dimension (default: %(default)s)")
    p.add_argument("--restarts", type=int, default=32, help="vmapped searches per audit "
                   "(default: %(default)s)")
    p.add_argument("--steps", type=int, default=50, help="ascent steps per search "
                   "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting points")
    p.add_argument("--jobs", type=int, default=1, help="processes (default: %(default)s)")
    p.add_argument("--out", default="out/audit", metavar="DIR",
                   help="output directory (default: %(default)s)")
    p.set_defaults(func=_run_audit)


def _run_audit(args) -> int:
    import json
    import pathlib

    from nnmjax.robust import aggregators, audit
    from nnmjax.experiments import plots
    from nnmjax.robust.rules import rule

    names = _split(args.rules) or (sorted(aggregators.AGGREGATORS)
                                   + [f"nnm+{a}" for a in sorted(aggregators.AGGREGATORS)])
    fs = args.f or list(range(1, (args.n - 1) // 2 + 1))
    try:
        for name in names:  # every name and f checked before any search
            rule(name, 1)
        if not fs:
            raise ValueError(f"--n {args.n}: the audit needs n >= 3 (some f with 1 <= f, 2f < n)")
        for f in fs:
            if not 1 <= f or 2 * f >= args.n:
                raise ValueError(f"--f {f}: the audit needs 1 <= f and 2f < n = {args.n}")
        for key, low in (("d", 1), ("restarts", 3), ("steps", 0), ("jobs", 1)):
            if getattr(args, key) < low:
                raise ValueError(f"--{key} must be >= {low}; got {getattr(args, key)}")
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as e:
        print(f"nnmjax audit: {e}", file=sys.stderr)
        return 2

    from nnmjax.experiments.results import atomic_write

    done = []  # every finished audit is on disk at once: an interrupted audit keeps them

    def progress(r):
        done.append(r)
        text = json.dumps([d.as_dict() for d in done])
        atomic_write(out / "partial-audit.json", lambda fh: fh.write(text))
        print(f"  {r.rule} f={r.f}: worst ratio {r.worst_ratio:.4g} ({r.wall_s:.1f} s)",
              file=sys.stderr, flush=True)

    from nnmjax.experiments import interrupt

    refused = 0
    for name in names:
        for f in fs:
            reason = audit.refusal(name, args.n, f)
            if reason:
                refused += 1
                print(f"  skipped {name} f={f}: {reason}", file=sys.stderr)
    if refused == len(names) * len(fs):
        print(f"nnmjax audit: no rule accepts n = {args.n} with the f asked for: nothing to "
              "audit", file=sys.stderr)
        return 2
    interrupt.KEPT_NOTE[0] = f"the finished audits are kept in {out / 'partial-audit.json'}"
    t0 = time.perf_counter()
    results = audit.audit_many(names, args.n, fs, jobs=args.jobs, progress=progress,
                               d=args.d, restarts=args.restarts, steps=args.steps,
                               seed=args.seed)
    print(audit.audit_table(results))
    text = json.dumps([r.as_dict() for r in results], indent=1)
    atomic_write(out / "audit.json", lambda fh: fh.write(text))
    (out / "partial-audit.json").unlink(missing_ok=True)
    paths = plots.plot_audit(results, out / "audit.pdf")
    print(f"{len(results)} audits in {time.perf_counter() - t0:.0f} s; wrote "
          f"{out / 'audit.json'}, {', '.join(map(str, paths))}")
    violations = [r for r in results if r.bound is not None and r.worst_ratio > r.bound * (1 + 1e-4)]
    for r in violations:
        print(f"VIOLATION: {r.rule} f={r.f}: {r.worst_ratio:.4g} > proven {r.bound:.4g}",
              file=sys.stderr)
    return 1 if violations else 0


# ------------------------------------------------------------------------ the parser

#: Functions that add one subcommand each, in the order ``--help`` lists them.
SUBCOMMANDS = (_add_run, _add_check, _add_table, _add_plot, _add_bench, _add_audit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnmjax",
        description="Byzantine-robust aggregation in JAX (Nearest Neighbor Mixing).")
    from nnmjax import __version__

    parser.add_argument("--version", action="version", version=f"nnmjax {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    for sub in subparsers.choices.values():
        sub.add_argument("--debug", action="store_true",
                         help="show the full traceback of an error instead of one line")
    return parser


def _expected_errors() -> tuple[type, ...]:
    """The failures a user can cause (a bad value, missing data, a corrupt record, an
    unwritable directory, a missing optional dependency): one line, exit status 2."""
    from nnmjax.experiments.results import CorruptRecordError

    return (ValueError, OSError, CorruptRecordError, ImportError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nnmjax`` console script; returns the exit status.

    A failure prints one line on stderr, ``nnmjax <command>: error: <what>`` (exit status 2
    for the user's mistakes, 1 for anything else, which names its exception), never a
    traceback unless ``--debug`` is given."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    args.argv = argv
    import warnings

    warnings.formatwarning = lambda message, category, *_: (
        f"nnmjax {args.command}: warning: {message}\n")
    try:
        return args.func(args)
    except Exception as e:
        if args.debug:
            raise
        expected = isinstance(e, _expected_errors())
        what = str(e) if expected else f"{type(e).__name__}: {e} (a bug: please report it " \
                                         f"with the output of --debug)"
        print(f"nnmjax {args.command}: error: {what}", file=sys.stderr)
        return 2 if expected else 1


def entry() -> None:
    """The ``nnmjax`` console script: :func:`main` on ``sys.argv``. For ``run`` and ``check`` it
    first re-executes itself once (``python -m nnmjax.cli ...``) with glibc's malloc on
    transparent huge pages where that helps (:func:`nnmjax.bench.hugepages.hugepage_env`;
    ``NNMJAX_HUGEPAGES=0`` opts out)."""
    argv = sys.argv[1:]
    from nnmjax.experiments.interrupt import quit_on_signals

    quit_on_signals(f"nnmjax {next((a for a in argv if not a.startswith('-')), '')}".strip())
    status = _entry(argv)
    if status in (130, 143):  # stopped by a signal: a second one must not land in teardown,
        sys.stdout.flush()    # where the interpreter has put back the default handlers
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def _entry(argv) -> int:
    if argv and argv[0] in HUGEPAGE_COMMANDS and not os.environ.get("NNMJAX_REEXECUTED"):
        from nnmjax.bench.hugepages import hugepage_env

        env = hugepage_env()
        if env is not None:
            env["NNMJAX_REEXECUTED"] = "1"
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(sys.executable, [sys.executable, "-m", "nnmjax.cli", *argv], env)
    return main(argv)


if __name__ == "__main__":
    entry()
