"""The test suite's one no-retrace check, built on ``chex.assert_max_traces``.

A function that is jitted once and called on inputs of one shape (other values) must trace
once: a second trace means a Python value leaked into the program's identity (a key, an
option, a shape computed from data), and every call would compile again.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import chex
import jax


def assert_compiles_once(fn: Callable, calls: Sequence[tuple], *,
                         static_argnums: tuple[int, ...] = ()) -> list[Any]:
    """Call ``jax.jit(fn)`` with each argument tuple of ``calls``; ``chex`` raises
    ``AssertionError`` if ``fn`` is traced more than once. Returns the outputs, so that a
    test can also check the calls computed different things."""
    chex.clear_trace_counter()
    jitted = jax.jit(chex.assert_max_traces(fn, n=1), static_argnums=static_argnums)
    return [jax.block_until_ready(jitted(*args)) for args in calls]
