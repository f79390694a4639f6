"""Aggregator throughput: nnmjax against a streaming pass, NumPy and ByzFL.

For every case ``(n, d, f)`` (float32 standard-normal rows, fixed seed) and every rule
this measures

- **nnmjax**: the jitted rule, compiled ahead of time (``compile_s``: trace, lower and
  compile), then one warm-up call and ``repeats`` timed calls, each ended by
  ``block_until_ready``; we report the median (raw samples and the minimum are kept);
- **stream**: one pass over ``x`` in the same run, jitted ``jnp.sum(x)`` and NumPy
  ``x.sum()`` (medians); the faster of the two is the floor any aggregator pays, and
  ``x_stream`` is the rule's time as a multiple of it;
- **numpy**: a straightforward NumPy formulation where one exists (``np.mean``,
  ``np.median(axis=0)``, sort-based trimmed mean and mean-around-median, Gram-based
  Krum/Multi-Krum/MoNNA/NNM, centered clipping), and ``nnm+X`` for those ``X``;
- **byzfl** (when ``import byzfl`` works): ByzFL 0.0.11's classes fed NumPy arrays and
  ``torch.from_numpy`` tensors; the faster backend counts. Inputs are copied before every
  call (ByzFL's pre-aggregators mutate them) outside the timed region, and stateful
  classes (CenteredClipping) are built fresh for each call.

The implementations of one rule are timed in interleaved rounds (nnmjax, NumPy, ByzFL
NumPy, ByzFL torch, then again), so that load from other processes on a shared machine
falls on all of them alike and the ratios stay meaningful.

Slow cases are bounded: after the warm-up, timed calls stop once ``budget_s`` seconds are
spent (at least one); a warm-up longer than ``single_call_s`` is recorded as the only
sample. With ``isolate=True`` (the default) every measurement runs in a worker process
and any single step (compile, one call) that runs past ``call_timeout_s`` is killed and
recorded as ``timeout`` with that lower bound (the rule's other implementations are
then measured again without it). Rules that enumerate ``C(n, f)`` subsets
(MDA, SMEA) are skipped past the rule's ``max_subsets``; ByzFL's NNM is skipped where its
``(n, n - f, d)`` gather would not fit in memory.

Results are a JSON-able dict (see :func:`run`): machine information, the configuration,
the streaming baselines per case, one record per (case, rule) and the check of the
project's throughput targets against ByzFL (:data:`TARGETS`).
"""
from __future__ import annotations

import datetime
import inspect
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

from nnmjax import hugepages
from nnmjax.provenance import code_info, source_digest

__all__ = ["Case", "BenchConfig", "DEFAULT_CASES", "QUICK_CASES", "QUICK_RULES",
           "TARGETS", "default_rules", "parse_case", "run", "format_table",
           "check_targets", "format_targets", "write_json"]

SCHEMA = "nnmjax.bench.aggregators/1"


@dataclass(frozen=True)
class Case:
    n: int
    d: int
    f: int

    @property
    def label(self) -> str:
        return f"n={self.n} d={_fmt_d(self.d)} f={self.f}"


def _fmt_d(d: int) -> str:
    e = int(round(math.log10(d))) if d > 0 else 0
    return f"1e{e}" if d > 0 and 10 ** e == d else str(d)


DEFAULT_CASES = (Case(17, 100_000, 4), Case(17, 1_000_000, 4), Case(100, 100_000, 20),
                 Case(1000, 10_000, 200))
QUICK_CASES = DEFAULT_CASES[:2]
QUICK_RULES = ("mean", "cwmed", "cwtm", "gm", "krum", "multikrum", "meamed", "nnm",
               "nnm+cwtm", "nnm+krum")

#: The project's throughput targets against ByzFL's faster backend:
#: (case, minimum speed-up of every rule, {rule: stronger minimum}).
TARGETS = (
    (Case(17, 1_000_000, 4), 3.0, {"nnm": 10.0, "nnm+cwtm": 10.0}),
    (Case(100, 100_000, 20), 1.5, {"nnm": 10.0, "nnm+cwtm": 10.0}),
)


def default_rules() -> list[str]:
    """Every aggregator, the NNM pre-aggregator alone, and ``nnm+X`` for every aggregator."""
    from nnmjax.aggregators import AGGREGATORS

    return list(AGGREGATORS) + ["nnm"] + [f"nnm+{a}" for a in AGGREGATORS]


