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

    Args:
        log_probs: ``[..., B, K]`` log-probabilities.
        labels: ``[..., B]`` integer labels in ``[0, K)``.
        mask: ``[..., B]`` weights of the rows (``1`` real, ``0`` padding); ``None``: all 1.

    Returns:
        The scalar loss.

    Examples:
        >>> from nnmjax.models import nll
        >>> import jax.numpy as jnp
        >>> log_probs = jnp.log(jnp.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]))
        >>> labels = jnp.array([0, 0, 0])
        >>> round(float(nll(log_probs, labels)), 4)
        0.8026
        >>> round(float(nll(log_probs, labels, mask=jnp.array([1.0, 1.0, 0.0]))), 4)
        0.3993
    """
    picked = jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)
    if mask is None:
        return -jnp.mean(picked)
    return -jnp.sum(picked[..., 0] * mask) / jnp.sum(mask)


def accuracy(log_probs: Array, labels: Array) -> Array:
    """Fraction of ``argmax(log_probs) == labels``.

    Args:
        log_probs: ``[..., B, K]`` log-probabilities (or any scores).
        labels: ``[..., B]`` integer labels.

    Returns:
        The scalar fraction of rows whose most likely class is the label.

    Examples:
        >>> from nnmjax.models import accuracy
        >>> import jax.numpy as jnp
        >>> log_probs = jnp.log(jnp.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]))
        >>> round(float(accuracy(log_probs, jnp.array([0, 0, 0]))), 4)
        0.6667
    """
    return jnp.mean(jnp.argmax(log_probs, axis=-1) == labels)


def correct(log_probs: Array, labels: Array) -> Array:
    """Number of rows with ``argmax(log_probs) == labels`` (a label ``-1`` marks padding,
    never counted).

    Args:
        log_probs: ``[..., B, K]`` log-probabilities (or any scores).
        labels: ``[..., B]`` integer labels; ``-1`` for padding rows.

    Returns:
        The integer count, summed over all rows.

    Examples:
        >>> from nnmjax.models import correct
        >>> import jax.numpy as jnp
        >>> log_probs = jnp.log(jnp.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]))
        >>> int(correct(log_probs, jnp.array([0, 0, 1])))
        3
        >>> int(correct(log_probs, jnp.array([0, 0, -1])))  # the last row is padding
        2
    """
    return jnp.sum(jnp.argmax(log_probs, axis=-1) == labels)


def average_batch_stats(batch_stats: Any) -> Any:
    """Means every leaf over its leading (worker) axis: combines per-worker BatchNorm stats.

    Args:
        batch_stats: a pytree whose leaves have a leading worker axis.

    Returns:
        The same pytree, each leaf averaged over that axis.

    Examples:
        >>> import jax.numpy as jnp
        >>> from nnmjax.models import average_batch_stats
        >>> average_batch_stats({"bn": {"mean": jnp.array([[0.0, 2.0], [2.0, 4.0]])}})
        {'bn': {'mean': Array([1., 3.], dtype=float32)}}
    """
    return jax.tree_util.tree_map(lambda s: jnp.mean(s, axis=0), batch_stats)


def param_count(params: Any) -> int:
    """Total number of scalars in a parameter pytree.

    Args:
        params: a pytree of arrays (or of anything with a ``shape``, e.g. the
            ``jax.ShapeDtypeStruct`` leaves of ``jax.eval_shape``).

    Returns:
        The sum of the leaves' sizes.

    Examples:
        >>> import jax.numpy as jnp
        >>> from nnmjax.models import param_count
        >>> param_count({"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros(4)})
        16
    """
    return sum(int(math.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
