"""Symmetric eigendecompositions that cannot deadlock XLA's CPU thread pool.

On the CPU backend, jaxlib's LAPACK kernels split a batch of matrices into chunks, schedule
the chunks on XLA's intra-op thread pool and block the calling thread until they finish,
whenever the batch holds at least ``LAPACK_MIN_WORK`` estimated FLOP (``5 k^3`` per
``k x k`` ``syevd``). The calling thread is itself a worker of that pool. When as many
batched decompositions run at once as the pool has workers (two independent ``eigh`` in
one program on a 2-core machine, or one per device of a program sharded over host
devices), every worker waits for chunks that no worker is free to run, and the program
never finishes at 0 % CPU: for example the audit of NNM + DnC, whose search runs the
rule's gradient beside its smoothed values, or SMEA under ``shard_rule`` on 8 host
devices.

:func:`eigh` and :func:`eigvalsh` compute exactly what ``jnp.linalg.eigh`` and
``jnp.linalg.eigvalsh`` compute (the same LAPACK routine on the same matrices), but on
the CPU backend a batch is decomposed ``chunk_size(k)`` matrices at a time in a
``lax.map``, each call below the threshold, so LAPACK runs on the calling thread and
nothing waits on the pool (``lax.platform_dependent``: the platform the program is lowered
for decides). ``jax.vmap`` of either reaches the same path
(``jax.custom_batching.custom_vmap``: the mapped axes join the batch), and their
derivatives are the standard ones (``jax.custom_jvp``, the formula of
``jnp.linalg.eigh``'s JVP), so ``jax.grad`` works through them. Accelerators keep their
batched solvers.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from nnmjax.robust import linalg
    >>> m = jnp.stack([jnp.diag(jnp.array([3.0, 1.0])), jnp.array([[2.0, 1.0], [1.0, 2.0]])])
    >>> jax.vmap(linalg.eigvalsh)(m)
    Array([[1., 3.],
           [1., 3.]], dtype=float32)
    >>> linalg.chunk_size(17), linalg.chunk_size(9), linalg.chunk_size(40)
    (8, 54, 1)
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["LAPACK_MIN_WORK", "chunk_size", "eigh", "eigvalsh"]

#: jaxlib runs a batched LAPACK call on the calling thread below this many estimated FLOP.
LAPACK_MIN_WORK = 200_000


def chunk_size(k: int) -> int:
    """The most ``k x k`` matrices one ``syevd`` batch may hold and stay on the calling
    thread: ``max(1, floor((LAPACK_MIN_WORK - 1) / (5 k^3)))`` (one matrix always does)."""
    return max(1, (LAPACK_MIN_WORK - 1) // (5 * k ** 3))


def _decompose(m, values_only: bool):
    """``eigvalsh`` or ``eigh`` of ``m`` (``(..., k, k)``), in chunks on the CPU backend."""
    fn = jnp.linalg.eigvalsh if values_only else (lambda a: tuple(jnp.linalg.eigh(a)))
    k = m.shape[-1]
    batch = m.shape[:-2]
    count = math.prod(batch)
    c = chunk_size(k)
    if count <= c:
        return fn(m)

    def chunked(m):
        out = jax.lax.map(fn, m.reshape((count, k, k)), batch_size=c)
        return jax.tree_util.tree_map(lambda a: a.reshape(batch + a.shape[1:]), out)

    return jax.lax.platform_dependent(m, cpu=chunked, default=fn)


def _batched(values_only: bool):
    """``_decompose`` whose ``vmap`` moves the mapped axis into the batch."""
    @jax.custom_batching.custom_vmap
    def decompose(m):
        return _decompose(m, values_only)

    @decompose.def_vmap
    def rule(axis_size, in_batched, m):
        if not in_batched[0]:
            m = jnp.broadcast_to(m, (axis_size,) + m.shape)
        return decompose(m), (True if values_only else (True, True))

    return decompose


_eigvalsh_batched = _batched(True)
_eigh_batched = _batched(False)


def _as_real_square(m, name: str):
    """``m`` as a real floating array of square matrices, computed in at least float32,
    and the dtype to return (``m``'s, float32 for integers and booleans)."""
    m = jnp.asarray(m)
    if m.ndim < 2 or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"{name} needs symmetric matrices of shape (..., k, k); "
                         f"got shape {m.shape}")
    if jnp.issubdtype(m.dtype, jnp.complexfloating):
        raise ValueError(f"{name} takes real symmetric matrices; got {m.dtype} "
                         "(use jnp.linalg.eigh for Hermitian ones)")
    out = m.dtype if jnp.issubdtype(m.dtype, jnp.floating) else jnp.dtype(jnp.float32)
    return m.astype(jnp.promote_types(out, jnp.float32)), out


def eigh(m):
    """``jnp.linalg.eigh(m)`` of symmetric ``(..., k, k)`` ``m``: ascending eigenvalues
    ``w`` and eigenvectors ``v`` (columns), ``m = v diag(w) v^T``.

    float16 and bfloat16 matrices are decomposed in float32 and the results returned in
    their dtype; integers and booleans give float32.

    Raises:
        ValueError: if ``m`` is not a real array of square matrices.

    Examples:
        >>> import jax.numpy as jnp
        >>> from nnmjax.robust.linalg import eigh
        >>> w, v = eigh(jnp.array([[2.0, 1.0], [1.0, 2.0]]))
        >>> w
        Array([1., 3.], dtype=float32)
    """
    m, out = _as_real_square(m, "eigh")
    w, v = _eigh(m)
    return w.astype(out), v.astype(out)


def eigvalsh(m):
    """``jnp.linalg.eigvalsh(m)`` of symmetric ``(..., k, k)`` ``m``: the ascending
    eigenvalues (dtypes and errors as :func:`eigh`).

    Examples:
        >>> import jax.numpy as jnp
        >>> from nnmjax.robust.linalg import eigvalsh
        >>> eigvalsh(jnp.array([[2.0, 1.0], [1.0, 2.0]]))
        Array([1., 3.], dtype=float32)
    """
    m, out = _as_real_square(m, "eigvalsh")
    return _eigvalsh(m).astype(out)


@jax.custom_jvp
def _eigh(m):
    return _eigh_batched(m)


@_eigh.defjvp
def _eigh_jvp(primals, tangents):
    """``dw = diag(v^T dm v)``, ``dv = v (F o v^T dm v)`` with ``F_ij = 1 / (w_j - w_i)``
    off the diagonal (``dm`` symmetrised), as ``jnp.linalg.eigh``'s JVP."""
    (m,), (dm,) = primals, tangents
    w, v = _eigh(m)
    dm = 0.5 * (dm + jnp.swapaxes(dm, -1, -2))
    proj = jnp.swapaxes(v, -1, -2) @ dm @ v
    eye = jnp.eye(m.shape[-1], dtype=w.dtype)
    gaps = 1.0 / (eye + w[..., None, :] - w[..., :, None]) - eye
    return (w, v), (jnp.diagonal(proj, axis1=-2, axis2=-1), v @ (gaps * proj))


@jax.custom_jvp
def _eigvalsh(m):
    return _eigvalsh_batched(m)


@_eigvalsh.defjvp
def _eigvalsh_jvp(primals, tangents):
    (w, _), (dw, _) = _eigh_jvp(primals, tangents)
    return w, dw