def parse_case(text: str) -> Case:
    """``"17:1e6:4"`` (also ``x`` or ``,`` as separators) -> ``Case(17, 1000000, 4)``."""
    parts = text.replace("x", ":").replace(",", ":").split(":")
    if len(parts) != 3:
        raise ValueError(f"a case is N:D:F (e.g. 17:1e6:4); got {text!r}")
    try:
        n, d, f = (int(float(p)) for p in parts)
    except ValueError:
        raise ValueError(f"a case is N:D:F with numbers (e.g. 17:1e6:4); got {text!r}") from None
    if n < 1 or d < 1 or f < 0 or 2 * f >= n:
        raise ValueError(f"case {text!r} needs n >= 1, d >= 1 and 0 <= 2f < n")
    return Case(n, d, f)


@dataclass
class BenchConfig:
    cases: Sequence[Case] = DEFAULT_CASES
    rules: Sequence[str] | None = None  # None: default_rules()
    repeats: int = 5
    seed: int = 0
    byzfl: bool = True
    numpy: bool = True
    isolate: bool = True
    budget_s: float = 5.0  # time spent on timed calls per (rule, implementation)
    single_call_s: float = 3.0  # a longer warm-up is the only sample
    call_timeout_s: float = 20.0  # kill one step (compile, call) past this (isolate only)
    compile_timeout_s: float = 300.0
    gather_limit_gb: float | None = None  # ByzFL NNM's (n, n-f, d) gather; None: auto

    def __post_init__(self):
        self.cases = tuple(self.cases)
        if self.rules is not None:
            self.rules = tuple(self.rules)
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1; got {self.repeats}")
        for name in ("budget_s", "single_call_s", "call_timeout_s", "compile_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)}")


# ---------------------------------------------------------------------------- rules

def _stages(name: str) -> list[str]:
    return [s.strip() for s in name.split("+")]


def _max_subsets(stage: str) -> int | None:
    from nnmjax.aggregators import AGGREGATORS

    fn = AGGREGATORS.get(stage)
    if fn is None:
        return None
    p = inspect.signature(fn).parameters.get("max_subsets")
    return None if p is None else p.default


def _check_rule(name: str) -> None:
    """Raise ``ValueError`` (listing the known names) for an unknown rule name."""
    from nnmjax import preaggregators, rules

    if name in preaggregators.PREAGGREGATORS:
        if name in rules.RANDOMIZED:
            raise ValueError(f"pre-aggregator {name!r} alone is not benchmarked; "
                             f"compose it, e.g. '{name}+cwtm'")
        return
    rules.rule(name, 1)  # validates the name


def _rule_skip(name: str, case: Case) -> str | None:
    """Why ``name`` cannot run on ``case`` at all (``None``: it can)."""
    for s in _stages(name):
        limit = _max_subsets(s)
        if limit is not None:
            count = math.comb(case.n, case.f)
            if count > limit:
                return (f"{s} enumerates C({case.n}, {case.f}) = {count:.3g} subsets "
                        f"> max_subsets={limit:,}")
    return None


def _nnmjax_fn(name: str, f: int):
    import jax

    from nnmjax import preaggregators, rules

    if name in preaggregators.PREAGGREGATORS:
        pre = preaggregators.PREAGGREGATORS[name]
        return lambda x: pre(x, f)
    r = rules.rule(name, f)
    if r.randomized:
        return lambda x: r(x, key=jax.random.key(0))
    return r


# NumPy baselines: straightforward formulations, float32 throughout.

def _np_sqdist(x):
    g = x @ x.T
    sq = np.diagonal(g).copy()
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * g, 0.0)
    np.fill_diagonal(d2, 0.0)
    return d2


def _np_krum_scores(x, f):
    n = x.shape[0]
    return np.sort(_np_sqdist(x), axis=1)[:, : n - f].sum(axis=1)


def _np_krum(x, f):
    return x[np.argmin(_np_krum_scores(x, f))].copy()


def _np_multikrum(x, f):
    n = x.shape[0]
    best = np.argsort(_np_krum_scores(x, f), kind="stable")[: n - f]
    c = np.zeros(n, x.dtype)
    c[best] = 1.0 / (n - f)
    return c @ x


