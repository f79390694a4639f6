"""``nnmjax run --jobs K``: one grid run by ``K`` worker processes on one machine.

Each worker is ``nnmjax run ... --shard I/K`` on its interleaved slice of the
(setting, attack, rule) groups, all writing into one output directory (records are keyed by
their own hash, so they never collide). While one worker compiles a group (CPU-bound, one
core) the others run theirs, so on a many-core host with an accelerator the device is kept
busy; on a host whose cores are all busy already it gains nothing. Each worker gets
``1/K`` of an accelerator's memory (``XLA_PYTHON_CLIENT_MEM_FRACTION``, unless set) and
writes its log to ``DIR/logs/``; this process shows one progress bar over the grid's runs,
and passes Ctrl-C or SIGTERM on to the workers (each saves its group's checkpoint, and a
re-run resumes there).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

__all__ = ["run_jobs", "worker_shards"]


def worker_shards(shard: tuple[int, int], jobs: int) -> list[tuple[int, int]]:
    """The ``jobs`` shards that together make ``shard`` (``(i, k)`` -> ``(i + k j, k jobs)``,
    interleaved like :func:`nnmjax.experiments.grid.run_grid`'s own slices)."""
    i, k = shard
    return [(i + k * j, k * jobs) for j in range(jobs)]


def _env(jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    if "XLA_PYTHON_CLIENT_MEM_FRACTION" not in env and env.get(
            "XLA_PYTHON_CLIENT_PREALLOCATE", "").lower() not in ("false", "0"):
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / jobs:.3f}"
    return env


def run_jobs(worker_args: Sequence[str], out_dir: Path | str, todo: Sequence[str], *,
             shard: tuple[int, int], jobs: int, progress: bool = True,
             poll_s: float = 1.0, stop=None) -> int:
    """Run ``nnmjax run *worker_args --shard S --quiet --no-plots`` for each of the ``jobs``
    shards of ``shard`` and wait for all; ``todo``: the hashes of the runs left, for the progress bar.
    Returns 0, or 1 naming the workers that failed and the tail of their logs.

    The workers run in their own session, so a terminal's Ctrl-C reaches this process only:
    once ``stop`` (:class:`nnmjax.experiments.interrupt.StopRequest`) is set, the signal is passed on to
    every worker once (each saves its group's checkpoint and exits) and this waits for them;
    a second signal to this process ends the workers at once."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env, procs = _env(jobs), []
    for i, k in worker_shards(shard, jobs):
        log = logs / f"run-shard-{i}-of-{k}.log"
        cmd = [sys.executable, "-m", "nnmjax.cli", "run", *worker_args, "--shard", f"{i}/{k}",
               "--quiet", "--no-plots"]  # the figures are drawn once, by the caller
        with open(log, "w") as fh:
            procs.append((log, subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                                env=env, start_new_session=True)))
    if stop is not None:
        stop.on_exit.append(lambda: [p.send_signal(signal.SIGINT) for _, p in procs
                                     if p.poll() is None])
    runs = out_dir / "runs"
    bar = tqdm(total=len(todo), unit="run", disable=not progress,
               desc=f"{len(todo)} runs, {jobs} processes")
    passed_on = False
    try:
        while any(p.poll() is None for _, p in procs):
            if stop and not passed_on:  # each worker saves its checkpoint and exits
                for _, p in procs:
                    if p.poll() is None:
                        p.send_signal(stop.signal)
                passed_on = True
            time.sleep(poll_s)
            bar.update(sum((runs / f"{h}.json").exists() for h in todo) - bar.n)
    finally:
        bar.close()
    if passed_on:
        return 1
    failed = [(log, p.returncode) for log, p in procs if p.returncode != 0]
    for log, rc in failed:
        tail = log.read_text().splitlines()[-15:]
        print(f"nnmjax run: worker {log.name} exited with {rc}; its log ends:\n  "
              + "\n  ".join(tail), file=sys.stderr)
    return 1 if failed else 0
