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


class Curves(TypedDict, total=False):
    """A run's curves: the honest loss and ``kappa_hat`` at every step, test accuracy at
    the evaluation steps; under decentralized learning the honest nodes' consensus distance
    in place of ``kappa_hat``, their mean test accuracy and their worst.

    Attributes:
        loss: the honest workers' mean training loss at each step.
        kappa_hat: the empirical robustness coefficient ``kappa_hat`` at each step.
        consensus_distance: decentralized: the honest nodes' spread at each step
            (:func:`nnmjax.optim.decentralized.consensus_distance`).
        eval_steps: the steps after which the test accuracy was measured.
        test_acc: the test accuracy (a fraction) at each of ``eval_steps`` (decentralized:
            the honest nodes' mean).
        test_acc_worst: decentralized: the worst honest node's test accuracy.
    """

    loss: list[float]
    kappa_hat: list[float]
    consensus_distance: list[float]
    eval_steps: list[int]
    test_acc: list[float]
    test_acc_worst: list[float]


def curves(config, loss, second, eval_steps, acc) -> Curves:
    """A run's :class:`Curves` from the step outputs of its program: ``second`` is
    ``kappa_hat``, or the consensus distance under decentralized learning, whose ``acc`` is
    ``(evals, [mean, worst])``.

    Examples:
        >>> from nnmjax.experiments.config import Config
        >>> from nnmjax.experiments.results import curves
        >>> sorted(curves(Config(), [1.0], [0.5], [1], [0.9]))
        ['eval_steps', 'kappa_hat', 'loss', 'test_acc']
        >>> c = curves(Config(algorithm="decentralized", n=5, f=1, tolerated_f=1), [1.0],
        ...            [0.5], [1], [[0.9, 0.8]])
        >>> c["test_acc"], c["test_acc_worst"], c["consensus_distance"]
        ([0.9], [0.8], [0.5])
    """
    if config.algorithm != "decentralized":
        return Curves(loss=loss, kappa_hat=second, eval_steps=eval_steps, test_acc=acc)
    acc = np.asarray(acc)
    return Curves(loss=loss, consensus_distance=second, eval_steps=eval_steps,
                  test_acc=acc[:, 0].tolist(), test_acc_worst=acc[:, 1].tolist())


class Summary(TypedDict, total=False):
    """A run's summary numbers; ``wall_s`` is its vmapped group's wall time, shared by
    ``vmapped_runs`` runs (``vmapped_seeds`` in records written before that name).

    Attributes:
        max_test_acc: the highest test accuracy of the run (a fraction).
        final_test_acc: the test accuracy after the last step.
        wall_s: the wall time in seconds of the vmapped group the run was part of.
        steps_per_s: the group's run-steps per second.
        vmapped_runs: the number of runs in the group.
    """

    max_test_acc: float
    final_test_acc: float
    wall_s: float
    steps_per_s: float
    vmapped_runs: int


class Record(TypedDict):
    """One run's record, ``DIR/runs/<hash>.json``: ``key`` is the run's full config key
    (:meth:`~nnmjax.experiments.config.RunSpec.record_key`), ``machine`` the backend and
    device it ran on, ``code`` the code's provenance
    (:func:`~nnmjax.experiments.provenance.code_info`).

    Attributes:
        hash: the run's :meth:`~nnmjax.experiments.config.RunSpec.hash`, the file's name.
        key: the run's full config key.
        curves: the run's :class:`Curves`.
        summary: the run's :class:`Summary`.
        machine: ``{"backend": ..., "device": ...}`` of the run.
        code: the code's provenance.
    """

    hash: str
    key: dict[str, Any]
    curves: Curves
    summary: Summary
    machine: dict[str, str]
    code: dict[str, Any]


class CorruptRecordError(RuntimeError):
    """A run record exists but cannot be read; it is left in place for inspection.

    Examples:
        >>> import pathlib, tempfile
        >>> from nnmjax.experiments.results import CorruptRecordError, read_record
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = pathlib.Path(d) / "broken.json"
        ...     _ = path.write_text("{")
        ...     try:
        ...         read_record(path)
        ...     except CorruptRecordError as e:
        ...         print(str(e).replace(d, "DIR"))
        run record DIR/broken.json is corrupt (...); inspect it, then delete it to re-run
        that run
    """


