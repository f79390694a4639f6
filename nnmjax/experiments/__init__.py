"""Experiments: configs, grids of runs, records, checkpoints, tables and figures.

- :mod:`~nnmjax.experiments.config`: a TOML file -> a validated :class:`Config`;
- :mod:`~nnmjax.experiments.grid`: runs grouped into compiled programs, run with resume;
- :mod:`~nnmjax.experiments.results` and :mod:`~nnmjax.experiments.checkpoint`: the
  records a run writes and the checkpoints of a running group;
- :mod:`~nnmjax.experiments.table`, :mod:`~nnmjax.experiments.plots`,
  :mod:`~nnmjax.experiments.tuning`: tables, figures and hyperparameter choice from records;
- :mod:`~nnmjax.experiments.reproduce`: re-running a finished group to check its records;
- :mod:`~nnmjax.experiments.estimate`, :mod:`~nnmjax.experiments.provenance`,
  :mod:`~nnmjax.experiments.jobs`, :mod:`~nnmjax.experiments.interrupt`: wall-time
  estimates, code provenance, parallel shards and Ctrl-C handling of the ``nnmjax`` command.

Importable by their short names too (``nnmjax.config``, ``nnmjax.grid``, ...).
"""
