"""Reductions over the coordinate axis ``d`` that also work when ``d`` is sharded.

Inside :func:`nnmjax.scale.sharding.shard_rule` a rule runs on one device's block of columns
(``jax.shard_map``); every sum over ``d`` (Gram matrices, row norms) must then combine
the blocks. The rules call :func:`dsum` for those, which is the identity outside a
sharded call and one ``psum`` over the mesh axis inside (``n x n`` or ``n`` values: the
only communication a sharded rule needs). A row's non-finite entries make its partial sum
non-finite, so "this row is finite" needs no reduction of its own.
"""
from __future__ import annotations

import contextlib

import jax

_AXIS: str | None = None


@contextlib.contextmanager
def columns_sharded(axis: str):
    """Trace the enclosed rule as one block of columns of a matrix sharded over ``axis``."""
    global _AXIS
    previous, _AXIS = _AXIS, axis
    try:
        yield
    finally:
        _AXIS = previous


def dsum(v):
    """``v``, a partial sum over this block's columns, summed over all blocks."""
    return v if _AXIS is None else jax.lax.psum(v, _AXIS)
