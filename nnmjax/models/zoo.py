"""The model zoo: the paper's CNNs (Table 3), small models, ByzFL's models, and
:func:`make_model`, which builds any of them by name.

All models map NHWC images to **log-probabilities** ``[B, num_classes]``; the loss is
:func:`nnmjax.models.losses.nll`, ``mean_j -log p(y_j | x_j)`` (the paper's NLL on a
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
reduces them with :func:`nnmjax.models.losses.average_batch_stats` (mean over honest
workers, an EMA of the honest workers' batch statistics; Byzantine workers never touch
them). ``train=False`` uses the running averages and disables dropout.
BatchNorm uses PyTorch's defaults (momentum 0.1, i.e. flax ``momentum=0.9``,
``epsilon=1e-5``) and, like PyTorch, computes the batch variance as ``mean((x - mean)^2)``
(flax's default ``mean(x^2) - mean^2`` loses digits when the mean is large).

ByzFL's models are here too (see :func:`make_model`): ``byzfl_fc_mnist``,
``byzfl_cnn_mnist``, ``byzfl_cnn_cifar`` (:class:`ByzflCifarCNN`) and the ResNets of
:mod:`nnmjax.models.resnet`. The layers (initializers, convolutions, pooling) are in
:mod:`nnmjax.models.layers`.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = make_model("paper_cnn", 10, (28, 28, 1))
    >>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    >>> from nnmjax.models import param_count
    >>> param_count(shapes["params"])
    176050
"""

from __future__ import annotations

from typing import Any, Callable, Tuple

import flax.linen as nn
import jax

from nnmjax.models import resnet
from nnmjax.models.layers import conv5x5, dense_torch_init, pool2

__all__ = ["MODELS", "PaperCNN", "CifarCNN", "ByzflCifarCNN", "LogisticRegression", "MLP",
           "make_model"]

