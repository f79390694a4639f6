"""The XLA compiler options nnmjax's compiled programs use, and :func:`jit` with them.

On the CPU backend, recent jaxlib releases hand convolutions, matrix products, reductions
and elementwise work to the YNNPACK library ("ynn fusions"). For the shapes of a robust
learning step several of these run single-threaded and many times slower than XLA's own
CPU kernels: reductions over the worker axis (the attacks' means and standard deviations,
kappa-hat, momentum) and the workers' Gram matrix. ``python benchmarks/xla_options.py``
on a 2-core Intel Xeon, jaxlib 0.10.2 (``benchmarks/results/xla-options-cpu.json``),
median ms:

=======================================  ===========  ==========  =====
jitted, float32                          ynn fusions  XLA's own   ratio
=======================================  ===========  ==========  =====
``x.sum(0)``, ``x`` of ``(17, 431080)``  23.0         1.0         23.6x
``x.std(0)``                             49.4         3.0         16.3x
``x @ x.T``                              20.3         3.6         5.6x
``2048 x 2048`` matmul                   47.2         43.1        1.09x
13 workers' gradients, ``cnn_mnist``     92.2         84.6        1.09x
NNM + CWTM on ``x``                      25.1         23.5        1.07x
=======================================  ===========  ==========  =====

:func:`compiler_options` turns the ynn fusions off
(``xla_cpu_experimental_ynn_fusion_type=""``) on the CPU backend when the installed
jaxlib knows the option; everywhere else, and when the environment variable
``NNMJAX_XLA_CPU_YNN=1`` asks to keep XLA's default, it is ``None``. The simulator, the
benchmarks and ``nnmjax bench`` compile with it; compile your own CPU programs with
:func:`jit` (or pass ``compiler_options=compiler_options()`` to ``jax.jit``) to get the
same kernels. The results are the same up to float rounding (the kernels sum in another
order).

Examples:
    >>> import jax.numpy as jnp
    >>> from nnmjax.xla_options import jit
    >>> from nnmjax.aggregators import cwtm
    >>> jit(cwtm, static_argnums=1)(jnp.arange(12.0).reshape(4, 3), 1)
    Array([4.5, 5.5, 6.5], dtype=float32)
"""
from __future__ import annotations

import functools
import os

__all__ = ["CPU_OPTIONS", "ENV", "compiler_options", "jit"]

#: The options set on the CPU backend: no YNNPACK fusions.
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
#: Set to ``1`` to compile with XLA's default CPU options.
ENV = "NNMJAX_XLA_CPU_YNN"


@functools.cache
def _supported() -> bool:
    import jax
    import numpy as np

    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(np.float32(0)).compile()
    except Exception:  # an older jaxlib: the option does not exist, XLA's kernels are used
        return False
    return True


def compiler_options() -> dict | None:
    """The compiler options for a program on the default backend: :data:`CPU_OPTIONS` on
    CPU (when supported and :data:`ENV` is not ``1``), else ``None``.

    Examples:
        >>> import jax
        >>> opts = compiler_options()
        >>> opts is None or opts == CPU_OPTIONS
        True
    """
    import jax

    if os.environ.get(ENV) == "1" or jax.default_backend() != "cpu" or not _supported():
        return None
    return dict(CPU_OPTIONS)


def jit(fun, **kwargs):
    """``jax.jit(fun, compiler_options=compiler_options(), **kwargs)``.

    Examples:
        >>> import jax.numpy as jnp
        >>> jit(lambda x: 2 * x)(jnp.ones(2))
        Array([2., 2.], dtype=float32)
    """
    import jax

    return jax.jit(fun, compiler_options=compiler_options(), **kwargs)
