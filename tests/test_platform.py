"""Choices made by the platform a program is lowered for (``lax.platform_dependent``), not
by the default backend at trace time: each program is lowered for the CPU and for an
accelerator (``lowering_platforms``; no accelerator is needed to lower for one) and its
operations compared with those of the path that platform should take."""
from __future__ import annotations

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnmjax._platform import sequential_on_cpu
from nnmjax.models.layers import Conv5
from nnmjax.robust import _order, _spectral

PLATFORMS = ("cpu", "cuda")


def ops(fn, *args, platform):
    """The operations of ``jit(fn)`` lowered for ``platform``, less the platform switch's
    own (``case``, its constants and returns)."""
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()
    count = collections.Counter(re.findall(r"stablehlo\.(\w+)", text))
    return {op: k for op, k in count.items() if op not in ("case", "constant", "return")}


def _square_sum(x):
    return jnp.sum(x ** 2)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_sequential_on_cpu_lowers_one_path_per_platform(platform):
    """Vmapped, it is ``sequential_vmap`` lowered for the CPU and ``vmap`` elsewhere; its
    values are ``fn``'s either way."""
    x = jnp.arange(6.0).reshape(3, 2)
    fn = jax.vmap(sequential_on_cpu(_square_sum))
    sequential = jax.vmap(jax.custom_batching.sequential_vmap(_square_sum))
    want, other = ((sequential, jax.vmap(_square_sum)) if platform == "cpu"
                   else (jax.vmap(_square_sum), sequential))
    assert ops(fn, x, platform=platform) == ops(want, x, platform=platform)
    assert ops(fn, x, platform=platform) != ops(other, x, platform=platform)
    np.testing.assert_array_equal(np.asarray(jax.jit(fn)(x)), [1.0, 13.0, 41.0])


@pytest.mark.parametrize("platform", PLATFORMS)
def test_smea_vmapped_instances_run_one_after_another_on_cpu(platform):
    """Vmapped instances of SMEA's pruned arg-min run one after another where the program is
    lowered for the CPU (a batched ``while_loop`` would run each for the slowest one's
    rounds), batched elsewhere."""
    m, excluded = jnp.zeros((2, 400, 6, 6), jnp.float32), jnp.zeros((2, 400), bool)
    sequential = jax.custom_batching.sequential_vmap(_spectral._argmin)
    want, other = ((sequential, _spectral._argmin) if platform == "cpu"
                   else (_spectral._argmin, sequential))
    got = ops(jax.vmap(_spectral.argmin_top_eigenvalue), m, excluded, platform=platform)
    assert got == ops(jax.vmap(want), m, excluded, platform=platform)
    assert got != ops(jax.vmap(other), m, excluded, platform=platform)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_sorts_run_on_the_host_only_when_lowered_for_the_cpu(platform):
    """Past the sorting network, sorts, ranks and CWTM's window sums (and their derivatives)
    call NumPy on the host in a program lowered for the CPU (a ``custom_call`` and no
    ``sort``) and XLA's sort in one lowered for an accelerator."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(_order.NETWORK_MAX_N + 1, 3)),
                    jnp.float32)
    stop = x.shape[0] - 10
    for fn in (_order.sort_columns, _order.ranks,
               jax.grad(lambda v: jnp.sum(_order.window_sum(v, 10, stop) ** 2))):
        got = ops(fn, x, platform=platform)
        assert ("custom_call" in got, "sort" in got) == ((True, False) if platform == "cpu"
                                                         else (False, True))
    np.testing.assert_array_equal(np.asarray(_order.sort_columns(x)), np.sort(x, axis=0))


@pytest.mark.parametrize("platform", PLATFORMS)
def test_conv_auto_is_xla_cpu_lowered_for_the_cpu_and_xla_elsewhere(platform):
    """``Conv5(impl="auto")``'s gradient lowers as ``"xla_cpu"``'s for the CPU (all three
    convolutions in ``NHWC``/``HWIO``) and as ``"xla"``'s for an accelerator."""
    x = jnp.ones((2, 8, 8, 3))

    def grad_ops(impl):
        conv = Conv5(4, kernel_size=3, impl=impl)
        params = conv.init(jax.random.key(0), x)
        return ops(jax.grad(lambda p: jnp.sum(conv.apply(p, x) ** 2)), params,
                   platform=platform)

    want, other = ("xla_cpu", "xla") if platform == "cpu" else ("xla", "xla_cpu")
    assert grad_ops("auto") == grad_ops(want) != grad_ops(other)
