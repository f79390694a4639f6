"""``nnmjax.bench.run``: every case and rule through the worker, into one result dict."""
from __future__ import annotations

import sys
import time
from dataclasses import asdict
from typing import Any, Callable

from nnmjax.bench.byzfl_rules import byzfl_skip, byzfl_spec
from nnmjax.bench.cases import SCHEMA, BenchConfig, check_rule, default_rules, rule_skip
from nnmjax.bench.floors import GEMM_SIDE, rule_floor
from nnmjax.bench.numpy_rules import numpy_fn
from nnmjax.bench.report import (best_byzfl, check_floor_targets, check_targets, fill_ratios,
                                 fmt_ms, row_text)
from nnmjax.bench.runner import Runner
from nnmjax.experiments.provenance import code_info, source_digest


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
    ``floor_ms`` the faster median, and ``gemm``, the jitted ``2048 x 2048`` product with its
    ``flops_per_s``); ``results`` (per case and rule: ``nnmjax``, ``numpy``
    and ``byzfl`` records with ``status`` (ok, skipped, timeout, error, crashed, none),
    raw ``samples_ms``, ``warmup_ms``, ``median_ms``, ``min_ms``, nnmjax's ``compile_s``,
    ByzFL's per-``backends`` records and the faster ``backend``, and ``stream``, the jitted
    streaming pass timed in the same interleaved rounds; then ``x_stream`` (over that
    pass), the rule's ``floor`` (:func:`nnmjax.bench.floors.rule_floor`) and ``x_floor``,
    ``vs_numpy``, ``vs_byzfl`` and their ``*_bound`` ('>=' or '<=' where one side timed
    out)); ``targets``
    (see :data:`TARGETS`); ``floor_targets`` (see :data:`FLOOR_TARGETS`); ``wall_s``.
    """
    cfg = cfg or BenchConfig()
    rules = list(cfg.rules) if cfg.rules is not None else default_rules()
    for name in rules:
        check_rule(name)
    runner = Runner(cfg)
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
        config.update(cases=[asdict(c) for c in cfg.cases], rules=rules,
                      dtype="float32", data="standard normal, numpy default_rng(seed)",
                      byzfl_available=byzfl_ok,
                      byzfl_names={r: byzfl_spec(r) for r in rules})
        code = code_info()
        result.update(machine=info, code=code, config=config, streams=[], results=[],
                      targets=[], floor_targets=[])
        if cfg.byzfl and not byzfl_ok:
            _log("ByzFL is not importable: skipping its timings", verbose)
        for case in cfg.cases:
            _log(f"== {case.label}", verbose)
            stream = runner.measure({**common, "case": case,
                                     "impls": ["stream-jax", "stream-numpy", "gemm-jax"]})
            gemm = stream.pop("gemm-jax")
            rate = (2 * GEMM_SIDE ** 3 / (gemm["median_ms"] / 1e3)
                    if gemm.get("status") == "ok" else None)
            stream = {"jax": stream["stream-jax"], "numpy": stream["stream-numpy"]}
            floors = [r["median_ms"] for r in stream.values() if r.get("status") == "ok"]
            stream_rec = {**asdict(case), **stream, "floor_ms": min(floors) if floors else None,
                          "gemm": {**gemm, "flops_per_s": rate}}
            result["streams"].append(stream_rec)
            _log(f"   stream: jnp.sum {fmt_ms(stream['jax'])} ms, "
                 f"x.sum {fmt_ms(stream['numpy'])} ms; GEMM "
                 f"{rate / 1e9 if rate else float('nan'):.0f} GFLOP/s", verbose)

            def finish(rec):
                """The ratios of ``rec``, its floor, then ``rec`` into the results; the
                streaming pass timed in the rule's own rounds, where it ran, is the floor."""
                own = rec.get("stream") or {}
                stream_ms = own.get("median_ms") if own.get("status") == "ok" else None
                stream_ms = stream_ms or stream_rec["floor_ms"]
                rec["floor"] = (rule_floor(rec["rule"], case, stream_ms=stream_ms,
                                           gemm_flops_per_s=rate) if stream_ms else None)
                fill_ratios(rec, stream_ms, rec["floor"] and rec["floor"]["floor_ms"])
                result["results"].append(rec)

            for name in rules:
                rec: dict[str, Any] = {**asdict(case), "rule": name}
                skip = rule_skip(name, case)
                if skip:
                    rec.update(status="skipped", reason=skip,
                               nnmjax={"status": "skipped", "reason": skip})
                    rec["numpy"] = {"status": "skipped", "reason": skip} if cfg.numpy else None
                    rec["byzfl"] = {"status": "skipped", "reason": skip} if byzfl_ok else None
                    finish(rec)
                    _log(f"   {name:<14} skipped: {skip}", verbose)
                    continue
                impls = ["nnmjax", "stream-jax"]  # the floor, in the same rounds
                rec["numpy"] = None
                if cfg.numpy:
                    if numpy_fn(name, case.f) is not None:
                        impls.append("numpy")
                    else:
                        rec["numpy"] = {"status": "none",
                                        "reason": "no straightforward NumPy formulation"}
                rec["byzfl"] = None
                if byzfl_ok:
                    spec = byzfl_spec(name)
                    bskip = None if spec else f"ByzFL has no counterpart of {name!r}"
                    bskip = bskip or byzfl_skip(name, case, cfg.gather_limit_gb)
                    if bskip:
                        rec["byzfl"] = {"status": "skipped", "reason": bskip}
                    else:
                        impls += ["byzfl-numpy", "byzfl-torch"]
                out = runner.measure({**common, "case": case, "rule": name, "impls": impls})
                rec["nnmjax"], rec["stream"] = out["nnmjax"], out["stream-jax"]
                if "numpy" in out:
                    rec["numpy"] = out["numpy"]
                if "byzfl-numpy" in out:
                    rec["byzfl"] = {"classes": byzfl_spec(name),
                                    "backends": {"numpy": out["byzfl-numpy"],
                                                 "torch": out["byzfl-torch"]}}
                    best_byzfl(rec["byzfl"])
                rec["status"] = rec["nnmjax"].get("status", "error")
                finish(rec)
                _log("   " + row_text(rec), verbose)
                if on_update:
                    on_update(result)
        result["targets"] = check_targets(result)
        result["floor_targets"] = check_floor_targets(result)
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

