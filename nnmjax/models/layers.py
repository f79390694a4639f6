"""Layers the models share: PyTorch-initialised dense layers, the 2-D convolution
:class:`Conv5` in several formulations, and 2x2 max pooling.

Initialization follows PyTorch's defaults (weights and biases
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``), as the paper's experiments were run in PyTorch
and its learning rates (e.g. ``0.75``) are tuned for that scale.

:class:`Conv5` keeps the parameters of ``flax.linen.Conv`` (``kernel [k, k, cin, cout]``,
``bias [cout]``), so its formulations are interchangeable on the same parameters:

* ``"shift"``: ``y = b + sum_{i,j} x[:, i:i+Ho, j:j+Wo, :] @ K[i, j]``, one einsum per
  kernel offset (k^2 shifted matmuls);
* ``"im2col"``: the k^2 shifted slices concatenated on the channel axis, one matmul with
  ``K`` reshaped to ``[k*k*cin, cout]``;
* ``"xla"``: ``lax.conv_general_dilated`` and its autodiff (cuDNN on GPU);
* ``"xla_cpu"``: ``lax.conv_general_dilated`` with the gradient of :func:`conv_nhwc`, whose
  three convolutions are all in the ``NHWC``/``HWIO`` layout;
* ``"flax"`` (models only): ``flax.linen.Conv`` itself, the reference;
* ``"auto"`` (default): ``"xla_cpu"`` in a program lowered for the CPU, ``"xla"`` in one
  lowered for any other platform (``lax.platform_dependent``: the platform of the lowering
  decides, not the default backend at trace time). Reverse mode only, as ``"xla_cpu"``.

Why ``"xla_cpu"``: XLA's CPU backend runs a convolution with its Eigen kernels only in the
``NHWC``/``HWIO`` layout. Autodiff gives the kernel gradient another layout, which XLA
rewrites outside loops but not inside a ``lax.scan`` (the simulator's steps), where the
convolution falls back to a naive loop. One simulator step of 17 workers x 25 images on a
2-core Intel Xeon (``python benchmarks/models.py --model paper_cnn``, also ``cifar_cnn``;
figures in the performance page of the docs): the paper CNN 0.105 s against 0.129 s
(im2col) and 0.491 s (``"xla"``), the CIFAR CNN 4.18 s against 14.7 s (im2col).

Max pooling is a reshape + max (``pool="reshape"``) or ``flax.linen.max_pool``
(``pool="flax"``).

Examples:
    >>> import jax, jax.numpy as jnp
    >>> conv = Conv5(8, kernel_size=3, impl="im2col")
    >>> x = jnp.ones((2, 6, 6, 1))
    >>> params = conv.init(jax.random.key(0), x)
    >>> conv.apply(params, x).shape, max_pool2(x).shape
    ((2, 4, 4, 8), (2, 3, 3, 1))
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["CONV_IMPLS", "POOL_IMPLS", "Conv5", "conv_nhwc", "max_pool2", "dense_torch_init",
           "torch_kernel_init"]

CONV_IMPLS = ("auto", "shift", "im2col", "xla", "xla_cpu", "flax")
POOL_IMPLS = ("reshape", "flax")

Array = jax.Array


# ------------------------------------------------------------------ initializers


def torch_kernel_init(key, shape, dtype=jnp.float32):
    """PyTorch's default Linear/Conv weight init: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

    ``fan_in`` is the product of all but the last axis (``k*k*cin`` for a
    ``[k, k, cin, cout]`` kernel, ``din`` for a ``[din, dout]`` matrix).

    Args:
        key: a PRNG key.
        shape: the weight's shape, input axes first, output axis last.
        dtype: the weight's dtype.

    Returns:
        The weight, uniform in ``[-1/sqrt(fan_in), 1/sqrt(fan_in))``.

    Examples:
        A 5x5 kernel on one channel has ``fan_in = 25``, bound ``0.2``:

        >>> import jax, jax.numpy as jnp
        >>> from nnmjax.models import torch_kernel_init
        >>> w = torch_kernel_init(jax.random.key(0), (5, 5, 1, 20))
        >>> w.shape, bool(jnp.abs(w).max() <= 0.2)
        ((5, 5, 1, 20), True)
    """
    bound = 1.0 / math.sqrt(math.prod(shape[:-1]))
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _torch_bias_init(fan_in: int) -> Callable:
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def dense_torch_init(features: int, fan_in: int, name: str | None = None) -> nn.Dense:
    """``nn.Dense`` with PyTorch's ``Linear`` initialization for ``fan_in`` inputs.

    Args:
        features: the number of outputs.
        fan_in: the number of inputs, which sets the bias's bound ``1/sqrt(fan_in)``.
        name: the module's name; ``None``: flax's default (``Dense_<i>``).

    Returns:
        The ``flax.linen.Dense`` module.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from nnmjax.models import dense_torch_init
        >>> layer = dense_torch_init(3, 64, name="fc")
        >>> shapes = jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 64)))
        >>> layer.name, jax.tree.map(lambda s: s.shape, shapes["params"])
        ('fc', {'bias': (3,), 'kernel': (64, 3)})
    """
    return nn.Dense(features, kernel_init=torch_kernel_init,
                    bias_init=_torch_bias_init(fan_in), name=name)

# ----------------------------------------------------------------- conv and pool


def _check_impl(impl: str) -> str:
    if impl not in CONV_IMPLS:
        raise ValueError(f"impl: unknown convolution implementation {impl!r}; valid are {CONV_IMPLS}")
    return impl


_NHWC = ("NHWC", "HWIO", "NHWC")


def _valid(x: Array, kernel: Array, stride: int = 1, **dilation) -> Array:
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "VALID",
                                        dimension_numbers=_NHWC, **dilation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_nhwc(x: Array, kernel: Array, stride: int = 1) -> Array:
    """The VALID convolution ``y[b, h, w] = sum_{i,j} x[b, s*h+i, s*w+j] @ K[i, j]`` whose
    gradient is three ``NHWC``/``HWIO`` convolutions, the layout XLA's CPU backend runs
    with its Eigen kernels everywhere, inside loops included:

    * ``dx``: ``dy`` dilated by ``s``, zero-padded by ``k - 1``, correlated with ``K``
      flipped in space, input and output channels swapped;
    * ``dK[i, j, c, o] = sum_{b,h,w} x[b, s*h+i, s*w+j, c] dy[b, h, w, o]``: ``x`` as
      ``[c, H, W, b]`` correlated with ``dy`` as ``[Ho, Wo, b, o]`` dilated by ``s``.

    A ``jax.custom_vjp``: reverse mode (``jax.grad``, also of a gradient) only;
    forward mode (``jax.jvp``) needs ``lax.conv_general_dilated`` (``Conv5(impl="xla")``).

    Args:
        x: inputs ``[B, H, W, cin]``.
        kernel: ``[k, k, cin, cout]``.
        stride: the stride ``s``.

    Returns:
        ``[B, Ho, Wo, cout]`` with ``Ho = (H - k) // s + 1`` (and ``Wo`` alike).

    Examples:
        The same values and gradients as ``lax.conv_general_dilated``:

        >>> import jax, jax.numpy as jnp
        >>> from nnmjax.models.layers import conv_nhwc
        >>> x, k = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 4))
        >>> conv_nhwc(x, k, 2).shape, float(conv_nhwc(x, k)[0, 0, 0, 0])
        ((1, 2, 2, 4), 18.0)
        >>> ref = lambda x, k: jax.lax.conv_general_dilated(
        ...     x, k, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        >>> grads = [jax.grad(lambda x, k: (f(x, k) ** 2).sum(), (0, 1))(x, k)
        ...          for f in (lambda x, k: conv_nhwc(x, k, 2), ref)]
        >>> all(bool(jnp.allclose(a, b)) for a, b in zip(*grads))
        True
    """
    return _valid(x, kernel, stride)


def _conv_nhwc_fwd(x, kernel, stride):
    return _valid(x, kernel, stride), (x, kernel)


def _conv_nhwc_bwd(stride, residuals, dy):
    x, kernel = residuals
    k, s = kernel.shape[0], stride
    (H, W), (Ho, Wo) = x.shape[1:3], dy.shape[1:3]
    Hu, Wu = s * (Ho - 1) + k, s * (Wo - 1) + k  # the rows and columns the windows cover
    flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
    dx = jax.lax.conv_general_dilated(
        dy, flipped, (1, 1), [(k - 1, k - 1 + H - Hu), (k - 1, k - 1 + W - Wu)],
        lhs_dilation=(s, s), dimension_numbers=_NHWC)
    dk = _valid(x[:, :Hu, :Wu].transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3),
                rhs_dilation=(s, s))
    return dx, dk.transpose(1, 2, 0, 3)


conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


class Conv5(nn.Module):
    """2-D convolution ``y[h, w] = b + sum_{i,j} xp[s*h+i, s*w+j] @ K[i, j]``.

    ``xp`` is ``x`` zero-padded by ``padding`` on each side (PyTorch's symmetric padding),
    ``s`` the ``stride``; the defaults (``5x5``, stride 1, no padding, with bias) are the
    paper CNNs' convolutions. Parameters ``kernel [k, k, cin, cout]`` and ``bias [cout]``
    (absent when ``use_bias=False``) match ``flax.linen.Conv(features, (k, k),
    strides=s, padding=((p, p), (p, p)))``; ``impl`` picks the formulation (see the module
    docstring for timings). Input ``[..., H, W, cin]``.

    Args:
        features: the output channels ``cout``.
        kernel_size: the kernel's side ``k``.
        impl: the formulation, one of :data:`CONV_IMPLS` but ``"flax"``.
        stride: the stride ``s``.
        padding: the zeros added on each side ``p``.
        use_bias: add the bias ``b``.

    Raises:
        ValueError: (when applied) an unknown ``impl``, or a padded input smaller than the
            kernel.

    Examples:
        A 3x3 kernel of ones on padded ones counts each output's window inside the image:

        >>> import jax.numpy as jnp
        >>> from nnmjax.models import Conv5
        >>> params = {"params": {"kernel": jnp.ones((3, 3, 1, 1)), "bias": jnp.zeros(1)}}
        >>> Conv5(1, kernel_size=3, padding=1).apply(params, jnp.ones((1, 4, 4, 1)))[0, ..., 0]
        Array([[4., 6., 6., 4.],
               [6., 9., 9., 6.],
               [6., 9., 9., 6.],
               [4., 6., 6., 4.]], dtype=float32)
    """

    features: int
    kernel_size: int = 5
    impl: str = "auto"
    stride: int = 1
    padding: int = 0
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, s, p = self.kernel_size, self.stride, self.padding
        cin = x.shape[-1]
        kernel = self.param("kernel", torch_kernel_init, (k, k, cin, self.features))
        kernel = kernel.astype(x.dtype)
        if p:
            x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(p, p), (p, p), (0, 0)])
        H, W = x.shape[-3], x.shape[-2]
        if H < k or W < k:
            raise ValueError(f"x: spatial size {(H, W)} is smaller than the {k}x{k} kernel")
        Ho, Wo = (H - k) // s + 1, (W - k) // s + 1

        def window(i, j):  # the input under kernel offset (i, j), [..., Ho, Wo, cin]
            return x[..., i:i + s * (Ho - 1) + 1:s, j:j + s * (Wo - 1) + 1:s, :]

        impl = _check_impl(self.impl)
        if impl == "shift":
            y = None
            for i in range(k):
                for j in range(k):
                    t = jnp.einsum("...hwc,cd->...hwd", window(i, j), kernel[i, j])
                    y = t if y is None else y + t
        elif impl == "im2col":
            cols = jnp.concatenate([window(i, j) for i in range(k) for j in range(k)], axis=-1)
            y = cols @ kernel.reshape(k * k * cin, self.features)
        else:  # "auto", "xla", "xla_cpu", "flax": lax.conv_general_dilated (as nn.Conv)
            batch = x.shape[:-3]
            xx = x.reshape((-1,) + x.shape[-3:])
            cpu, xla = (lambda a, b: conv_nhwc(a, b, s)), (lambda a, b: _valid(a, b, s))
            if impl == "auto":
                y = jax.lax.platform_dependent(xx, kernel, cpu=cpu, default=xla)
            else:
                y = cpu(xx, kernel) if impl == "xla_cpu" else xla(xx, kernel)
            y = y.reshape(batch + y.shape[1:])
        if not self.use_bias:
            return y
        return y + self.param("bias", _torch_bias_init(k * k * cin), (self.features,))


def max_pool2(x: Array) -> Array:
    """2x2, stride-2 max pooling of ``[..., H, W, C]`` via reshape + max (floor on odd sizes).

    Args:
        x: inputs ``[..., H, W, C]``.

    Returns:
        ``[..., H // 2, W // 2, C]``, the maximum of each 2x2 window (a last odd row or
        column is dropped).

    Examples:
        >>> import jax.numpy as jnp
        >>> from nnmjax.models import max_pool2
        >>> max_pool2(jnp.arange(25.0).reshape(1, 5, 5, 1))[0, ..., 0]
        Array([[ 6.,  8.],
               [16., 18.]], dtype=float32)
    """
    H2, W2 = x.shape[-3] // 2, x.shape[-2] // 2
    x = x[..., : 2 * H2, : 2 * W2, :]
    x = x.reshape(x.shape[:-3] + (H2, 2, W2, 2, x.shape[-1]))
    return x.max(axis=(-4, -2))


def conv5x5(features: int, impl: str, name: str, cin: int, padding: int = 0):
    """A 5x5 convolution of the paper CNNs: :class:`Conv5` or, for ``impl="flax"``, the
    reference ``flax.linen.Conv`` with the same parameters and initializers."""
    if impl == "flax":
        return nn.Conv(features, (5, 5), padding=((padding, padding), (padding, padding)),
                       name=name, kernel_init=torch_kernel_init,
                       bias_init=_torch_bias_init(25 * cin))
    return Conv5(features, 5, impl=impl, padding=padding, name=name)


def pool2(x: Array, pool: str) -> Array:
    """2x2 max pooling by ``pool``: ``"reshape"`` (:func:`max_pool2`) or ``"flax"``."""
    if pool == "reshape":
        return max_pool2(x)
    if pool == "flax":
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    raise ValueError(f"pool: unknown pooling {pool!r}; valid are {POOL_IMPLS}")