def _np_nearest(x, f):
    d2 = _np_sqdist(x)
    np.fill_diagonal(d2, -1.0)
    return np.argsort(d2, axis=1, kind="stable")[:, : x.shape[0] - f]


def _np_nnm(x, f):
    n = x.shape[0]
    w = np.zeros((n, n), x.dtype)
    w[np.arange(n)[:, None], _np_nearest(x, f)] = 1.0 / (n - f)
    return w @ x


def _np_monna(x, f):
    n = x.shape[0]
    d2 = np.sum(np.square(x - x[0]), axis=1)
    d2[0] = -1.0
    c = np.zeros(n, x.dtype)
    c[np.argsort(d2, kind="stable")[: n - f]] = 1.0 / (n - f)
    return c @ x


def _np_cwtm(x, f):
    n = x.shape[0]
    return np.sort(x, axis=0)[f: n - f].mean(axis=0)


def _np_meamed(x, f):
    n = x.shape[0]
    s = np.sort(x, axis=0)
    med = np.median(s, axis=0)
    k = np.arange(f + 1)
    cost = np.maximum(med - s[k], s[k + n - f - 1] - med)  # (f+1, d)
    best = np.argmin(cost, axis=0)
    cs = np.concatenate([np.zeros_like(s[:1]), np.cumsum(s, axis=0)])
    total = (np.take_along_axis(cs, (best + n - f)[None], 0)
             - np.take_along_axis(cs, best[None], 0))[0]
    return total / (n - f)


def _np_cclip(x, f, tau=100.0):
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))
    s = np.minimum(1.0, tau / norm).astype(x.dtype)
    return (s / x.shape[0]) @ x


NUMPY_AGGREGATORS: dict[str, Callable] = {
    "mean": lambda x, f: x.mean(axis=0),
    "cwmed": lambda x, f: np.median(x, axis=0),
    "cwtm": _np_cwtm,
    "meamed": _np_meamed,
    "krum": _np_krum,
    "multikrum": _np_multikrum,
    "monna": _np_monna,
    "cclip": _np_cclip,
}
NUMPY_PREAGGREGATORS: dict[str, Callable] = {"nnm": _np_nnm}


def _numpy_fn(name: str, f: int):
    stages = _stages(name)
    *pres, last = stages
    if len(stages) == 1 and last in NUMPY_PREAGGREGATORS:
        pres, last = stages, None
    if any(s not in NUMPY_PREAGGREGATORS for s in pres):
        return None
    if last is not None and last not in NUMPY_AGGREGATORS:
        return None

    def fn(x):
        for s in pres:
            x = NUMPY_PREAGGREGATORS[s](x, f)
        return x if last is None else NUMPY_AGGREGATORS[last](x, f)

    return fn


# ByzFL: class factories by nnmjax name.

def _byzfl_factories(byzfl, f: int) -> dict[str, Callable[[], Callable]]:
    return {
        "mean": lambda: byzfl.Average(),
        "cwmed": lambda: byzfl.Median(),
        "cwtm": lambda: byzfl.TrMean(f=f),
        "gm": lambda: byzfl.GeometricMedian(nu=0.1, T=3),
        "krum": lambda: byzfl.Krum(f=f),
        "multikrum": lambda: byzfl.MultiKrum(f=f),
        "mda": lambda: byzfl.MDA(f=f),
        "meamed": lambda: byzfl.Meamed(f=f),
        "cclip": lambda: byzfl.CenteredClipping(),
        "monna": lambda: byzfl.MoNNA(f=f),
        "caf": lambda: byzfl.CAF(f=f),
        "smea": lambda: byzfl.SMEA(f=f),
        "nnm": lambda: byzfl.NNM(f=f),
        "clipping": lambda: byzfl.Clipping(),
        "arc": lambda: byzfl.ARC(f=f),
    }


#: ByzFL class names, for the record.
BYZFL_NAMES = {"mean": "Average", "cwmed": "Median", "cwtm": "TrMean(f)",
               "gm": "GeometricMedian(nu=0.1, T=3)", "krum": "Krum(f)",
               "multikrum": "MultiKrum(f)", "mda": "MDA(f)", "meamed": "Meamed(f)",
               "cclip": "CenteredClipping()", "monna": "MoNNA(f)", "caf": "CAF(f)",
               "smea": "SMEA(f)", "nnm": "NNM(f)", "clipping": "Clipping()", "arc": "ARC(f)"}


