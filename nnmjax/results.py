"""Run records that are never lost: one JSON file per run, written atomically.

``DIR/runs/<hash>.json`` holds a run's full config key, its curves and its
summary numbers; ``<hash>`` is a hash of the full config key, so re-running a
grid skips what is done. A record that does not parse is reported (never
silently overwritten). ``DIR/summary.csv`` is rebuilt from the records.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CorruptRecordError", "atomic_write", "write_record", "read_record", "load_records", "write_summary",
           "SUMMARY_COLUMNS", "record_path"]

SUMMARY_COLUMNS = ("dataset", "model", "algorithm", "n", "f", "partition", "alpha", "attack",
                   "rule", "seed", "steps", "max_test_acc", "final_test_acc", "wall_s",
                   "steps_per_s", "hash")


class CorruptRecordError(RuntimeError):
    """A run record exists but cannot be read; it is left in place for inspection."""


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


def write_record(out_dir: Path | str, run_hash: str, record: dict[str, Any]) -> Path:
    """Atomically write ``record`` as ``DIR/runs/<run_hash>.json`` (non-finite floats -> null)."""
    path = record_path(out_dir, run_hash)
    text = json.dumps(plain(record), indent=1, sort_keys=True)
    atomic_write(path, lambda fh: fh.write(text))
    return path


def read_record(path: Path | str) -> dict[str, Any]:
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


def load_records(out_dir: Path | str) -> list[dict[str, Any]]:
    """Every record under ``DIR/runs`` (sorted by file name)."""
    runs = Path(out_dir) / "runs"
    return [read_record(p) for p in sorted(runs.glob("*.json"))] if runs.is_dir() else []


def write_summary(out_dir: Path | str, records: list[dict[str, Any]] | None = None) -> Path:
    """Rebuild ``DIR/summary.csv`` (one row per run, :data:`SUMMARY_COLUMNS` first)."""
    records = load_records(out_dir) if records is None else records
    path = Path(out_dir) / "summary.csv"
    rows = []
    for r in records:
        row = {**r["key"], **r["summary"], "hash": r["hash"]}
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
