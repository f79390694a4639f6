"""Flax models of the paper (Table 3) and small models for the ``digits`` data.

All models map NHWC images to **log-probabilities** ``[B, num_classes]``; the
loss is :func:`nll`, ``mean_j -log p(y_j | x_j)`` (the paper's NLL on a
log-softmax output).

``PaperCNN`` (MNIST / Fashion-MNIST, Table 3):
``C(20)-R-M-C(20)-R-M-L(500)-R-L(10)-S`` with 5x5 VALID stride-1 convolutions
and 2x2 max pooling; ``28 -> 24 -> 12 -> 8 -> 4``, flatten ``4*4*20 = 320``
(in HWC order), ``-> 500 -> 10``; 176,050 parameters.

``CifarCNN`` (CIFAR-10, Table 3):
``C(64)-R-B-C(64)-R-B-M-D-C(128)-R-B-C(128)-R-B-M-D-L(128)-R-D-L(10)-S`` with
5x5 VALID convolutions (the paper's "padding 0"), so
``32 -> 28 -> 24 -> 12 -> 8 -> 4 -> 2``: the flatten is ``2*2*128 = 512``
(both pools counted), ``-> 128 -> 10``; 789,706 parameters plus 768 BatchNorm
statistics; dropout probability 0.25.

BatchNorm in a distributed simulation: call
``model.apply(variables, x, train=True, mutable=["batch_stats"],
rngs={"dropout": key})``. Under ``jax.vmap`` over the worker axis each honest
worker normalizes with *its own* minibatch statistics (as each worker would on
its own machine) and returns its own updated running averages; the simulation
reduces them with :func:`average_batch_stats` (mean over honest workers, an
EMA of the honest workers' batch statistics; Byzantine workers never touch
them). ``train=False`` uses the running averages and disables dropout.
BatchNorm uses PyTorch's defaults (momentum 0.1, i.e. flax ``momentum=0.9``,
``epsilon=1e-5``) and, like PyTorch, computes the batch variance as ``mean((x - mean)^2)``
(flax's default ``mean(x^2) - mean^2`` loses digits when the mean is large).

ByzFL's models are here too (see :func:`make_model`): ``byzfl_fc_mnist``,
``byzfl_cnn_mnist``, ``byzfl_cnn_cifar`` (:class:`ByzflCifarCNN`) and the ResNets of
:mod:`nnmjax.resnet`.

Initialization follows PyTorch's defaults (weights and biases
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``), as the paper's experiments were run in
PyTorch and its learning rates (e.g. ``0.75``) are tuned for that scale.

Convolution speed (``Conv5``): the kernel/bias parameters are those of
``flax.linen.Conv`` (``kernel [k, k, cin, cout]``, ``bias [cout]``), so
implementations are interchangeable on the same parameters:

* ``"shift"``: ``y = b + sum_{i,j} x[:, i:i+Ho, j:j+Wo, :] @ K[i, j]``, one
  einsum per kernel offset (k^2 shifted matmuls);
* ``"im2col"``: the k^2 shifted slices concatenated on the channel axis, one
  matmul with ``K`` reshaped to ``[k*k*cin, cout]``;
* ``"xla"``: ``lax.conv_general_dilated`` (cuDNN on GPU);
* ``"flax"`` (models only): ``flax.linen.Conv`` itself, the reference;
* ``"auto"`` (default): ``"im2col"`` on CPU (measured fastest there, and it
  compiles faster than ``"shift"``), ``"xla"`` elsewhere (not measured here:
  no accelerator was available; measure before relying on it).

Max pooling is a reshape + max (``pool="reshape"``) or ``flax.linen.max_pool``
(``pool="flax"``).

Measured on the 2-core x86 (AMD EPYC, AVX-512) CPU used for development, jax
0.10.2: jitted ``vmap(grad(nll), in_axes=(None, 0, 0))`` of ``PaperCNN`` (shared
parameters, 17 workers x 25 images of 28x28), all variants compiled first, then
timed in interleaved rounds (20 rounds) so that they share the machine's load.
The machine was shared with other jobs (load ~8 on 2 cores), which inflates
absolute times ~4x; the ordering and ratios were stable across runs::

    conv impl + pool               min ms   median ms   median / im2col
    flax nn.Conv + nn.max_pool       755       1087        1.80
    xla (lax.conv) + reshape         549        812        1.34
    im2col + reshape  (CPU default)  408        604        1.00
    shift (25 einsums) + reshape     460        630        1.04
    shift + nn.max_pool              564        791        1.31

Head to head over 40 interleaved rounds, ``im2col`` beat ``shift`` in 34 (~6%
faster) and compiles faster (8.1 s vs 11.1 s under the same load). With the
machine less loaded the fastest calls seen were 111 ms (im2col) and 120 ms
(shift), and a non-interleaved run gave medians flax 398 / xla 285 / im2col 220
/ shift 222 ms.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "MODELS",
    "CONV_IMPLS",
    "Conv5",
    "max_pool2",
    "PaperCNN",
    "CifarCNN",
    "ByzflCifarCNN",
    "dense_torch_init",
    "LogisticRegression",
    "MLP",
    "make_model",
    "nll",
    "accuracy",
    "average_batch_stats",
    "torch_kernel_init",
    "param_count",
]

#: Every model name :func:`make_model` builds (a config's ``model``).
MODELS = ("paper_cnn", "cifar_cnn", "logreg", "mlp", "byzfl_fc_mnist", "byzfl_cnn_mnist",
          "byzfl_cnn_cifar", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
CONV_IMPLS = ("auto", "shift", "im2col", "xla", "flax")
POOL_IMPLS = ("reshape", "flax")

Array = jax.Array


# ------------------------------------------------------------------ initializers


def torch_kernel_init(key, shape, dtype=jnp.float32):
    """PyTorch's default Linear/Conv weight init: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

    ``fan_in`` is the product of all but the last axis (``k*k*cin`` for a
    ``[k, k, cin, cout]`` kernel, ``din`` for a ``[din, dout]`` matrix).
    """
    bound = 1.0 / math.sqrt(math.prod(shape[:-1]))
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _torch_bias_init(fan_in: int) -> Callable:
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def dense_torch_init(features: int, fan_in: int, name: str | None = None) -> nn.Dense:
    """``nn.Dense`` with PyTorch's ``Linear`` initialization for ``fan_in`` inputs."""
    return nn.Dense(features, kernel_init=torch_kernel_init,
                    bias_init=_torch_bias_init(fan_in), name=name)


