"""``linalg.eigh`` / ``eigvalsh``: the same values as ``jnp.linalg``, and no compiled program
of a rule, of its gradient or of an optimal attack holds a LAPACK batch large enough for
jaxlib to split it over XLA's CPU thread pool (the split blocks a pool worker; several at
once deadlock: ``nnmjax audit --rules nnm+dnc``, SMEA sharded over host devices)."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnmjax
from nnmjax.robust import attacks, linalg
from rulecases import KEY, feasible

#: Rules whose programs decompose matrices (SMEA, DnC, CAF) or may, plus compositions.
SPECTRAL = ["smea", "nnm+smea", "dnc", "nnm+dnc", "caf", "nnm+caf", "krum", "nnm+cwtm"]
_CALL = re.compile(r"custom_call @(lapack_\w+)\(.*?:\s*\(tensor<([0-9x]+)x[fc]\d+>")


def lapack_batches(text):
    """``(name, batch, k)`` of every LAPACK custom call in lowered StableHLO ``text``."""
    out = []
    for line in text.splitlines():
        m = _CALL.search(line)
        if m:
            dims = [int(v) for v in m.group(2).split("x")]
            out.append((m.group(1), int(np.prod(dims[:-2])), dims[-1]))
    return out


def assert_no_pool_wait(text):
    calls = lapack_batches(text)
    blocking = [c for c in calls if c[1] > 1 and c[1] * 5 * c[2] ** 3 >= linalg.LAPACK_MIN_WORK]
    assert not blocking, blocking
    return calls


def _symmetric(shape, seed=0):
    a = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return jnp.asarray(a + np.swapaxes(a, -1, -2))


@pytest.mark.parametrize("shape", [(17, 17), (40, 17, 17), (5, 7, 9, 9), (3, 40, 40)])
def test_equals_jnp_linalg(shape):
    m = _symmetric(shape)
    w, v = jax.jit(linalg.eigh)(m)
    w0, v0 = jnp.linalg.eigh(m)
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(v, v0)
    np.testing.assert_array_equal(jax.jit(linalg.eigvalsh)(m), jnp.linalg.eigvalsh(m))
    batched = m.reshape((-1,) + m.shape[-2:])
    np.testing.assert_array_equal(jax.vmap(linalg.eigvalsh)(batched),
                                  jnp.linalg.eigvalsh(batched))
    assert_no_pool_wait(jax.jit(jax.vmap(linalg.eigh)).lower(batched).as_text())


@pytest.mark.parametrize("bad, word", [(np.ones((3, 4)), "shape"), (np.ones(3), "shape"),
                                       (np.eye(3, dtype=np.complex64), "real")])
def test_bad_inputs_raise_a_clear_error(bad, word):
    for fn in (linalg.eigh, linalg.eigvalsh):
        with pytest.raises(ValueError, match=word):
            fn(bad)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64,
                                   jnp.int32, jnp.bool_])
def test_every_dtype(dtype):
    """Half precisions decomposed in float32 and returned in their dtype; integers and
    booleans give float32; float64 where enabled (float32 otherwise, as JAX stores it)."""
    m = jnp.asarray(np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0]]), dtype)
    want = jnp.linalg.eigvalsh(m.astype(jnp.float32))
    w, v = linalg.eigh(m)
    out = m.dtype if jnp.issubdtype(m.dtype, jnp.floating) else jnp.float32
    assert w.dtype == v.dtype == linalg.eigvalsh(m).dtype == out
    tol = 1e-2 if jnp.finfo(out).bits == 16 else 1e-6
    np.testing.assert_allclose(np.asarray(w, np.float32), want, atol=tol)


def test_derivatives_equal_jnp_linalg():
    m = _symmetric((30, 17, 17), seed=1)
    weights = jnp.arange(17.0)

    def loss(eigh):
        def fn(a):
            w, v = eigh(a)
            return jnp.sum(jnp.sin(w)) + jnp.sum(weights * v[:, -1] ** 2)
        return fn

    got = jax.jit(jax.vmap(jax.grad(loss(linalg.eigh))))(m)
    want = jax.vmap(jax.grad(loss(jnp.linalg.eigh)))(m)
    np.testing.assert_allclose(got, want, atol=1e-5)
    got = jax.grad(lambda a: jnp.sum(linalg.eigvalsh(a) ** 3))(m[0])
    want = jax.grad(lambda a: jnp.sum(jnp.linalg.eigvalsh(a) ** 3))(m[0])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    tangent = _symmetric((17, 17), seed=2)
    _, dw = jax.jvp(linalg.eigvalsh, (m[0],), (tangent,))
    _, (dw0, _) = jax.jvp(jnp.linalg.eigh, (m[0],), (tangent,))
    np.testing.assert_allclose(dw, dw0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", SPECTRAL)
def test_rule_programs_never_wait_on_the_pool(name):
    """The programs the audit and the simulator compile: many restarts or runs at once,
    the rule and its gradient."""
    n, f = 17, 4
    assert feasible(name, n, f)
    rule = nnmjax.rule(name, f)
    xs = jnp.zeros((64, n, 12), jnp.float32)
    keys = jax.random.split(KEY, 64)

    def call(x, key):
        return rule(x, key=key) if rule.randomized else rule(x)

    assert_no_pool_wait(jax.jit(jax.vmap(call)).lower(xs, keys).as_text())
    if name not in ("caf", "nnm+caf"):  # CAF's while_loop has no reverse-mode derivative
        grad = jax.grad(lambda x, key: jnp.sum(call(x, key) ** 2))
        assert_no_pool_wait(jax.jit(jax.vmap(grad)).lower(xs, keys).as_text())


def test_optimal_attack_programs_never_wait_on_the_pool():
    """The optimal attacks place vectors in the honest rows' eigenbasis: one per run when
    runs are vmapped (the simulator's seeds)."""
    rule = nnmjax.rule("krum", 4)
    honest = jnp.zeros((64, 13, 12), jnp.float32)
    attack = jax.vmap(lambda h: attacks.optimal_alie(h, 4, rule=rule))
    calls = assert_no_pool_wait(jax.jit(attack).lower(honest).as_text())
    assert calls  # the attack does decompose the honest Gram matrix


def test_the_nnm_dnc_audit_finishes():
    """The search that never finished: 32 restarts, jax.grad and smoothing interleaved."""
    res = nnmjax.audit.audit("nnm+dnc", n=17, f=1, d=8, restarts=32, steps=25)
    assert res.worst_ratio >= res.lower_bound - 1e-6
