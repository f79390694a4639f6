"""Where a program's arrays live: the ``(runs, workers)`` device mesh of a config.

Without a mesh every array is an ordinary device array. With ``mesh = {runs = r, workers =
w}`` the leading (run) axis of every per-run array is split over ``r`` devices and per-worker
arrays also over ``w``; each process builds only the blocks of its own devices, so a
``jax.distributed`` run never holds another host's data.

Examples:
    >>> import numpy as np
    >>> from nnmjax.experiments.config import Config
    >>> place = Placement(experiment_mesh(Config()))      # no mesh: plain device arrays
    >>> place.fetch(place.put(np.arange(3, dtype=np.float32)))
    array([0., 1., 2.], dtype=float32)
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nnmjax.experiments.config import Config
from nnmjax.optim.transforms import WorkerMomentumState
from nnmjax.scale.sharding import worker_mesh

__all__ = ["Placement", "experiment_mesh", "spans_processes"]


def experiment_mesh(config: Config) -> Mesh | None:
    """The ``(runs, workers)`` mesh of ``config.mesh`` (``None`` without one): over this
    process's devices when they suffice (each process then runs its own slice of a grid),
    otherwise over every process's devices (all processes run the same programs)."""
    sizes = dict(config.mesh)
    if not sizes:
        return None
    devices = None if spans_processes(config) else jax.local_devices()
    return worker_mesh(sizes.get("workers", 1), runs=sizes.get("runs", 1), devices=devices)


def spans_processes(config: Config) -> bool:
    """Whether ``config``'s mesh needs more devices than this process has, so that every
    process of a ``jax.distributed`` run takes part in each of its programs."""
    sizes = dict(config.mesh)
    return sizes.get("runs", 1) * sizes.get("workers", 1) > jax.local_device_count()


class Placement(NamedTuple):
    """How a program's arrays are laid out on ``mesh`` (``None``: one device)."""

    mesh: Mesh | None

    @property
    def runs(self) -> int:
        """Devices on the run axis (runs are padded to a multiple of it)."""
        return 1 if self.mesh is None else self.mesh.shape["runs"]

    @property
    def workers(self) -> int:
        """Devices on the worker axis (workers are padded to a multiple of it)."""
        return 1 if self.mesh is None else self.mesh.shape["workers"]

    def put(self, array: np.ndarray, *, replicated: bool = False) -> jax.Array:
        """``array`` on the device(s), its leading (run) axis split over the mesh's ``runs``
        axis unless ``replicated``."""
        return self.build(array.shape, lambda index: array[index],
                          P() if replicated else P("runs"))

    def build(self, shape: tuple, block: Callable[[tuple], np.ndarray], spec: P) -> jax.Array:
        """The array of ``shape`` whose block at ``index`` (a tuple of slices) is
        ``block(index)``, laid out on the mesh as ``spec``; each process builds only the blocks
        of its own devices."""
        if self.mesh is None:
            return jnp.asarray(block(tuple(slice(None) for _ in shape)))
        return jax.make_array_from_callback(shape, NamedSharding(self.mesh, spec), block)

    def state_shardings(self, state: Any) -> Any:
        """Where a run state lives: runs over the mesh's ``runs`` axis; per-worker momenta also
        over ``workers`` when it divides their number; the rest replicated over ``workers``.
        Pinned as the chunks' output layout, so every chunk compiles once."""
        runs = NamedSharding(self.mesh, P("runs"))

        def momentum(a):
            return (NamedSharding(self.mesh, P("runs", "workers"))
                    if a.shape[1] % self.workers == 0 else runs)

        server = tuple(jax.tree.map(momentum, s) if isinstance(s, WorkerMomentumState)
                       else jax.tree.map(lambda _: runs, s) for s in state.opt_state[0])
        rest = jax.tree.map(lambda _: runs,
                            state._replace(opt_state=(None,) + state.opt_state[1:]))
        return rest._replace(opt_state=(server,) + rest.opt_state[1:])

    @staticmethod
    def fetch(a: jax.Array) -> np.ndarray:
        """``a`` as NumPy on every process, gathered when it spans several processes."""
        if not a.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)
