"""The loss and metrics of log-probability outputs, and pytree utilities for models.

Examples:
    >>> import jax.numpy as jnp
    >>> log_probs = jnp.log(jnp.array([[0.5, 0.5], [0.9, 0.1]]))
    >>> labels = jnp.array([0, 0])
    >>> round(float(nll(log_probs, labels)), 4), float(accuracy(log_probs, labels))
    (0.3993, 1.0)
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["nll", "accuracy", "correct", "average_batch_stats", "param_count"]

Array = jax.Array


def nll(log_probs: Array, labels: Array, mask: Array | None = None) -> Array:
    """Negative log-likelihood ``mean_j -log_probs[j, labels[j]]`` (the paper's NLL loss).

    With ``mask`` (``1`` for real rows, ``0`` for padding), the mean over the real rows:
    ``sum_j m_j (-log_probs[j, labels[j]]) / sum_j m_j``.
    """
    picked = jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)
    if mask is None:
        return -jnp.mean(picked)
    return -jnp.sum(picked[..., 0] * mask) / jnp.sum(mask)


def accuracy(log_probs: Array, labels: Array) -> Array:
    """Fraction of ``argmax(log_probs) == labels``."""
    return jnp.mean(jnp.argmax(log_probs, axis=-1) == labels)


def correct(log_probs: Array, labels: Array) -> Array:
    """Number of rows with ``argmax(log_probs) == labels`` (a label ``-1`` marks padding,
    never counted)."""
    return jnp.sum(jnp.argmax(log_probs, axis=-1) == labels)


def average_batch_stats(batch_stats: Any) -> Any:
    """Means every leaf over its leading (worker) axis: combines per-worker BatchNorm stats."""
    return jax.tree_util.tree_map(lambda s: jnp.mean(s, axis=0), batch_stats)


def param_count(params: Any) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(math.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
