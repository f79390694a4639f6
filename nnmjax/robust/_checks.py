"""Argument validation shared by every rule: fail early, name the argument.

All checks run on static shapes and Python ints, so they cost nothing under
``jax.jit`` and raise before any compilation.
"""
from __future__ import annotations

import functools
import operator

import jax.numpy as jnp


def as_matrix(x, *, name: str = "x"):
    """Return ``x`` as a floating ``(n, d)`` array or raise ``ValueError``."""
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(
            f"{name} must have shape (n, d) (one row per worker); got an array of "
            f"rank {x.ndim} with shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one worker row; got shape {tuple(x.shape)}")
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise ValueError(f"{name} must be real; got dtype {x.dtype} (rules order and compare "
                         "values, which complex numbers do not support)")
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.float32)
    return x


def work_dtype(dtype):
    """The dtype a rule computes in: ``dtype``, or float32 for narrower floats (float16,
    bfloat16), whose range overflows squared norms and whose 8 or 11 bits of precision
    lose sums of a few rows."""
    return jnp.promote_types(dtype, jnp.float32)


def keeps_dtype(fn):
    """Dtype policy of every rule: run ``fn(x, ...)`` on ``x`` cast to :func:`work_dtype`,
    return the output in the input's floating dtype (integers: float32).

    So float16 and bfloat16 inputs accumulate in float32 (the bad-input guarantees then hold
    as in float32), float32 and float64 are computed as they are.
    """
    @functools.wraps(fn)
    def wrapper(x, *args, **kwargs):
        x = as_matrix(x)
        out = fn(x.astype(work_dtype(x.dtype)), *args, **kwargs)
        return out.astype(x.dtype)

    return wrapper


def check_count(value, *, name: str = "f", where: str = "") -> int:
    """``value`` as a non-negative ``int`` (NumPy integers accepted, ``bool`` refused).

    The one check of a number of Byzantine workers (``f``, ``tolerated_f``) everywhere: rules,
    attacks, transforms and configs.

    Raises:
        ValueError: ``"<name> must be a non-negative integer; got <value><where>"``.
    """
    try:
        count = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        count = None
    if count is None or count < 0:
        raise ValueError(f"{name} must be a non-negative integer; got {value!r}{where}")
    return count


def check_f(f, n: int, *, rule: str, min_n=None) -> int:
    """Validate the number of Byzantine inputs ``f`` (:func:`check_count`) against ``n``
    inputs.

    The default requirement is ``2f < n`` (no rule can be (f, kappa)-robust
    otherwise, paper Proposition 6); ``min_n(f)`` states a stronger bound.
    """
    f = check_count(f, where=f" for {rule}")
    need = 2 * f + 1 if min_n is None else min_n(f)
    if n < need:
        raise ValueError(
            f"{rule} needs n >= {need} inputs for f={f} Byzantine ones; got n={n}")
    return f


def check_positive(value, *, name: str, rule: str, allow_zero: bool = False):
    """Raise ``ValueError`` unless ``value`` is a positive (or >= 0) number."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} for {rule}; got {name}={value!r}")
    return value


def check_int(value, *, name: str, rule: str, low: int, high: int | None = None) -> int:
    """Raise ``ValueError`` unless ``low <= value (<= high)`` is an integer."""
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer for {rule}; got {value!r}") from None
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {rng} for {rule}; got {name}={value}")
    return value
