"""Choices made by the platform a program is lowered for, not by the default backend of the
process that traces it (``jax.lax.platform_dependent``): a program traced on a CPU-default
process but lowered or exported for an accelerator takes the accelerator's path, and only
the chosen branch is lowered.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from nnmjax._platform import sequential_on_cpu
    >>> f = sequential_on_cpu(lambda x: jnp.sum(x ** 2))
    >>> print(jax.vmap(f)(jnp.arange(6.0).reshape(3, 2)))
    [ 1. 13. 41.]
"""
from __future__ import annotations

from typing import Callable

import jax

__all__ = ["sequential_on_cpu"]


def sequential_on_cpu(fn: Callable) -> Callable:
    """``fn`` (positional array arguments) whose vmapped instances run one after another
    (``jax.custom_batching.sequential_vmap``) in a program lowered for the CPU, and as one
    batch (``jax.vmap``) in a program lowered for any other platform. Unbatched, it is
    ``fn``."""
    sequential = jax.custom_batching.sequential_vmap(fn)

    def run(*args):
        return jax.lax.platform_dependent(*args, cpu=sequential, default=fn)

    return run
