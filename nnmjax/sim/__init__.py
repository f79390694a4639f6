"""The simulator: robust D-SHB and D-GD as one jitted program, vmapped over runs.

See :mod:`nnmjax.sim.experiment`. Importable by its short name ``nnmjax.simulate`` too.
"""
from nnmjax.sim.experiment import (EVAL_CHUNK, VMAPPED_KEYS, Experiment, RunState,
                                   build_experiment, experiment_mesh, learning_rate,
                                   program_key, spans_processes, worker_data_bytes)

__all__ = ["Experiment", "RunState", "learning_rate", "build_experiment", "experiment_mesh",
           "spans_processes", "program_key", "worker_data_bytes", "EVAL_CHUNK", "VMAPPED_KEYS"]
