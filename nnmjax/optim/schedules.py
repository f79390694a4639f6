"""The step-size schedules of the paper's experiments, as optax schedules ``t -> gamma_t``.

Examples:
    >>> import jax.numpy as jnp
    >>> lr = schedule("paper_mnist", 0.75)
    >>> [float(lr(jnp.float32(t))) for t in (0, 49, 50, 100)]
    [0.75, 0.75, 0.375, 0.25]
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

__all__ = ["SCHEDULES", "schedule"]

#: The schedules by name (a config's ``lr_schedule``).
SCHEDULES = ("constant", "paper_mnist", "paper_cifar")


def schedule(name: str, lr: float | jax.Array) -> Callable[[jax.Array], jax.Array]:
    """The step-size schedule ``name`` with base step size ``lr``.

    ``paper_mnist``: ``lr / (1 + floor(t / 50))`` (Table 3); ``paper_cifar``: ``lr``, then
    ``lr / 10`` from step 1500; ``constant``: ``lr``.

    Args:
        name: one of :data:`SCHEDULES`.
        lr: the base step size, a number or a traced scalar (one per vmapped run).

    Returns:
        A function of the step ``t`` (a scalar array), as optax's schedules.

    Raises:
        ValueError: for an unknown ``name``.
    """
    if name == "paper_mnist":
        return lambda t: lr / (1.0 + jnp.floor(t / 50.0))
    if name == "paper_cifar":
        return lambda t: jnp.where(t < 1500, lr, lr / 10.0)
    if name == "constant":
        return lambda t: lr * jnp.ones_like(t, dtype=jnp.float32)
    raise ValueError(f"name: unknown schedule {name!r}; valid are {SCHEDULES}")