def _byzfl_spec(name: str) -> str | None:
    stages = _stages(name)
    if any(s not in BYZFL_NAMES for s in stages):
        return None
    return " then ".join(BYZFL_NAMES[s] for s in stages)


def _mem_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _byzfl_skip(name: str, case: Case, gather_limit_gb: float | None) -> str | None:
    if "nnm" not in _stages(name):
        return None
    need = case.n * (case.n - case.f) * case.d * 4
    if gather_limit_gb is None:
        avail = _mem_available_bytes()
        limit = 8 * 2**30 if avail is None else min(8 * 2**30, int(0.4 * avail))
    else:
        limit = int(gather_limit_gb * 2**30)
    if need > limit:
        return (f"ByzFL NNM materialises an (n, n-f, d) gather of {need / 2**30:.1f} GiB "
                f"> limit {limit / 2**30:.1f} GiB")
    return None


def _import_byzfl():
    try:
        import byzfl  # noqa: F401
        return byzfl
    except Exception:  # ImportError, or a broken torch install
        return None


# ------------------------------------------------------------------- measurement
# Everything below runs in the worker process (or in-process with isolate=False).

_DATA: dict = {}


def _data(case: Case, seed: int):
    key = (case, seed)
    if key not in _DATA:
        _DATA.clear()
        x = np.random.default_rng(seed).standard_normal((case.n, case.d), dtype=np.float32)
        _DATA[key] = {"np": x}
    return _DATA[key]


def _jax_data(case: Case, seed: int):
    entry = _data(case, seed)
    if "jax" not in entry:
        import jax

        entry["jax"] = jax.block_until_ready(jax.device_put(entry["np"]))
    return entry["jax"]


def _block(out):
    if hasattr(out, "block_until_ready"):
        out.block_until_ready()
    return out


def _make_call(impl: str, rule: str | None, case: Case, seed: int):
    """``(call, prepare)`` for one implementation: ``call(*prepare())`` runs it once
    (to completion); ``prepare`` (untimed) supplies fresh inputs."""
    x = _data(case, seed)["np"]
    if impl in ("stream-jax", "nnmjax"):
        import jax
        import jax.numpy as jnp

        xj = _jax_data(case, seed)
        fn = jnp.sum if impl == "stream-jax" else _nnmjax_fn(rule, case.f)
        compiled = jax.jit(fn).lower(xj).compile()
        return (lambda a: _block(compiled(a))), (lambda: (xj,))
    if impl == "stream-numpy":
        return (lambda a: a.sum()), (lambda: (x,))
    if impl == "numpy":
        return _numpy_fn(rule, case.f), (lambda: (x,))
    if impl in ("byzfl-numpy", "byzfl-torch"):
        byzfl = _import_byzfl()
        if byzfl is None:
            raise ImportError("import byzfl failed")
        import torch

        factories = _byzfl_factories(byzfl, case.f)
        stages = _stages(rule)
        as_torch = impl == "byzfl-torch"

        def prepare():  # copies: ByzFL's pre-aggregators mutate; CenteredClipping keeps state
            v = x.copy()
            return [factories[s]() for s in stages], (torch.from_numpy(v) if as_torch else v)

        def call(objs, v):
            for obj in objs:
                v = obj(v)
            return v

        return call, prepare
    raise ValueError(f"unknown implementation {impl!r}")


def _summarize(rec: dict) -> dict:
    if rec.get("samples_ms"):
        rec["median_ms"] = statistics.median(rec["samples_ms"])
        rec["min_ms"] = min(rec["samples_ms"])
        rec.setdefault("status", "ok")
    return rec


def _error(e: Exception) -> dict:
    return {"status": "error", "reason": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(limit=6)}


