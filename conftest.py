"""Root pytest setup for the docstring examples collected from ``nnmjax/``.

``pyproject.toml`` runs pytest with ``--doctest-modules`` over ``tests`` and ``nnmjax``, so
every ``>>>`` example in the package is executed. Each example still imports what it
uses; the names below are only a fallback so that a short example reads naturally.
"""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import nnmjax

    doctest_namespace.update(jax=jax, jnp=jnp, np=np, nnmjax=nnmjax)
