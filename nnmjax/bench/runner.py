"""Run benchmark tasks in a worker process with a time limit on every step."""
from __future__ import annotations

import multiprocessing

from nnmjax.bench.cases import BenchConfig
from nnmjax.bench.measure import run_task, worker_main


class _Stopped(Exception):
    """A step of a task ran past its time limit, or the worker died."""

    def __init__(self, record: dict, impl: str | None):
        super().__init__(record["reason"])
        self.record, self.impl = record, impl


class Runner:
    """Runs tasks in-process, or in a worker process with a time limit on every step."""

    def __init__(self, cfg: BenchConfig):
        self.cfg = cfg
        self.proc = None
        self.conn = None

    def _start(self):
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent
        if not self.conn.poll(max(120.0, self.cfg.call_timeout_s)):
            self._kill()
            raise RuntimeError("the benchmark worker process did not start")
        self.conn.recv()

    def _kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.join(10)
        if self.conn is not None:
            self.conn.close()
        self.proc = self.conn = None

    def close(self):
        if self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(None)
                self.proc.join(10)
            except (OSError, BrokenPipeError):
                pass
        self._kill()

    def _limit(self, step):
        phase, impl = step
        if phase == "start":  # imports, building the case's data
            return max(120.0, self.cfg.call_timeout_s), "setup"
        if phase == "build":
            compiled = impl in ("nnmjax", "stream-jax", "gemm-jax")
            return ((self.cfg.compile_timeout_s, "compile") if compiled
                    else (max(120.0, self.cfg.call_timeout_s), "setup"))
        return self.cfg.call_timeout_s, ("warm-up call" if phase == "warm-up" else "a timed call")

    def _once(self, task):
        if not self.cfg.isolate:
            return run_task(task, lambda step: None)
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send(task)
        step = ("start", None)
        while True:
            limit, what = self._limit(step)
            try:
                msg = self.conn.recv() if self.conn.poll(limit) else None
            except (EOFError, OSError):
                self._kill()
                raise _Stopped({"status": "crashed",
                                "reason": f"the worker died during {what} "
                                          "(out of memory?)"}, step[1]) from None
            if msg is None:
                self._kill()
                rec = {"status": "timeout", "reason": f"{what} ran past {limit:g} s (killed)"}
                if "call" in what:
                    rec["lower_bound_ms"] = limit * 1e3
                raise _Stopped(rec, step[1])
            kind, payload = msg
            if kind == "done":
                return payload
            step = payload

    def call(self, task: dict):
        """Run a task that has no implementations; ``None`` if it failed."""
        try:
            out = self._once(task)
        except _Stopped:
            return None
        return out["ok"]

    def measure(self, task: dict) -> dict:
        """Run a ``measure`` task; an implementation that times out (or kills the worker)
        is recorded as such and the others are measured again without it."""
        pending, done = list(task["impls"]), {}
        while pending:
            try:
                out = self._once({**task, "impls": pending})
            except _Stopped as stop:
                if stop.impl is None or stop.impl not in pending:
                    for impl in pending:
                        done[impl] = dict(stop.record)
                    break
                done[stop.impl] = stop.record
                pending.remove(stop.impl)
                continue
            if out["ok"] is None:
                for impl in pending:
                    done[impl] = out["error"]
            else:
                done.update(out["ok"])
            break
        return {impl: done[impl] for impl in task["impls"]}

