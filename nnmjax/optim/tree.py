"""Pytrees of stacked worker gradients <-> ``(n, d)`` matrices.

A worker-stacked pytree has leaves with a leading worker axis of size ``n``
(e.g. the output of ``jax.vmap(jax.grad(loss))``). ``ravel_workers`` flattens
it to one row per worker; ``unravel`` maps a ``(d,)`` aggregate back to the
per-worker structure (without the worker axis).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Shaped

__all__ = ["ravel_workers", "num_workers"]


def num_workers(tree: Any) -> int:
    """The common leading-axis size ``n`` of the leaves of ``tree``.

    Args:
        tree: a pytree whose leaves all have a leading worker axis.

    Returns:
        ``n``, the number of workers.

    Raises:
        ValueError: if ``tree`` has no leaves, a leaf is a scalar, or the leading sizes differ.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from nnmjax import tree
        >>> grads = {"w": jnp.arange(12.).reshape(3, 2, 2), "b": jnp.ones((3, 2))}   # 3 workers
        >>> tree.num_workers(grads)
        3
    """
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jax.tree.leaves(tree)}
    if not sizes:
        raise ValueError("the worker pytree has no leaves")
    if None in sizes or len(sizes) != 1:
        raise ValueError(f"every leaf must have the same leading worker axis; got sizes {sorted(map(str, sizes))}")
    return sizes.pop()


def ravel_workers(tree: Any) -> tuple[Shaped[Array, "n d"],
                                      Callable[[Shaped[ArrayLike, " d"]], Any]]:
    """Flatten a worker-stacked pytree to an ``(n, d)`` matrix, one row per worker.

    Args:
        tree: a pytree whose leaves have a common leading worker axis of size ``n`` (e.g. the
            output of ``jax.vmap(jax.grad(loss))``).

    Returns:
        ``(x, unravel)``: ``x`` is the ``(n, d)`` matrix of the workers' flattened pytrees
        (leaves in ``jax.tree`` order), ``unravel`` maps a ``(d,)`` vector back to one worker's
        pytree.

    Raises:
        ValueError: as :func:`num_workers`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from nnmjax import tree
        >>> grads = {"w": jnp.arange(12.).reshape(3, 2, 2), "b": jnp.ones((3, 2))}   # 3 workers
        >>> x, unravel = tree.ravel_workers(grads)
        >>> x.shape
        (3, 6)
        >>> x[1].tolist()
        [1.0, 1.0, 4.0, 5.0, 6.0, 7.0]
        >>> jax.tree.map(jnp.shape, unravel(x[1]))
        {'b': (2,), 'w': (2, 2)}
    """
    num_workers(tree)
    first = jax.tree.map(lambda leaf: leaf[0], tree)
    _, unravel = ravel_pytree(first)
    x = jax.vmap(lambda t: ravel_pytree(t)[0])(tree)
    return x, unravel