def _task_measure(task, progress):
    """Time ``task["impls"]`` of one rule (or the streaming pass) on one case, interleaved.

    Build every implementation (nnmjax: compile), warm each up once, then run ``repeats``
    rounds that call each implementation in turn, so that load from other processes falls
    on all of them alike. An implementation whose warm-up exceeds ``single_call_s`` keeps
    the warm-up as its only sample; one whose timed calls exceed ``budget_s`` leaves the
    rounds early. ``progress((phase, impl))`` announces each step before it starts.
    """
    case, seed, rule = task["case"], task["seed"], task.get("rule")
    _data(case, seed)
    recs = {impl: {} for impl in task["impls"]}
    calls = {}
    for impl in task["impls"]:
        progress(("build", impl))
        t0 = time.perf_counter()
        try:
            calls[impl] = _make_call(impl, rule, case, seed)
        except Exception as e:
            recs[impl] = _error(e)
            continue
        if impl in ("nnmjax", "stream-jax"):
            recs[impl]["compile_s"] = time.perf_counter() - t0

    def once(impl):
        call, prepare = calls[impl]
        args = prepare()
        t0 = time.perf_counter()
        call(*args)
        return time.perf_counter() - t0

    for impl in list(calls):
        progress(("warm-up", impl))
        try:
            warm = once(impl)
        except Exception as e:
            recs[impl] = _error(e)
            del calls[impl]
            continue
        recs[impl]["warmup_ms"] = warm * 1e3
        if warm > task["single_call_s"]:
            recs[impl].update(samples_ms=[warm * 1e3],
                              note=f"single call: warm-up {warm:.1f} s > "
                                   f"{task['single_call_s']:g} s")
            del calls[impl]
        else:
            recs[impl]["samples_ms"] = []
    spent = dict.fromkeys(calls, 0.0)
    repeats = task["repeats"]
    for i in range(repeats):
        for impl in list(calls):
            progress(("call", impl))
            try:
                dt = once(impl)
            except Exception as e:
                recs[impl] = _error(e)
                del calls[impl]
                continue
            recs[impl]["samples_ms"].append(dt * 1e3)
            spent[impl] += dt
            if spent[impl] > task["budget_s"] and i + 1 < repeats:
                recs[impl]["note"] = f"{i + 1} of {repeats} calls (budget {task['budget_s']:g} s)"
                del calls[impl]
    calls.clear()
    return {impl: _summarize(rec) for impl, rec in recs.items()}