class OutputDirError(ValueError):
    """An output directory that cannot be used: not writable, a file, or someone else's.

    A ``ValueError``, raised by :func:`check_out_dir` and :func:`check_writable`.

    Examples:
        >>> import pathlib, tempfile
        >>> from nnmjax.experiments.results import OutputDirError, check_out_dir
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = (pathlib.Path(d) / "notes.txt").write_text("mine")
        ...     try:
        ...         check_out_dir(d)
        ...     except OutputDirError as e:
        ...         print(str(e).replace(d, "DIR"))
        output directory DIR holds files nnmjax did not write (notes.txt); choose a new or
        empty directory
    """


#: What ``nnmjax run`` writes into its directory (besides ``tuned-*`` and hidden files).
RUN_DIR_ENTRIES = frozenset({"runs", "partial", "logs", "plots", "summary.csv", "table.md",
                             "table.csv"})


def check_out_dir(out_dir: Path | str) -> Path:
    """Make sure ``out_dir`` can take run records before any work starts: create it, write
    and remove a probe file in it (and in its ``runs/``), and refuse a non-empty directory
    that no nnmjax run wrote (no ``runs/``, entries other than :data:`RUN_DIR_ENTRIES`).
    Raises :class:`OutputDirError` saying which.

    Args:
        out_dir: the run directory; created (with its parents) when missing.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        OutputDirError: ``out_dir`` is a file, holds files nnmjax did not write, or cannot
            be written.

    Examples:
        >>> import pathlib, tempfile
        >>> from nnmjax.experiments.results import check_out_dir
        >>> with tempfile.TemporaryDirectory() as d:
        ...     out = check_out_dir(pathlib.Path(d) / "new" / "run")
        ...     print(out.relative_to(d).as_posix(), out.is_dir())
        ...     _ = (out / "summary.csv").write_text("")
        ...     check_out_dir(out) == out  # only what a run writes: accepted
        new/run True
        True
    """
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
    :class:`OutputDirError` when that fails.

    Args:
        directory: the directory to check.

    Returns:
        ``directory`` as a :class:`~pathlib.Path`.

    Raises:
        OutputDirError: ``directory`` cannot be created or written.

    Examples:
        >>> import os, tempfile
        >>> from nnmjax.experiments.results import check_writable
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = check_writable(os.path.join(d, "a", "b"))
        ...     print(path.name, os.listdir(path))
        b []
    """
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
    """Where the record of run ``run_hash`` lives: ``out_dir/runs/<run_hash>.json``.

    Args:
        out_dir: the run directory.
        run_hash: the run's :meth:`~nnmjax.experiments.config.RunSpec.hash`.

    Returns:
        The record's path (which may not exist).

    Examples:
        >>> from nnmjax.experiments.results import record_path
        >>> record_path("out", "22b0e52c0a96a656").as_posix()
        'out/runs/22b0e52c0a96a656.json'
    """
    return Path(out_dir) / "runs" / f"{run_hash}.json"


def atomic_write(path: Path, write, *, mode: str = "w") -> None:
    """Create or replace ``path`` atomically: ``write(fh)`` fills a temporary file beside it
    (opened with ``mode``), which is flushed, fsynced and renamed over ``path``; a failure
    leaves ``path`` as it was. The file gets the permissions of an ordinary new file under
    the process's umask (``mkstemp`` alone would make it 0600).

    Args:
        path: the file to create or replace; its parent directories are created.
        write: called with the open temporary file; writes the content.
        mode: the temporary file's mode, ``"w"`` (text) or ``"wb"`` (binary).

    Raises:
        BaseException: whatever ``write`` or the file system raises; ``path`` is then
            unchanged and the temporary file removed.

    Examples:
        >>> import pathlib, tempfile
        >>> from nnmjax.experiments.results import atomic_write
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = pathlib.Path(d) / "sub" / "note.txt"
        ...     atomic_write(path, lambda fh: fh.write("first"))
        ...     try:
        ...         atomic_write(path, lambda fh: 1 / 0)
        ...     except ZeroDivisionError:
        ...         pass
        ...     print(path.read_text(), sorted(p.name for p in path.parent.iterdir()))
        first ['note.txt']
    """
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
    strings, non-finite floats as ``None`` (used by run records and benchmark files).

    Args:
        value: a value made of dicts, lists, tuples, dataclasses, NumPy arrays and scalars.

    Returns:
        The same value as dicts, lists, ``str``, ``int``, ``float``, ``bool`` and ``None``.

    Examples:
        >>> import numpy as np
        >>> from nnmjax.experiments.results import plain
        >>> plain({1: np.array([0.5, np.inf]), "n": np.int32(3), "t": (np.float32(2),)})
        {'1': [0.5, None], 'n': 3, 't': [2.0]}
    """
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
    """Atomically write ``record`` as ``DIR/runs/<run_hash>.json`` (non-finite floats -> null).

    Args:
        out_dir: the run directory (``runs/`` is created when missing).
        run_hash: the run's hash, the file's name.
        record: the :class:`Record` (NumPy values are converted, :func:`plain`).

    Returns:
        The path written.

    Examples:
        >>> import json, tempfile
        >>> from nnmjax.experiments.results import write_record
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = write_record(d, "ab12", {"hash": "ab12", "key": {"seed": 1},
        ...                                     "curves": {"loss": [0.5, float("nan")]}})
        ...     print(path.relative_to(d).as_posix(), json.loads(path.read_text())["curves"])
        runs/ab12.json {'loss': [0.5, None]}
    """
    path = record_path(out_dir, run_hash)
    text = json.dumps(plain(record), indent=1, sort_keys=True)
    atomic_write(path, lambda fh: fh.write(text))
    return path


