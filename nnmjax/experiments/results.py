"""Run records that are never lost: one JSON file per run, written atomically.

``DIR/runs/<hash>.json`` holds a run's full config key, its curves and its
summary numbers; ``<hash>`` is a hash of the full config key, so re-running a
grid skips what is done. A record that does not parse is reported (never
silently overwritten). ``DIR/summary.csv`` is rebuilt from the records: one row per run,
its config key and summary numbers. A record's ``summary.wall_s`` is the wall time of the
whole vmapped group it ran in (``summary.vmapped_runs`` runs; ``vmapped_seeds`` in records
written before that name); ``summary.csv`` shows it as ``group_wall_s`` beside
``run_wall_s`` = ``group_wall_s / vmapped_runs``, the group's time shared among its runs
(so a group's ``run_wall_s`` sum to its wall time), and ``vmapped_runs``.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

__all__ = ["Record", "Curves", "Summary", "CorruptRecordError", "OutputDirError", "check_out_dir", "check_writable",
           "atomic_write", "write_record", "read_record", "load_records", "write_summary",
           "SUMMARY_COLUMNS", "record_path"]

SUMMARY_COLUMNS = ("dataset", "model", "algorithm", "n", "f", "partition", "alpha", "attack",
                   "rule", "seed", "steps", "max_test_acc", "final_test_acc", "run_wall_s",
                   "group_wall_s", "vmapped_runs", "steps_per_s", "hash")


class Curves(TypedDict):
    """A run's curves: the honest loss and ``kappa_hat`` at every step, test accuracy at
    the evaluation steps."""

    loss: list[float]
    kappa_hat: list[float]
    eval_steps: list[int]
    test_acc: list[float]


class Summary(TypedDict, total=False):
    """A run's summary numbers; ``wall_s`` is its vmapped group's wall time, shared by
    ``vmapped_runs`` runs (``vmapped_seeds`` in records written before that name)."""

    max_test_acc: float
    final_test_acc: float
    wall_s: float
    steps_per_s: float
    vmapped_runs: int


class Record(TypedDict):
    """One run's record, ``DIR/runs/<hash>.json``: ``key`` is the run's full config key
    (:meth:`~nnmjax.experiments.config.RunSpec.record_key`), ``machine`` the backend and
    device it ran on, ``code`` the code's provenance (:func:`~nnmjax.experiments.provenance.code_info`)."""

    hash: str
    key: dict[str, Any]
    curves: Curves
    summary: Summary
    machine: dict[str, str]
    code: dict[str, Any]


class CorruptRecordError(RuntimeError):
    """A run record exists but cannot be read; it is left in place for inspection."""


class OutputDirError(ValueError):
    """An output directory that cannot be used: not writable, a file, or someone else's."""


#: What ``nnmjax run`` writes into its directory (besides ``tuned-*`` and hidden files).
RUN_DIR_ENTRIES = frozenset({"runs", "partial", "logs", "plots", "summary.csv", "table.md",
                             "table.csv"})


def check_out_dir(out_dir: Path | str) -> Path:
    """Make sure ``out_dir`` can take run records before any work starts: create it, write
    and remove a probe file in it (and in its ``runs/``), and refuse a non-empty directory
    that no nnmjax run wrote (no ``runs/``, entries other than :data:`RUN_DIR_ENTRIES`).
    Raises :class:`OutputDirError` saying which."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output directory {out} is a file, not a directory")
    if out.is_dir() and not (out / "runs").is_dir():
        foreign = sorted(p.name for p in out.iterdir()
                         if p.name not in RUN_DIR_ENTRIES and not p.name.startswith((".", "tuned-")))
        if foreign:
            shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
            raise OutputDirError(f"output directory {out} holds files nnmjax did not write "
                                 f"({shown}); choose a new or empty directory")
    check_writable(out)
    if (out / "runs").is_dir():
        check_writable(out / "runs")
    return out


def check_writable(directory: Path | str) -> Path:
    """Create ``directory`` (and its parents) and write and remove a probe file in it;
    :class:`OutputDirError` when that fails."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputDirError(f"output directory {directory} cannot be written: "
                             f"{e.strerror or e}") from None
    return directory


def record_path(out_dir: Path | str, run_hash: str) -> Path:
    return Path(out_dir) / "runs" / f"{run_hash}.json"


def atomic_write(path: Path, write, *, mode: str = "w") -> None:
    """Create or replace ``path`` atomically: ``write(fh)`` fills a temporary file beside it
    (opened with ``mode``), which is flushed, fsynced and renamed over ``path``; a failure
    leaves ``path`` as it was. The file gets the permissions of an ordinary new file under
    the process's umask (``mkstemp`` alone would make it 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def plain(value: Any):
    """``value`` as JSON-able Python: dataclasses and NumPy values converted, keys as
    strings, non-finite floats as ``None`` (used by run records and benchmark files)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if np.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_record(out_dir: Path | str, run_hash: str, record: Record) -> Path:
    """Atomically write ``record`` as ``DIR/runs/<run_hash>.json`` (non-finite floats -> null)."""
    path = record_path(out_dir, run_hash)
    text = json.dumps(plain(record), indent=1, sort_keys=True)
    atomic_write(path, lambda fh: fh.write(text))
    return path


def read_record(path: Path | str) -> Record:
    """Read one record; raise :class:`CorruptRecordError` naming the file if it is unreadable."""
    path = Path(path)
    try:
        with open(path) as fh:
            data = json.load(fh)
        if not isinstance(data, dict) or "key" not in data:
            raise ValueError("missing 'key'")
        return data
    except (OSError, ValueError) as e:
        raise CorruptRecordError(
            f"run record {path} is corrupt ({e}); inspect it, then delete it to re-run that run"
        ) from None


def load_records(out_dir: Path | str) -> list[Record]:
    """Every record under ``DIR/runs`` (sorted by file name)."""
    runs = Path(out_dir) / "runs"
    return [read_record(p) for p in sorted(runs.glob("*.json"))] if runs.is_dir() else []


def write_summary(out_dir: Path | str, records: list[Record] | None = None) -> Path:
    """Rebuild ``DIR/summary.csv`` (one row per run, :data:`SUMMARY_COLUMNS` first): a
    record's ``summary.wall_s`` (its vmapped group's) becomes ``group_wall_s``, and
    ``run_wall_s`` is that shared among the group's ``vmapped_runs`` runs."""
    records = load_records(out_dir) if records is None else records
    path = Path(out_dir) / "summary.csv"
    rows = []
    for r in records:
        summary = dict(r["summary"])
        runs = summary.pop("vmapped_runs", summary.pop("vmapped_seeds", 1))
        summary.pop("vmapped_seeds", None)
        wall = summary.pop("wall_s", None)
        row = {**r["key"], **summary, "hash": r["hash"], "vmapped_runs": runs,
               "group_wall_s": wall, "run_wall_s": None if wall is None else wall / runs}
        rows.append(row)
    extra = sorted({k for row in rows for k in row} - set(SUMMARY_COLUMNS))
    columns = list(SUMMARY_COLUMNS) + extra

    def write(fh):
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        for row in sorted(rows, key=lambda r: (str(r["attack"]), str(r["rule"]), r["seed"])):
            w.writerow({k: row.get(k) for k in columns})

    atomic_write(path, write)
    return path