#: Every model name :func:`make_model` builds (a config's ``model``).
MODELS = ("paper_cnn", "cifar_cnn", "logreg", "mlp", "byzfl_fc_mnist", "byzfl_cnn_mnist",
          "byzfl_cnn_cifar", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

Array = jax.Array


class PaperCNN(nn.Module):
    """The paper's MNIST/Fashion-MNIST CNN (Table 3): ``C(20)-R-M-C(20)-R-M-L(500)-R-L(10)-S``.

    ``impl`` selects the convolution formulation and ``pool`` the max pooling
    (all share one parameter tree). Returns log-probabilities ``[B, num_classes]``.

    Args:
        num_classes: the number of classes.
        impl: the convolution formulation, one of :data:`~nnmjax.models.layers.CONV_IMPLS`.
        pool: the max pooling, one of :data:`~nnmjax.models.layers.POOL_IMPLS`.
        channels: the output channels of the two convolutions.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from nnmjax.models import PaperCNN, param_count
        >>> model, x = PaperCNN(channels=(20, 50)), jnp.zeros((2, 28, 28, 1))
        >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
        >>> param_count(variables["params"]), jax.eval_shape(model.apply, variables, x).shape
        (431080, (2, 10))
        >>> param_count(jax.eval_shape(PaperCNN().init, jax.random.key(0), x)["params"])
        176050
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
        x = pool2(nn.relu(conv5x5(c0, self.impl, "Conv_0", x.shape[-1])(x)), self.pool)
        x = pool2(nn.relu(conv5x5(c1, self.impl, "Conv_1", c0)(x)), self.pool)
        x = x.reshape(x.shape[:-3] + (-1,))
        x = nn.relu(dense_torch_init(500, x.shape[-1], "Dense_0")(x))
        x = dense_torch_init(self.num_classes, 500, "Dense_1")(x)
        return nn.log_softmax(x)


class CifarCNN(nn.Module):
    """The paper's CIFAR-10 CNN (Table 3), see the module docstring for shapes and BatchNorm.

    ``C(64)-R-B-C(64)-R-B-M-D-C(128)-R-B-C(128)-R-B-M-D-L(128)-R-D-L(10)-S``.
    ``train=True`` uses batch statistics (``mutable=["batch_stats"]``) and
    dropout (needs ``rngs={"dropout": key}``).

    Args:
        num_classes: the number of classes.
        dropout_rate: the dropout probability.
        impl: the convolution formulation, one of :data:`~nnmjax.models.layers.CONV_IMPLS`.
        pool: the max pooling, one of :data:`~nnmjax.models.layers.POOL_IMPLS`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from nnmjax.models import CifarCNN, param_count
        >>> model, x = CifarCNN(), jnp.zeros((2, 32, 32, 3))
        >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
        >>> param_count(variables["params"]), jax.eval_shape(model.apply, variables, x).shape
        (789706, (2, 10))
        >>> param_count(variables["batch_stats"])
        768
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

        x = bn("BatchNorm_0")(nn.relu(conv5x5(64, self.impl, "Conv_0", x.shape[-1])(x)))
        x = bn("BatchNorm_1")(nn.relu(conv5x5(64, self.impl, "Conv_1", 64)(x)))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(pool2(x, self.pool))
        x = bn("BatchNorm_2")(nn.relu(conv5x5(128, self.impl, "Conv_2", 64)(x)))
        x = bn("BatchNorm_3")(nn.relu(conv5x5(128, self.impl, "Conv_3", 128)(x)))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(pool2(x, self.pool))
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

    Args:
        num_classes: the number of classes.
        impl: the convolution formulation, one of :data:`~nnmjax.models.layers.CONV_IMPLS`.
        pool: the max pooling, one of :data:`~nnmjax.models.layers.POOL_IMPLS`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from nnmjax.models import ByzflCifarCNN, param_count
        >>> model, x = ByzflCifarCNN(), jnp.zeros((2, 32, 32, 3))
        >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
        >>> param_count(variables["params"]), jax.eval_shape(model.apply, variables, x).shape
        (2324630, (2, 10))
    """

    num_classes: int = 10
    impl: str = "auto"
    pool: str = "reshape"

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        del train  # no dropout / batch norm
        for i, (cin, cout) in enumerate([(x.shape[-1], 20), (20, 100), (100, 200)]):
            x = pool2(nn.relu(conv5x5(cout, self.impl, f"conv{i + 1}", cin, padding=2)(x)),
                      self.pool)
        x = x.reshape(x.shape[:-3] + (-1,))
        x = nn.relu(dense_torch_init(512, x.shape[-1], "fc1")(x))
        x = nn.relu(dense_torch_init(256, 512, "fc2")(x))
        return nn.log_softmax(dense_torch_init(self.num_classes, 256, "fc3")(x))


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: ``log_softmax(W flatten(x) + b)``.

    Args:
        num_classes: the number of classes.

    Examples:
        With zero weights every class is equally likely, ``log(1/3)``:

        >>> import jax, jax.numpy as jnp
        >>> from nnmjax.models import LogisticRegression
        >>> model, x = LogisticRegression(num_classes=3), jnp.ones((2, 8, 8, 1))
        >>> shapes = jax.eval_shape(model.init, jax.random.key(0), x)
        >>> zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        >>> model.apply(zeros, x)
        Array([[-1.0986123, -1.0986123, -1.0986123],
               [-1.0986123, -1.0986123, -1.0986123]], dtype=float32)
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        del train
        x = x.reshape(x.shape[:-3] + (-1,))
        return nn.log_softmax(dense_torch_init(self.num_classes, x.shape[-1])(x))


class MLP(nn.Module):
    """One-hidden-layer perceptron: ``L(hidden)-R-L(num_classes)-S`` on flattened inputs.

    Args:
        num_classes: the number of classes.
        hidden: the width of the hidden layer.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from nnmjax.models import MLP
        >>> model, x = MLP(num_classes=3, hidden=4), jnp.ones((2, 8, 8, 1))
        >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
        >>> jax.tree.map(lambda s: s.shape, variables["params"])
        {'Dense_0': {'bias': (4,), 'kernel': (64, 4)}, 'Dense_1': {'bias': (3,), 'kernel': (4, 3)}}
        >>> jax.eval_shape(model.apply, variables, x).shape
        (2, 3)
    """

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
    (:mod:`nnmjax.models.resnet`). ByzFL's ``logreg_mnist`` returns sigmoids, not probabilities;
    ``"logreg"`` is the multinomial logistic regression instead.

    ``input_shape`` is ``(H, W, C)`` of one image and is checked against the
    architecture; ``options`` go to the module (e.g. ``impl="xla"``, ``hidden=128``).

    Args:
        name: one of :data:`MODELS`.
        num_classes: the number of classes, an integer ``>= 2``.
        input_shape: ``(H, W, C)`` of one image.
        **options: further fields of the module.

    Returns:
        The (uninitialised) flax module; it maps ``[B, H, W, C]`` images to
        log-probabilities ``[B, num_classes]``.

    Raises:
        ValueError: an unknown ``name``, ``num_classes < 2``, or an ``input_shape`` that is
            not ``(H, W, C)`` or too small for the architecture.

    Examples:
        >>> from nnmjax.models import make_model
        >>> model = make_model("byzfl_fc_mnist", 10, (8, 8, 1))
        >>> type(model).__name__, model.hidden
        ('MLP', 100)
        >>> make_model("paper_cnn", 10, (8, 8, 1))
        Traceback (most recent call last):
        ...
        ValueError: input_shape: paper_cnn needs images of at least 16x16; got (8, 8, 1). For
        8x8 digits use 'logreg', 'mlp' or 'byzfl_fc_mnist'.
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
