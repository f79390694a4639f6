"""Group checkpoints: a running group's state and curves saved between chunks, so a grid killed
mid-group resumes at its last checkpoint instead of the group's first step.

``DIR/partial/<group>.npz`` (``<group>``: a digest of the group's run hashes) holds every
leaf of the vmapped :class:`~nnmjax.sim.RunState` (PRNG keys as their key data), the
curves so far, the steps done, the wall time spent and the ``source_sha256`` of the code that
wrote it. Chunks end at the evaluation points whether or not a run resumes, so a resumed group
computes exactly what an uninterrupted one does: its records are the same bit for bit. A
checkpoint written by other code, or whose leaves do not match the state's shapes, is
discarded with a warning and its group restarts, so a record never mixes two codes.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import NamedTuple, Sequence

import jax
import numpy as np

from nnmjax.experiments import results

__all__ = ["Progress", "group_path", "save", "load", "peek"]


class Progress(NamedTuple):
    """A group's curves after ``steps`` steps: ``loss``/``kappa`` ``(runs, steps)``,
    ``acc`` ``(runs, len(at))`` at steps ``at``; ``wall_s`` spent so far.

    Attributes:
        steps: the steps done.
        loss: ``(runs, steps)`` honest training loss of every run at every step.
        kappa: ``(runs, steps)`` ``kappa_hat`` of every run at every step.
        acc: ``(runs, len(at))`` test accuracy at the evaluation steps ``at``.
        at: the evaluation steps so far.
        wall_s: the wall time spent on the group so far, in seconds.
    """

    steps: int
    loss: np.ndarray
    kappa: np.ndarray
    acc: np.ndarray
    at: list[int]
    wall_s: float


def group_path(out_dir: Path | str, run_hashes: Sequence[str]) -> Path:
    """Where the checkpoint of the group of runs ``run_hashes`` lives.

    Args:
        out_dir: the run directory.
        run_hashes: the hashes of the group's runs, in any order.

    Returns:
        ``out_dir/partial/<digest>.npz``, ``<digest>`` 16 hex digits of the sorted hashes.

    Examples:
        >>> from nnmjax.experiments.checkpoint import group_path
        >>> path = group_path("out", ["b2", "a1"])
        >>> path == group_path("out", ["a1", "b2"]), path.parent.as_posix(), len(path.stem)
        (True, 'out/partial', 16)
    """
    digest = hashlib.sha256("\n".join(sorted(run_hashes)).encode()).hexdigest()[:16]
    return Path(out_dir) / "partial" / f"{digest}.npz"


def _is_key(leaf) -> bool:
    return jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def save(path: Path, state, progress: Progress, *, source: str) -> None:
    """Atomically write ``state`` (any pytree of arrays) and ``progress`` to ``path``.

    Args:
        path: the checkpoint file (:func:`group_path`); its directory is created.
        state: the group's state, a pytree of arrays (typed PRNG keys included).
        progress: the group's :class:`Progress`.
        source: the code's ``source_sha256``; :func:`load` resumes only the same code.

    Examples:
        >>> import pathlib, tempfile
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from nnmjax.experiments import checkpoint
        >>> state = {"w": jnp.arange(3.0), "key": jax.random.key(0)}
        >>> curve = np.zeros((1, 2), np.float32)
        >>> progress = checkpoint.Progress(2, curve, curve, np.ones((1, 1)), [2], 1.5)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = pathlib.Path(d) / "partial" / "group.npz"
        ...     checkpoint.save(path, state, progress, source="abc")
        ...     (restored, back) = checkpoint.load(path, state, source="abc")
        >>> restored["w"], back.steps, back.at, back.wall_s
        (Array([0., 1., 2.], dtype=float32), 2, [2], 1.5)
    """
    leaves = jax.tree.leaves(state)
    arrays = {f"leaf_{i}": np.asarray(jax.random.key_data(a) if _is_key(a) else a)
              for i, a in enumerate(leaves)}
    results.atomic_write(path, lambda fh: np.savez(
        fh, **arrays, steps=progress.steps, loss=progress.loss, kappa=progress.kappa,
        acc=progress.acc, at=np.asarray(progress.at, np.int64), wall_s=progress.wall_s,
        source=np.str_(source)), mode="wb")


def _discard(path: Path, why: str) -> None:
    warnings.warn(f"checkpoint {path} discarded ({why}); its group restarts from step 0",
                  stacklevel=3)
    path.unlink()


def peek(path: Path, *, source: str | None) -> tuple[int, bool] | None:
    """``(steps, same_code)`` of the checkpoint at ``path`` (``None`` when there is none or
    it is unreadable); one written by other code would be discarded, not resumed.

    Args:
        path: the checkpoint file.
        source: the current code's ``source_sha256``.

    Returns:
        ``(steps, same_code)``, or ``None``; the file is left as it is.

    Examples:
        >>> import pathlib, tempfile
        >>> import jax.numpy as jnp, numpy as np
        >>> from nnmjax.experiments import checkpoint
        >>> curve = np.zeros((1, 4), np.float32)
        >>> progress = checkpoint.Progress(4, curve, curve, np.ones((1, 1)), [4], 2.0)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = pathlib.Path(d) / "group.npz"
        ...     missing = checkpoint.peek(path, source="abc")
        ...     checkpoint.save(path, {"w": jnp.zeros(2)}, progress, source="abc")
        ...     found = checkpoint.peek(path, source="abc"), checkpoint.peek(path, source="new")
        >>> missing, found
        (None, ((4, True), (4, False)))
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            return int(z["steps"]), str(z["source"]) == source
    except (OSError, ValueError, KeyError):
        return None


