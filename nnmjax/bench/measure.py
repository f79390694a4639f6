"""The tasks a benchmark worker runs: build and time implementations, read the machine.

Everything here runs in the worker process (or in-process with ``isolate=False``); a task
is a dict, its result is sent back through a pipe (see :mod:`nnmjax.bench.runner`).
"""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
import traceback

import numpy as np

from nnmjax.bench import hugepages
from nnmjax.bench.byzfl_rules import byzfl_factories, import_byzfl
from nnmjax.bench.cases import Case, rule_stages
from nnmjax.bench.floors import GEMM_SIDE
from nnmjax.bench.numpy_rules import numpy_fn

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


def _nnmjax_fn(name: str, f: int):
    """The rule (or pre-aggregator) ``name`` as nnmjax runs it: ``x -> output``."""
    import jax

    from nnmjax.robust import preaggregators, rules

    if name in preaggregators.PREAGGREGATORS:
        pre = preaggregators.PREAGGREGATORS[name]
        return lambda x: pre(x, f)
    r = rules.rule(name, f)
    if r.randomized:
        return lambda x: r(x, key=jax.random.key(0))
    return r


def _make_call(impl: str, rule: str | None, case: Case, seed: int):
    """``(call, prepare)`` for one implementation: ``call(*prepare())`` runs it once
    (to completion); ``prepare`` (untimed) supplies fresh inputs."""
    x = _data(case, seed)["np"]
    if impl in ("stream-jax", "nnmjax"):
        import jax
        import jax.numpy as jnp

        from nnmjax.xla_options import jit

        xj = _jax_data(case, seed)
        # the rules compile as nnmjax's programs do; the streaming floor with XLA's default
        # options, its faster reduction on CPU
        compiled = (jax.jit(jnp.sum) if impl == "stream-jax"
                    else jit(_nnmjax_fn(rule, case.f))).lower(xj).compile()
        return (lambda a: _block(compiled(a))), (lambda: (xj,))
    if impl == "gemm-jax":  # the GEMM rate of the rules' floors (nnmjax.bench.floors)
        import jax
        import jax.numpy as jnp

        a = jax.random.normal(jax.random.key(seed), (GEMM_SIDE, GEMM_SIDE), jnp.float32)
        compiled = jax.jit(jnp.matmul).lower(a, a).compile()
        return (lambda a: _block(compiled(a, a))), (lambda: (a,))
    if impl == "stream-numpy":
        return (lambda a: a.sum()), (lambda: (x,))
    if impl == "numpy":
        return numpy_fn(rule, case.f), (lambda: (x,))
    if impl in ("byzfl-numpy", "byzfl-torch"):
        byzfl = import_byzfl()
        if byzfl is None:
            raise ImportError("import byzfl failed")
        import torch

        factories = byzfl_factories(byzfl, case.f)
        stages = rule_stages(rule)
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
        if impl in ("nnmjax", "stream-jax", "gemm-jax"):
            recs[impl]["compile_s"] = time.perf_counter() - t0

    def once(phase, impl):
        """Seconds one call of ``impl`` took; ``None`` (recorded, dropped) if it raised."""
        progress((phase, impl))
        call, prepare = calls[impl]
        try:
            args = prepare()
            t0 = time.perf_counter()
            call(*args)
        except Exception as e:
            recs[impl] = _error(e)
            del calls[impl]
            return None
        return time.perf_counter() - t0

    for impl in list(calls):
        warm = once("warm-up", impl)
        if warm is None:
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
            dt = once("call", impl)
            if dt is None:
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
        byzfl = import_byzfl()
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


def run_task(task, progress):
    try:
        return {"ok": _TASKS[task["kind"]](task, progress)}
    except Exception as e:  # record, do not abort the whole benchmark
        return {"ok": None, "error": _error(e)}


def worker_main(conn):
    """Worker process loop: receive a task, stream progress messages, send the result."""
    conn.send(("ready", None))
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        result = run_task(task, lambda step: conn.send(("progress", step)))
        conn.send(("done", result))
