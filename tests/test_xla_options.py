"""The compiler options of nnmjax's programs: off the CPU backend or on request, XLA's
defaults; the results equal plain ``jax.jit``'s up to float rounding."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nnmjax import xla_options
from nnmjax.aggregators import cwtm


def test_options_on_cpu_and_on_request(monkeypatch):
    opts = xla_options.compiler_options()
    if jax.default_backend() == "cpu" and xla_options._supported():
        assert opts == xla_options.CPU_OPTIONS
    else:
        assert opts is None
    monkeypatch.setenv(xla_options.ENV, "1")
    assert xla_options.compiler_options() is None


def test_jit_matches_plain_jit():
    x = jax.random.normal(jax.random.key(0), (17, 3000)) + 1e3

    def step(x):
        return cwtm(x, 4), x.sum(0), x.std(0), x @ x.T

    for a, b in zip(xla_options.jit(step)(x), jax.jit(step)(x)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)