def read_record(path: Path | str) -> Record:
    """Read one record; raise :class:`CorruptRecordError` naming the file if it is unreadable.

    Args:
        path: the record's file.

    Returns:
        The :class:`Record` as a ``dict``.

    Raises:
        CorruptRecordError: the file cannot be read, is not JSON, or has no ``key``.

    Examples:
        >>> import tempfile
        >>> from nnmjax.experiments.results import read_record, write_record
        >>> with tempfile.TemporaryDirectory() as d:
        ...     record = read_record(write_record(d, "ab12", {"hash": "ab12", "key": {"f": 1}}))
        >>> record
        {'hash': 'ab12', 'key': {'f': 1}}
    """
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
    """Every record under ``DIR/runs`` (sorted by file name).

    Args:
        out_dir: the run directory.

    Returns:
        The records, ``[]`` when there is no ``runs/``.

    Raises:
        CorruptRecordError: a record cannot be read.

    Examples:
        >>> import tempfile
        >>> from nnmjax.experiments.results import load_records, write_record
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for h in ("b2", "a1"):
        ...         _ = write_record(d, h, {"hash": h, "key": {}})
        ...     print([r["hash"] for r in load_records(d)], load_records(d + "/none"))
        ['a1', 'b2'] []
    """
    runs = Path(out_dir) / "runs"
    return [read_record(p) for p in sorted(runs.glob("*.json"))] if runs.is_dir() else []


def write_summary(out_dir: Path | str, records: list[Record] | None = None) -> Path:
    """Rebuild ``DIR/summary.csv`` (one row per run, :data:`SUMMARY_COLUMNS` first): a
    record's ``summary.wall_s`` (its vmapped group's) becomes ``group_wall_s``, and
    ``run_wall_s`` is that shared among the group's ``vmapped_runs`` runs.

    Args:
        out_dir: the run directory.
        records: the records to list; ``None``: those under ``out_dir``
            (:func:`load_records`).

    Returns:
        The path of ``summary.csv``.

    Raises:
        CorruptRecordError: a record under ``out_dir`` cannot be read.

    Examples:
        >>> import csv, tempfile
        >>> from nnmjax.experiments.results import write_summary
        >>> record = {"hash": "ab12", "key": {"attack": "alie", "rule": "cwtm", "seed": 1},
        ...           "summary": {"max_test_acc": 0.9, "wall_s": 3.0, "vmapped_runs": 2}}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with open(write_summary(d, [record])) as fh:
        ...         row = next(csv.DictReader(fh))
        >>> row["rule"], row["max_test_acc"], row["group_wall_s"], row["run_wall_s"]
        ('cwtm', '0.9', '3.0', '1.5')
    """
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
