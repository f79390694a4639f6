"""The XLA compiler options nnmjax's compiled programs use, and :func:`jit` with them.

On the CPU backend, recent jaxlib releases hand convolutions, matrix products, reductions
and elementwise work to the YNNPACK library ("ynn fusions"). For the shapes of a robust
learning step these run single-threaded and many times slower than XLA's own CPU kernels.
On a 2-core Intel Xeon, jaxlib 0.10.2 (``python benchmarks/step_profile.py``, and the
figures of the performance page of the docs):

=============================================  ===========  ==========
jitted on ``(17, 431080)`` float32 / the CNN    ynn fusions  XLA's own
=============================================  ===========  ==========
``z.sum(0)``                                   27.8 ms      0.7 ms
``z.std(0)``                                   73.7 ms      1.7 ms
``z @ z.T``                                    25.0 ms      3.6 ms
13 workers' gradients, ``byzfl_cnn_mnist``     245 ms       83 ms
=============================================  ===========  ==========

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
