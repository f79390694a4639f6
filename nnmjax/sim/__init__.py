"""The simulator: robust D-SHB and D-GD as one jitted program, vmapped over runs.

- :mod:`~nnmjax.sim.experiment`: :class:`Experiment`, one compiled (attack, rule) program
  over several runs: init, run a chunk of steps, evaluate;
- :mod:`~nnmjax.sim.step`: the step itself, a pure function;
- :mod:`~nnmjax.sim.program`: which runs share one program (:func:`program_key`);
- :mod:`~nnmjax.sim.placement`: the ``(runs, workers)`` device mesh;
- :mod:`~nnmjax.sim.worker_data`: each run's workers' data;
- :mod:`~nnmjax.sim.evaluate`: test accuracy.

The names below are importable from ``nnmjax.sim`` (and its short path ``nnmjax.simulate``).

Examples:
    >>> from nnmjax.sim import Experiment, build_experiment
    >>> build_experiment is nnmjax.simulate.build_experiment
    True
"""
from nnmjax.sim.evaluate import EVAL_CHUNK
from nnmjax.sim.experiment import Experiment, build_experiment
from nnmjax.sim.placement import experiment_mesh, spans_processes
from nnmjax.sim.program import VMAPPED_KEYS, program_key
from nnmjax.sim.step import RunState, learning_rate
from nnmjax.sim.worker_data import worker_data_bytes

__all__ = ["Experiment", "RunState", "learning_rate", "build_experiment", "experiment_mesh",
           "spans_processes", "program_key", "worker_data_bytes", "EVAL_CHUNK", "VMAPPED_KEYS"]
