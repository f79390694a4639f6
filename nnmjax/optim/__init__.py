"""The robust server as optax gradient transformations on stacked per-worker pytrees.

- :mod:`nnmjax.optim.transforms`: per-worker clipping, worker momentum, Byzantine
  injection and robust aggregation, chained with ``optax.chain``;
- :mod:`nnmjax.optim.federated`: robust FedAvg rounds (the clients' local steps);
- :mod:`nnmjax.optim.decentralized`: graphs of nodes and their robust gossip;
- :mod:`nnmjax.optim.schedules`: the step-size schedules;
- :mod:`nnmjax.optim.tree`: flattening a per-worker pytree to the ``(n, d)`` matrix the
  rules take, and back.

Importable by their short names too (``nnmjax.transforms``, ``nnmjax.tree``).
"""
