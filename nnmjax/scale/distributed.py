"""Several processes (hosts) through ``jax.distributed``.

:func:`initialize` connects this process to the others (on CPU it selects the gloo
collectives, so sharded rules also work across CPU hosts). Afterwards ``jax.devices()``
lists every process's devices: a mesh from :func:`nnmjax.scale.sharding.worker_mesh` spans the
hosts and :func:`nnmjax.scale.sharding.shard_rule` aggregates across them, and ``nnmjax run``
gives each process its own slice of the grid (``--shard process_id/num_processes``),
all writing to one output directory.
"""
from __future__ import annotations

import jax

__all__ = ["initialize"]


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> tuple[int, int]:
    """Join the ``num_processes`` processes coordinated at ``coordinator`` (``host:port``) as
    ``process_id``; with no arguments, JAX's own detection (SLURM, Kubernetes, Cloud TPU, or
    ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``). Returns
    ``(process_id, num_processes)``. A process already joined stays joined (a second call,
    e.g. a second ``nnmjax run`` in one Python process, returns the same pair)."""
    given = [coordinator is None, num_processes is None, process_id is None]
    if any(given) and not all(given):
        raise ValueError("pass all of coordinator, num_processes and process_id, or none")
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}); got {process_id}")
    if jax.distributed.is_initialized():
        return jax.process_index(), jax.process_count()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    return jax.process_index(), jax.process_count()