def _task_info(task, progress):
    import jax
    import jaxlib

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "hugepages": hugepages.status(),
        "mem_total_gb": None,
        "numpy": np.__version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "jax_backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "byzfl": None,
        "torch": None,
        "torch_threads": None,
        "env": {k: os.environ[k] for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                          "MKL_NUM_THREADS", "JAX_PLATFORMS")
                if k in os.environ},
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["processor"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            info["mem_total_gb"] = round(int(fh.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    if task.get("byzfl"):
        byzfl = _import_byzfl()
        if byzfl is not None:
            import importlib.metadata

            import torch

            try:
                info["byzfl"] = importlib.metadata.version("byzfl")
            except importlib.metadata.PackageNotFoundError:
                info["byzfl"] = getattr(byzfl, "__version__", "unknown")
            info["torch"] = torch.__version__
            info["torch_threads"] = torch.get_num_threads()
    return info


def _task_loadavg(task, progress):
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


_TASKS = {"info": _task_info, "measure": _task_measure, "loadavg": _task_loadavg}


def _run_task(task, progress):
    try:
        return {"ok": _TASKS[task["kind"]](task, progress)}
    except Exception as e:  # record, do not abort the whole benchmark
        return {"ok": None, "error": _error(e)}


def _worker_main(conn):
    """Worker process loop: receive a task, stream progress messages, send the result."""
    conn.send(("ready", None))
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        result = _run_task(task, lambda step: conn.send(("progress", step)))
        conn.send(("done", result))


class _Stopped(Exception):
    """A step of a task ran past its time limit, or the worker died."""

    def __init__(self, record: dict, impl: str | None):
        super().__init__(record["reason"])
        self.record, self.impl = record, impl


class _Runner:
    """Runs tasks in-process, or in a worker process with a time limit on every step."""

    def __init__(self, cfg: BenchConfig):
        self.cfg = cfg
        self.proc = None
        self.conn = None

    def _start(self):
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
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
            return (self.cfg.compile_timeout_s, "compile") if impl in ("nnmjax", "stream-jax") \
                else (max(120.0, self.cfg.call_timeout_s), "setup")
        return self.cfg.call_timeout_s, ("warm-up call" if phase == "warm-up" else "a timed call")

    def _once(self, task):
        if not self.cfg.isolate:
            return _run_task(task, lambda step: None)
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


# ------------------------------------------------------------------------ driver

def _case_dict(case: Case) -> dict:
    return asdict(case)


def _best_byzfl(rec: dict) -> None:
    oks = {b: r for b, r in rec["backends"].items() if r.get("status") == "ok"}
    if oks:
        b = min(oks, key=lambda k: oks[k]["median_ms"])
        rec.update(status="ok", backend=b, median_ms=oks[b]["median_ms"])
        return
    bounds = [r["lower_bound_ms"] for r in rec["backends"].values()
              if r.get("status") == "timeout" and r.get("lower_bound_ms")]
    if bounds and len(bounds) == len(rec["backends"]):
        rec.update(status="timeout", lower_bound_ms=min(bounds))
    else:
        statuses = sorted({r.get("status", "?") for r in rec["backends"].values()})
        rec.update(status="/".join(statuses) or "error")


def _ratios(rec: dict, stream_ms: float | None) -> None:
    """Fill ``x_stream``, ``vs_numpy`` and ``vs_byzfl`` (with ``>=``/``<=`` bounds)."""
    nj = rec["nnmjax"]
    ours = nj.get("median_ms") if nj.get("status") == "ok" else None
    ours_bound = nj.get("lower_bound_ms") if nj.get("status") == "timeout" else None
    rec["x_stream"] = ours / stream_ms if ours and stream_ms else None
    for key, other in (("vs_numpy", rec.get("numpy")), ("vs_byzfl", rec.get("byzfl"))):
        rec[key], rec[key + "_bound"] = None, None
        if not other:
            continue
        theirs = other.get("median_ms") if other.get("status") == "ok" else None
        theirs_bound = other.get("lower_bound_ms") if other.get("status") == "timeout" else None
        if ours and theirs:
            rec[key] = theirs / ours
        elif ours and theirs_bound:
            rec[key], rec[key + "_bound"] = theirs_bound / ours, ">="
        elif ours_bound and theirs:
            rec[key], rec[key + "_bound"] = theirs / ours_bound, "<="


def _log(msg: str, verbose: bool):
    if verbose:
        print(msg, file=sys.stderr, flush=True)


def run(cfg: BenchConfig | None = None, *, verbose: bool = True,
        on_update: Callable[[dict], None] | None = None) -> dict:
    """Run the benchmark; return the result dict (``on_update(result)`` after every rule).

    Keys: ``schema``; ``code`` (nnmjax version, git commit and dirty flag, sha256 of the
    package sources at the start, ``changed_during_run``); ``machine`` (platform, CPU, memory, versions of Python, NumPy, jax,
    jaxlib, torch and ByzFL, jax backend and device kind, date, load average at the start
    and ``loadavg_end``); ``config``; ``streams`` (per case: ``jax`` and ``numpy`` records,
    ``floor_ms`` the faster median); ``results`` (per case and rule: ``nnmjax``, ``numpy``
    and ``byzfl`` records with ``status`` (ok, skipped, timeout, error, crashed, none),
    raw ``samples_ms``, ``warmup_ms``, ``median_ms``, ``min_ms``, nnmjax's ``compile_s``,
    ByzFL's per-``backends`` records and the faster ``backend``; then ``x_stream``,
    ``vs_numpy``, ``vs_byzfl`` and their ``*_bound`` ('>=' or '<=' where one side timed
    out)); ``targets`` (see :data:`TARGETS`); ``wall_s``.
    """
    cfg = cfg or BenchConfig()
    rules = list(cfg.rules) if cfg.rules is not None else default_rules()
    for name in rules:
        _check_rule(name)
    runner = _Runner(cfg)
    started = time.perf_counter()
    common = dict(kind="measure", seed=cfg.seed, repeats=cfg.repeats, budget_s=cfg.budget_s,
                  single_call_s=cfg.single_call_s)
    result: dict[str, Any] = {"schema": SCHEMA}
    try:
        info = runner.call({"kind": "info", "byzfl": cfg.byzfl})
        if info is None:
            raise RuntimeError("could not read the machine information in the worker")
        byzfl_ok = cfg.byzfl and info.get("byzfl") is not None
        config = {k: v for k, v in asdict(cfg).items() if k != "cases"}
        config.update(cases=[_case_dict(c) for c in cfg.cases], rules=rules,
                      dtype="float32", data="standard normal, numpy default_rng(seed)",
                      byzfl_available=byzfl_ok,
                      byzfl_names={r: _byzfl_spec(r) for r in rules})
        code = code_info()
        result.update(machine=info, code=code, config=config, streams=[], results=[],
                      targets=[])
        if cfg.byzfl and not byzfl_ok:
            _log("ByzFL is not importable: skipping its timings", verbose)
        for case in cfg.cases:
            _log(f"== {case.label}", verbose)
            stream = runner.measure({**common, "case": case,
                                     "impls": ["stream-jax", "stream-numpy"]})
            stream = {"jax": stream["stream-jax"], "numpy": stream["stream-numpy"]}
            floors = [r["median_ms"] for r in stream.values() if r.get("status") == "ok"]
            stream_rec = {**_case_dict(case), **stream,
                          "floor_ms": min(floors) if floors else None}
            result["streams"].append(stream_rec)
            _log(f"   stream: jnp.sum {_ms(stream['jax'])} ms, "
                 f"x.sum {_ms(stream['numpy'])} ms", verbose)
            for name in rules:
                rec: dict[str, Any] = {**_case_dict(case), "rule": name}
                skip = _rule_skip(name, case)
                if skip:
                    rec.update(status="skipped", reason=skip,
                               nnmjax={"status": "skipped", "reason": skip})
                    rec["numpy"] = {"status": "skipped", "reason": skip} if cfg.numpy else None
                    rec["byzfl"] = {"status": "skipped", "reason": skip} if byzfl_ok else None
                    _ratios(rec, stream_rec["floor_ms"])
                    result["results"].append(rec)
                    _log(f"   {name:<14} skipped: {skip}", verbose)
                    continue
                impls = ["nnmjax"]
                rec["numpy"] = None
                if cfg.numpy:
                    if _numpy_fn(name, case.f) is not None:
                        impls.append("numpy")
                    else:
                        rec["numpy"] = {"status": "none",
                                        "reason": "no straightforward NumPy formulation"}
                rec["byzfl"] = None
                if byzfl_ok:
                    spec = _byzfl_spec(name)
                    bskip = None if spec else f"ByzFL has no counterpart of {name!r}"
                    bskip = bskip or _byzfl_skip(name, case, cfg.gather_limit_gb)
                    if bskip:
                        rec["byzfl"] = {"status": "skipped", "reason": bskip}
                    else:
                        impls += ["byzfl-numpy", "byzfl-torch"]
                out = runner.measure({**common, "case": case, "rule": name, "impls": impls})
                rec["nnmjax"] = out["nnmjax"]
                if "numpy" in out:
                    rec["numpy"] = out["numpy"]
                if "byzfl-numpy" in out:
                    rec["byzfl"] = {"classes": _byzfl_spec(name),
                                    "backends": {"numpy": out["byzfl-numpy"],
                                                 "torch": out["byzfl-torch"]}}
                    _best_byzfl(rec["byzfl"])
                rec["status"] = rec["nnmjax"].get("status", "error")
                _ratios(rec, stream_rec["floor_ms"])
                result["results"].append(rec)
                _log("   " + _row_text(rec), verbose)
                if on_update:
                    on_update(result)
        result["targets"] = check_targets(result)
        result["machine"]["loadavg_end"] = runner.call({"kind": "loadavg"})
        code["changed_during_run"] = source_digest() != code["source_sha256"]
        if code["changed_during_run"]:
            _log("warning: the nnmjax sources changed during the run; timings may mix versions",
                 verbose)
    finally:
        runner.close()
    result["wall_s"] = time.perf_counter() - started
    if on_update:
        on_update(result)
    return result


# ------------------------------------------------------------------------ output

def _ms(rec: dict | None) -> str:
    if not rec:
        return "-"
    st = rec.get("status")
    if st == "ok":
        v = rec["median_ms"]
        return f"{v:.3g}" if v < 100 else f"{v:.0f}"
    if st == "timeout":
        return f">{rec['lower_bound_ms'] / 1e3:.0f}s" if rec.get("lower_bound_ms") else "timeout"
    if st == "none":
        return "-"
    return st or "?"


def _ratio(rec: dict, key: str) -> str:
    v = rec.get(key)
    if v is None:
        return "-"
    bound = rec.get(key + "_bound") or ""
    return f"{bound}{v:.3g}x" if v < 100 else f"{bound}{v:.0f}x"


def _row_text(rec: dict) -> str:
    byz = rec.get("byzfl")
    bname = f" ({byz['backend']})" if byz and byz.get("backend") else ""
    xs = f"x{rec['x_stream']:.1f}" if rec.get("x_stream") else "-"
    return (f"{rec['rule']:<14} {_ms(rec.get('nnmjax')):>8} ms  {xs:<7} "
            f"numpy {_ms(rec.get('numpy')):>8}  vs {_ratio(rec, 'vs_numpy'):>7}  "
            f"byzfl {_ms(byz):>8}{bname}  vs {_ratio(rec, 'vs_byzfl'):>7}")


def format_table(result: dict) -> str:
    """A plain-text table: rule, case, nnmjax ms, compile s, x-stream, NumPy ms, vs-numpy,
    ByzFL ms (faster backend), vs-byzfl."""
    head = ("rule", "case", "ms", "compile s", "x-stream", "numpy ms", "vs-numpy",
            "byzfl ms", "vs-byzfl")
    rows = []
    for s in result.get("streams", []):
        case = Case(s["n"], s["d"], s["f"])
        rows.append(("(stream: jnp.sum | x.sum)", case.label, _ms(s.get("jax")), "-", "1",
                     _ms(s.get("numpy")), "-", "-", "-"))
        for r in result.get("results", []):
            if (r["n"], r["d"], r["f"]) != (s["n"], s["d"], s["f"]):
                continue
            nj = r.get("nnmjax") or {}
            byz = r.get("byzfl")
            bms = _ms(byz)
            if byz and byz.get("backend"):
                bms += f" ({byz['backend']})"
            rows.append((r["rule"], case.label, _ms(nj),
                         f"{nj['compile_s']:.2f}" if nj.get("compile_s") is not None else "-",
                         f"{r['x_stream']:.1f}" if r.get("x_stream") else "-",
                         _ms(r.get("numpy")), _ratio(r, "vs_numpy"), bms, _ratio(r, "vs_byzfl")))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def check_targets(result: dict) -> list[dict]:
    """Compare ``vs_byzfl`` with :data:`TARGETS` for the cases and rules that were run."""
    checks = []
    for case, floor, special in TARGETS:
        for r in result.get("results", []):
            if (r["n"], r["d"], r["f"]) != (case.n, case.d, case.f) or r.get("byzfl") is None:
                continue  # not a target case, or ByzFL was not timed
            need = special.get(r["rule"], floor)
            v, bound = r.get("vs_byzfl"), r.get("vs_byzfl_bound")
            if r.get("status") == "skipped":
                verdict = "n/a"
            elif v is None:
                verdict = "unknown"
            elif bound == ">=":
                verdict = "hit" if v >= need else "unknown"
            elif bound == "<=":
                verdict = "miss" if v < need else "unknown"
            else:
                verdict = "hit" if v >= need else "miss"
            checks.append({**_case_dict(case), "rule": r["rule"], "need": need,
                           "speedup": v, "bound": bound, "verdict": verdict})
    return checks


def format_targets(result: dict) -> str:
    checks = result.get("targets") or []
    if not checks:
        return "(no target case was run with ByzFL)"
    lines = []
    for c in checks:
        v = "-" if c["speedup"] is None else f"{c['bound'] or ''}{c['speedup']:.3g}x"
        lines.append(f"{c['verdict'].upper():<7} n={c['n']} d={_fmt_d(c['d'])} f={c['f']}  "
                     f"{c['rule']:<14} need >= {c['need']:g}x, got {v}")
    return "\n".join(lines)


def _jsonable(obj):
    if isinstance(obj, Case):
        return _case_dict(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_json(result: dict, path: str | os.PathLike) -> None:
    """Write ``result`` to ``path`` atomically (parent folders created)."""
    from pathlib import Path

    from nnmjax.results import atomic_write

    text = json.dumps(_jsonable(result), indent=1) + "\n"
    atomic_write(Path(path), lambda fh: fh.write(text))
