"""Scale-out: the rules and the simulator over several devices and hosts.

- :mod:`nnmjax.scale.sharding`: ``jax.sharding`` meshes, a rule with its ``(n, d)`` input
  split by columns;
- :mod:`nnmjax.scale.distributed`: ``jax.distributed`` set-up for multi-host runs.

Importable by their short names too (``nnmjax.sharding``, ``nnmjax.distributed``).
"""
