"""Re-run finished runs of a grid and compare them with their records, bit for bit.

:func:`check_grid` (``nnmjax check CONFIG --out DIR``) rebuilds each finished
(setting, attack, rule) group of a grid exactly as :func:`nnmjax.experiments.grid.run_grid` compiled it
(the same runs vmapped together in the same order, chunks ending at the same evaluation
points), runs its first ``steps`` steps, and compares every run's training loss, kappa-hat
and test accuracy with the curves in its record. The same code on the same kind of machine
gives the same bits; a record written by other code (``code.source_sha256``) may differ by
float rounding that training amplifies.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from nnmjax.experiments import grid, results
from nnmjax.experiments.config import Config
from nnmjax.experiments.provenance import source_digest

__all__ = ["Check", "check_grid"]


class Check(NamedTuple):
    """One run re-run for ``steps`` steps against its record: ``equal`` when loss, kappa-hat
    (decentralized: the consensus distance) and test accuracy (and the worst node's) are
    all bit for bit the record's; otherwise the largest relative loss
    difference and absolute kappa-hat / accuracy differences. ``same_code``: whether the
    record was written by this source (``None`` when it does not say)."""

    hash: str
    attack: str
    rule: str
    seed: int
    steps: int
    equal: bool
    loss_rel: float
    kappa_abs: float
    acc_abs: float
    record_commit: str | None
    same_code: bool | None


def _curve(values, n: int | None = None) -> np.ndarray:
    values = values if n is None else values[:n]
    return np.asarray([np.nan if v is None else v for v in values], np.float32)


def _diff(a: np.ndarray, b: np.ndarray, *, relative: bool = False) -> float:
    both = np.isnan(a) & np.isnan(b)
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    if relative:
        d = d / np.maximum(np.abs(b.astype(np.float64)), np.finfo(np.float32).tiny)
    d = np.where(both, 0.0, d)
    return float(np.nanmax(np.where(np.isnan(d), np.inf, d))) if d.size else 0.0


def check_grid(config: Config | Sequence[Config], out_dir: Path | str, *, attack: str | None = None,
               rule: str | None = None, steps: int | None = None) -> list[Check]:
    """Re-run the finished runs of ``config`` in ``out_dir`` (those of ``attack`` and ``rule``
    when given, with every run they were vmapped with) for their first ``steps`` steps (an
    evaluation point; default the first) and compare them with their records. Raises
    ``ValueError`` when no finished run matches or ``steps`` is not an evaluation point."""
    finished, _ = grid.pending_runs(config, out_dir)
    chosen = {grid.group_key(s) for s in finished
              if (attack is None or s.attack == attack) and (rule is None or s.rule == rule)}
    if not chosen:
        raise ValueError(f"no finished run of attack={attack!r} rule={rule!r} in {out_dir}")
    # a group is rebuilt from every finished run of its (setting, attack, rule), as it ran
    members = [s for s in finished if grid.group_key(s) in chosen]
    datasets = grid.load_datasets(members)
    current = source_digest()
    checks = []
    for specs in grid.program_groups(members, datasets=datasets):
        cfg = specs[0].config
        points = grid.eval_points(cfg.steps, cfg.eval_every)
        stop = points[0] if steps is None else steps
        if stop not in points:
            raise ValueError(f"steps must be an evaluation point of the runs (a multiple of "
                             f"eval_every={cfg.eval_every}, or {cfg.steps}); got {steps!r}")
        exp = grid.build_group(specs, datasets)
        loss, kappa, acc, at = [], [], [], []
        for t, _, l, k, a in grid.chunks(exp, exp.init(), cfg, stop=stop):
            loss.append(np.asarray(l))
            kappa.append(np.asarray(k))
            acc.append(np.asarray(a))
            at.append(t)
        loss, kappa, acc = (np.concatenate(loss, axis=1), np.concatenate(kappa, axis=1),
                            np.stack(acc, axis=1))
        for i, spec in enumerate(specs):
            rec = results.read_record(results.record_path(out_dir, spec.hash()))
            curves = rec["curves"]
            if list(curves["eval_steps"][:len(at)]) != at:
                raise ValueError(f"record {spec.hash()} was evaluated at other steps "
                                 f"({curves['eval_steps'][:len(at)]} vs {at})")
            mine = results.curves(cfg, loss[i], kappa[i], at, acc[i])
            second = "kappa_hat" if "kappa_hat" in mine else "consensus_distance"
            names = ["loss", second, "test_acc"] + [k for k in ("test_acc_worst",) if k in mine]
            lengths = {"loss": stop, second: stop}
            want = [_curve(curves[k], lengths.get(k, len(at))) for k in names]
            got = [np.asarray(mine[k]) for k in names]
            equal = all(np.array_equal(g, w, equal_nan=True) for g, w in zip(got, want))
            code = rec.get("code") or {}
            digest = code.get("source_sha256")
            checks.append(Check(spec.hash(), spec.attack, spec.rule, spec.seed, stop, equal,
                                _diff(got[0], want[0], relative=True), _diff(got[1], want[1]),
                                _diff(got[2], want[2]), code.get("git_commit"),
                                None if digest is None else digest == current))
        del exp
    return checks
