"""Test accuracy of a model, the test set in fixed-size chunks.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from nnmjax.models import make_model
    >>> model = make_model("logreg", 3, (2, 2, 1))
    >>> x, y = jnp.zeros((5, 2, 2, 1)), jnp.array([0, 1, 2, 0, 0])
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> from nnmjax.models import accuracy
    >>> whole = accuracy(model.apply({"params": params}, x), y)   # one pass, no chunks
    >>> bool(evaluate_accuracy(model, params, {}, x, y, chunk=2) == whole)
    True
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nnmjax.models.losses import correct

__all__ = ["EVAL_CHUNK", "evaluate_accuracy"]

#: Test images per forward pass when evaluating (bounds evaluation memory).
EVAL_CHUNK = 1000


def evaluate_accuracy(model: nn.Module, params, model_state: Any, x: jax.Array, y: jax.Array, *,
                  chunk: int = EVAL_CHUNK) -> jax.Array:
    """Fraction of the test set ``(x, y)`` the model classifies correctly (BatchNorm on its
    running averages, no dropout), in chunks of ``chunk`` images (``lax.map``), so memory
    stays bounded whatever the test set's size and the number of vmapped runs."""
    n = y.shape[0]
    chunk = min(chunk, n)
    pad = -n % chunk
    xs = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape((-1, chunk) + x.shape[1:])
    ys = jnp.pad(y, (0, pad), constant_values=-1).reshape(-1, chunk)

    def count(batch):
        xb, yb = batch
        return correct(model.apply({"params": params, **model_state}, xb), yb)

    return jnp.sum(jax.lax.map(count, (xs, ys))) / n