def load(path: Path, like, *, source: str):
    """``(state, progress)`` from the checkpoint at ``path``, each leaf placed like the same leaf
    of ``like`` (the group's initial state); ``None`` when there is none, or when it was written
    by other code or for other shapes (then it is deleted, with a warning).

    Args:
        path: the checkpoint file.
        like: the group's initial state: the pytree structure, shapes, dtypes, shardings
            and PRNG key implementations to restore.
        source: the current code's ``source_sha256``.

    Returns:
        ``(state, progress)`` (a :class:`Progress`), or ``None``.

    Examples:
        A checkpoint written by other code is discarded (:func:`save` shows a resume):

        >>> import pathlib, tempfile, warnings
        >>> import jax.numpy as jnp, numpy as np
        >>> from nnmjax.experiments import checkpoint
        >>> curve = np.zeros((1, 2), np.float32)
        >>> progress = checkpoint.Progress(2, curve, curve, np.ones((1, 1)), [2], 1.0)
        >>> with tempfile.TemporaryDirectory() as d, warnings.catch_warnings(record=True) as w:
        ...     path = pathlib.Path(d) / "group.npz"
        ...     checkpoint.save(path, {"w": jnp.zeros(2)}, progress, source="old")
        ...     print(checkpoint.load(path, {"w": jnp.zeros(2)}, source="new"), path.exists())
        None False
        >>> print(str(w[0].message).replace(d, "DIR"))
        checkpoint DIR/group.npz discarded (written by other code); its group restarts from
        step 0
    """
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            saved = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        _discard(path, f"unreadable: {e}")
        return None
    if str(saved["source"]) != source:
        _discard(path, "written by other code")
        return None
    leaves, treedef = jax.tree.flatten(like)
    restored = []
    for i, ref in enumerate(leaves):
        data = saved.get(f"leaf_{i}")
        want = jax.random.key_data(ref) if _is_key(ref) else ref
        if data is None or data.shape != want.shape or data.dtype != want.dtype:
            _discard(path, f"leaf {i} does not match the state")
            return None
        data = jax.device_put(data, ref.sharding)
        restored.append(jax.random.wrap_key_data(data, impl=jax.random.key_impl(ref))
                        if _is_key(ref) else data)
    if f"leaf_{len(leaves)}" in saved:
        _discard(path, "more leaves than the state")
        return None
    progress = Progress(int(saved["steps"]), saved["loss"], saved["kappa"], saved["acc"],
                        [int(t) for t in saved["at"]], float(saved["wall_s"]))
    return jax.tree.unflatten(treedef, restored), progress