# ----------------------------------------------------------------- conv and pool


def _resolve_impl(impl: str) -> str:
    if impl not in CONV_IMPLS:
        raise ValueError(f"impl: unknown convolution implementation {impl!r}; valid are {CONV_IMPLS}")
    if impl == "auto":
        return "im2col" if jax.default_backend() == "cpu" else "xla"
    return impl


class Conv5(nn.Module):
    """2-D convolution ``y[h, w] = b + sum_{i,j} xp[s*h+i, s*w+j] @ K[i, j]``.

    ``xp`` is ``x`` zero-padded by ``padding`` on each side (PyTorch's symmetric padding),
    ``s`` the ``stride``; the defaults (``5x5``, stride 1, no padding, with bias) are the
    paper CNNs' convolutions. Parameters ``kernel [k, k, cin, cout]`` and ``bias [cout]``
    (absent when ``use_bias=False``) match ``flax.linen.Conv(features, (k, k),
    strides=s, padding=((p, p), (p, p)))``; ``impl`` picks the formulation (see the module
    docstring for timings). Input ``[..., H, W, cin]``.
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

        impl = _resolve_impl(self.impl)
        if impl == "shift":
            y = None
            for i in range(k):
                for j in range(k):
                    t = jnp.einsum("...hwc,cd->...hwd", window(i, j), kernel[i, j])
                    y = t if y is None else y + t
        elif impl == "im2col":
            cols = jnp.concatenate([window(i, j) for i in range(k) for j in range(k)], axis=-1)
            y = cols @ kernel.reshape(k * k * cin, self.features)
        else:  # "xla" and "flax": lax.conv_general_dilated (what nn.Conv calls)
            batch = x.shape[:-3]
            xx = x.reshape((-1,) + x.shape[-3:])
            y = jax.lax.conv_general_dilated(
                xx, kernel, (s, s), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            y = y.reshape(batch + y.shape[1:])
        if not self.use_bias:
            return y
        return y + self.param("bias", _torch_bias_init(k * k * cin), (self.features,))


def max_pool2(x: Array) -> Array:
    """2x2, stride-2 max pooling of ``[..., H, W, C]`` via reshape + max (floor on odd sizes)."""
    H2, W2 = x.shape[-3] // 2, x.shape[-2] // 2
    x = x[..., : 2 * H2, : 2 * W2, :]
    x = x.reshape(x.shape[:-3] + (H2, 2, W2, 2, x.shape[-1]))
    return x.max(axis=(-4, -2))


def _pool(x: Array, pool: str) -> Array:
    if pool == "reshape":
        return max_pool2(x)
    if pool == "flax":
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    raise ValueError(f"pool: unknown pooling {pool!r}; valid are {POOL_IMPLS}")


def _conv(features: int, impl: str, name: str, cin: int, padding: int = 0):
    if impl == "flax":  # the reference formulation, same parameters and initializers
        return nn.Conv(features, (5, 5), padding=((padding, padding), (padding, padding)),
                       name=name, kernel_init=torch_kernel_init,
                       bias_init=_torch_bias_init(25 * cin))
    return Conv5(features, 5, impl=impl, padding=padding, name=name)


# ------------------------------------------------------------------------ models


class PaperCNN(nn.Module):
    """The paper's MNIST/Fashion-MNIST CNN (Table 3): ``C(20)-R-M-C(20)-R-M-L(500)-R-L(10)-S``.

    ``impl`` selects the convolution formulation and ``pool`` the max pooling
    (all share one parameter tree). Returns log-probabilities ``[B, num_classes]``.
    """

    num_classes: int = 10
    impl: str = "auto"
    pool: str = "reshape"
    #: output channels of the two convolutions; ``(20, 50)`` is ByzFL's ``cnn_mnist``
    channels: Tuple[int, int] = (20, 20)

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        del train  # no dropout / batch norm
        c0, c1 = self.channels
        x = _pool(nn.relu(_conv(c0, self.impl, "Conv_0", x.shape[-1])(x)), self.pool)
        x = _pool(nn.relu(_conv(c1, self.impl, "Conv_1", c0)(x)), self.pool)
        x = x.reshape(x.shape[:-3] + (-1,))
        x = nn.relu(dense_torch_init(500, x.shape[-1], "Dense_0")(x))
        x = dense_torch_init(self.num_classes, 500, "Dense_1")(x)
        return nn.log_softmax(x)


class CifarCNN(nn.Module):
    """The paper's CIFAR-10 CNN (Table 3), see the module docstring for shapes and BatchNorm.

    ``C(64)-R-B-C(64)-R-B-M-D-C(128)-R-B-C(128)-R-B-M-D-L(128)-R-D-L(10)-S``.
    ``train=True`` uses batch statistics (``mutable=["batch_stats"]``) and
    dropout (needs ``rngs={"dropout": key}``).
    """

    num_classes: int = 10
    dropout_rate: float = 0.25
    impl: str = "auto"
    pool: str = "reshape"

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        def bn(name):
            return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                epsilon=1e-5, use_fast_variance=False, name=name)

        x = bn("BatchNorm_0")(nn.relu(_conv(64, self.impl, "Conv_0", x.shape[-1])(x)))
        x = bn("BatchNorm_1")(nn.relu(_conv(64, self.impl, "Conv_1", 64)(x)))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(_pool(x, self.pool))
        x = bn("BatchNorm_2")(nn.relu(_conv(128, self.impl, "Conv_2", 64)(x)))
        x = bn("BatchNorm_3")(nn.relu(_conv(128, self.impl, "Conv_3", 128)(x)))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(_pool(x, self.pool))
        x = x.reshape(x.shape[:-3] + (-1,))
        x = nn.relu(dense_torch_init(128, x.shape[-1], "Dense_0")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = dense_torch_init(self.num_classes, 128, "Dense_1")(x)
        return nn.log_softmax(x)


class ByzflCifarCNN(nn.Module):
    """ByzFL's ``cnn_cifar``: three padded 5x5 convolutions, then three linear layers.

    ``C(20)-R-M-C(100)-R-M-C(200)-R-M-L(512)-R-L(256)-R-L(10)-S``, each convolution 5x5
    with padding 2 (the side is kept), so ``32 -> 16 -> 8 -> 4`` and the flatten is
    ``4*4*200 = 3200`` (in HWC order; ByzFL flattens CHW, a fixed permutation of the first
    linear layer's rows). 2,324,630 parameters on 32x32 RGB images; no BatchNorm or
    dropout. ByzFL returns logits; we return their ``log_softmax``.
    """

    num_classes: int = 10
    impl: str = "auto"
    pool: str = "reshape"

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        del train  # no dropout / batch norm
        for i, (cin, cout) in enumerate([(x.shape[-1], 20), (20, 100), (100, 200)]):
            x = _pool(nn.relu(_conv(cout, self.impl, f"conv{i + 1}", cin, padding=2)(x)),
                      self.pool)
        x = x.reshape(x.shape[:-3] + (-1,))
        x = nn.relu(dense_torch_init(512, x.shape[-1], "fc1")(x))
        x = nn.relu(dense_torch_init(256, 512, "fc2")(x))
        return nn.log_softmax(dense_torch_init(self.num_classes, 256, "fc3")(x))


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: ``log_softmax(W flatten(x) + b)``."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        del train
        x = x.reshape(x.shape[:-3] + (-1,))
        return nn.log_softmax(dense_torch_init(self.num_classes, x.shape[-1])(x))


class MLP(nn.Module):
    """One-hidden-layer perceptron: ``L(hidden)-R-L(num_classes)-S`` on flattened inputs."""

    num_classes: int = 10
    hidden: int = 64

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        del train
        x = x.reshape(x.shape[:-3] + (-1,))
        x = nn.relu(dense_torch_init(self.hidden, x.shape[-1])(x))
        return nn.log_softmax(dense_torch_init(self.num_classes, self.hidden)(x))


def _builder(name: str) -> Tuple[Callable[..., nn.Module], int]:
    """``(module constructor taking num_classes and options, smallest image side)``."""
    if name.startswith("resnet"):
        from nnmjax import resnet  # resnet builds on this module

        block, stages = resnet.RESNETS[name]
        return (lambda **kw: resnet.ResNet(block=block, stage_sizes=stages, **kw),
                resnet.MIN_SIZE)
    return {
        "paper_cnn": (PaperCNN, 16),
        "cifar_cnn": (CifarCNN, 28),
        "logreg": (LogisticRegression, 1),
        "mlp": (MLP, 1),
        "byzfl_fc_mnist": (lambda **kw: MLP(hidden=100, **kw), 1),
        "byzfl_cnn_mnist": (lambda **kw: PaperCNN(channels=(20, 50), **kw), 16),
        "byzfl_cnn_cifar": (ByzflCifarCNN, 8),
    }[name]


def make_model(name: str, num_classes: int = 10,
               input_shape: Tuple[int, int, int] = (28, 28, 1), **options: Any) -> nn.Module:
    """Builds a model by name (one of :data:`MODELS`).

    The paper's ``"paper_cnn"`` and ``"cifar_cnn"`` (Table 3); ``"logreg"`` and ``"mlp"``
    (``hidden=64``) for small data; ByzFL's models: ``"byzfl_fc_mnist"`` (its
    ``fc_mnist``, an MLP with 100 hidden units), ``"byzfl_cnn_mnist"`` (``cnn_mnist``, the
    paper CNN with 50 channels in its second convolution), ``"byzfl_cnn_cifar"``
    (``cnn_cifar``, :class:`ByzflCifarCNN`) and ``"resnet18"`` ... ``"resnet152"``
    (:mod:`nnmjax.resnet`). ByzFL's ``logreg_mnist`` returns sigmoids, not probabilities;
    ``"logreg"`` is the multinomial logistic regression instead.

    ``input_shape`` is ``(H, W, C)`` of one image and is checked against the
    architecture; ``options`` go to the module (e.g. ``impl="xla"``, ``hidden=128``).
    """
    if name not in MODELS:
        raise ValueError(f"name: unknown model {name!r}; valid models are {MODELS}")
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes: must be an integer >= 2, got {num_classes!r}")
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape: expected (H, W, C), got {input_shape}")
    build, minimum = _builder(name)
    if min(input_shape[:2]) < minimum:
        raise ValueError(
            f"input_shape: {name} needs images of at least {minimum}x{minimum}; got "
            f"{input_shape}. For 8x8 digits use 'logreg', 'mlp' or 'byzfl_fc_mnist'.")
    return build(num_classes=num_classes, **options)


# ------------------------------------------------------------------ loss & utils


def nll(log_probs: Array, labels: Array) -> Array:
    """Negative log-likelihood ``mean_j -log_probs[j, labels[j]]`` (paper's NLL loss)."""
    picked = jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)
    return -jnp.mean(picked)


def accuracy(log_probs: Array, labels: Array) -> Array:
    """Fraction of ``argmax(log_probs) == labels``."""
    return jnp.mean(jnp.argmax(log_probs, axis=-1) == labels)


def average_batch_stats(batch_stats: Any) -> Any:
    """Means every leaf over its leading (worker) axis: combines per-worker BatchNorm stats."""
    return jax.tree_util.tree_map(lambda s: jnp.mean(s, axis=0), batch_stats)


def param_count(params: Any) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(math.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
