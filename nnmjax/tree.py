"""Pytrees of stacked worker gradients <-> ``(n, d)`` matrices.

A worker-stacked pytree has leaves with a leading worker axis of size ``n``
(e.g. the output of ``jax.vmap(jax.grad(loss))``). ``ravel_workers`` flattens
it to one row per worker; ``unravel`` maps a ``(d,)`` aggregate back to the
per-worker structure (without the worker axis).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

__all__ = ["ravel_workers", "num_workers"]


def num_workers(tree) -> int:
    """The common leading-axis size of the leaves of ``tree`` (``ValueError`` if they differ)."""
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jax.tree.leaves(tree)}
    if not sizes:
        raise ValueError("the worker pytree has no leaves")
    if None in sizes or len(sizes) != 1:
        raise ValueError(f"every leaf must have the same leading worker axis; got sizes {sorted(map(str, sizes))}")
    return sizes.pop()


def ravel_workers(tree):
    """Return ``(x, unravel)``: ``x`` is the ``(n, d)`` matrix of the workers' flattened
    pytrees, ``unravel`` maps a ``(d,)`` vector back to one worker's pytree."""
    num_workers(tree)
    first = jax.tree.map(lambda leaf: leaf[0], tree)
    _, unravel = ravel_pytree(first)
    x = jax.vmap(lambda t: ravel_pytree(t)[0])(tree)
    return x, unravel
