"""Aggregator throughput: nnmjax against a streaming pass, NumPy and ByzFL.

For every case ``(n, d, f)`` (float32 standard-normal rows, fixed seed) and every rule
this measures

- **nnmjax**: the jitted rule, compiled ahead of time (``compile_s``: trace, lower and
  compile), then one warm-up call and ``repeats`` timed calls, each ended by
  ``block_until_ready``; we report the median (raw samples and the minimum are kept);
- **stream**: one pass over ``x`` in the same run, jitted ``jnp.sum(x)`` and NumPy
  ``x.sum()`` (medians); the faster of the two is the floor any aggregator pays, and
  ``x_stream`` is the rule's time as a multiple of it;
- **floor**: each rule's own floor (:mod:`nnmjax.bench.floors`: its Gram pass at the GEMM
  rate of a jitted ``2048 x 2048`` product measured in the same run, plus the passes over
  ``x`` its output needs); ``x_floor`` is the rule's time as a multiple of it;
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
the streaming baselines per case, one record per (case, rule) and the checks of the
project's throughput targets against ByzFL (:data:`TARGETS`) and against the rules' floors
(:data:`FLOOR_TARGETS`).
"""
from __future__ import annotations
from __future__ import annotations

from nnmjax.bench.cases import (DEFAULT_CASES, FLOOR_TARGETS, QUICK_CASES, QUICK_RULES, SCHEMA,
                                TARGETS, BenchConfig, Case, default_rules, parse_case)
from nnmjax.bench.driver import run
from nnmjax.bench.floors import rule_floor
from nnmjax.bench.report import (check_floor_targets, check_targets, format_table,
                                 format_targets, write_json)

__all__ = ["Case", "BenchConfig", "DEFAULT_CASES", "QUICK_CASES", "QUICK_RULES", "SCHEMA",
           "TARGETS", "FLOOR_TARGETS", "default_rules", "parse_case", "run", "format_table",
           "check_targets", "check_floor_targets", "format_targets", "rule_floor",
           "write_json"]
