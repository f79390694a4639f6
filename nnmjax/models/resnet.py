"""ResNet-18/34/50/101/152 as ByzFL defines them (its CIFAR-style ResNet, He et al. 2016).

The stem is one 3x3, stride-1 convolution with 64 channels (no 7x7 stem, no max pool),
followed by four stages of residual blocks with ``64, 128, 256, 512`` planes and strides
``1, 2, 2, 2``, a 4x4 average pool (stride 4) and one linear layer::

    y = relu(BN(conv3(x)))
    y = stage4(stage3(stage2(stage1(y))))
    out = log_softmax(W flatten(avgpool4(y)) + b)

A block adds its residual branch to a shortcut: ``relu(F(x) + S(x))``, where ``S`` is
the identity, or ``BN(conv1x1_stride(x))`` when the stride or width changes.

* :class:`BasicBlock` (expansion 1): ``F = BN(conv3(relu(BN(conv3_stride(x)))))``;
* :class:`Bottleneck` (expansion 4):
  ``F = BN(conv1(relu(BN(conv3_stride(relu(BN(conv1(x))))))))``, output ``4 * planes``.

Depths (blocks per stage): ResNet-18 ``(2, 2, 2, 2)`` basic, -34 ``(3, 4, 6, 3)`` basic,
-50 ``(3, 4, 6, 3)``, -101 ``(3, 4, 23, 3)``, -152 ``(3, 8, 36, 3)`` bottleneck. On 32x32
RGB images with 10 classes ResNet-18 has 11,173,962 parameters, the count of ByzFL's
``ResNet18`` (tested against it).

Differences from ByzFL's PyTorch models, none of which changes a forward pass:

* the output is log-probabilities (``log_softmax`` of ByzFL's logits), the convention of
  :mod:`nnmjax.models`; our NLL on it is PyTorch's ``CrossEntropyLoss`` on the logits;
* the stem takes any number of input channels (ByzFL's is fixed at 3);
* convolutions have PyTorch's padding (1 on each side for 3x3, 0 for 1x1), so stride-2
  outputs are aligned as in PyTorch, not as flax's ``"SAME"`` would align them;
* BatchNorm keeps PyTorch's defaults (momentum 0.1, i.e. flax ``momentum=0.9``,
  ``epsilon=1e-5``) and normalizes with the biased batch variance, computed in two passes
  as PyTorch does (flax's ``use_fast_variance=False``), but
  updates its running variance with the biased variance too, where PyTorch uses the
  unbiased one (a factor ``m / (m - 1)`` for ``m`` values per channel, e.g. 1.0025 for
  25 images of 4x4 in the last stage); only evaluation in ``train=False`` mode sees it.

Initialization is PyTorch's default (:func:`nnmjax.models.torch_kernel_init` for every
convolution and the linear layer, BatchNorm scale 1 and bias 0). BatchNorm in a
distributed simulation works as for :class:`nnmjax.models.CifarCNN`: each worker
normalizes with its own batch and the honest workers' running statistics are averaged.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from nnmjax.models.layers import Conv5, dense_torch_init

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "RESNETS", "MIN_SIZE"]

Array = jax.Array


def _conv(features: int, kernel: int, stride: int, impl: str, name: str) -> Conv5:
    """PyTorch's ``Conv2d(kernel, stride, padding=(kernel - 1) // 2, bias=False)``."""
    return Conv5(features, kernel, impl=impl, stride=stride, padding=(kernel - 1) // 2,
                 use_bias=False, name=name)


def _bn(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        use_fast_variance=False, name=name)


def _shortcut(x: Array, out: int, stride: int, train: bool, impl: str) -> Array:
    """Identity, or ``BN(conv1x1_stride(x))`` when the stride or the width changes."""
    if stride == 1 and x.shape[-1] == out:
        return x
    return _bn(train, "shortcut_1")(_conv(out, 1, stride, impl, "shortcut_0")(x))


class _Block(nn.Module):
    """``relu(F(x) + S(x))``; ``F`` is ``layers``' convolutions, each followed by BatchNorm
    and (but the last) ReLU."""

    planes: int
    stride: int = 1
    impl: str = "auto"
    #: output channels over ``planes`` of the block
    expansion = 1
    #: ``(kernel size, output channels over planes, strided)`` of each convolution of ``F``
    layers = ()

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        y = x
        for i, (kernel, widen, strided) in enumerate(self.layers, start=1):
            conv = _conv(widen * self.planes, kernel, self.stride if strided else 1, self.impl,
                         f"conv{i}")
            y = _bn(train, f"bn{i}")(conv(y))
            if i < len(self.layers):
                y = nn.relu(y)
        return nn.relu(y + _shortcut(x, self.expansion * self.planes, self.stride, train,
                                     self.impl))


class BasicBlock(_Block):
    """``relu(BN(conv3(relu(BN(conv3_stride(x))))) + S(x))``, ``planes`` output channels.

    Args:
        planes: the block's width; its output has ``planes`` channels.
        stride: the stride of its 3x3 convolution (and of the shortcut's 1x1).
        impl: the convolution formulation, as :class:`nnmjax.models.Conv5`'s.

    Examples:
        A stride-2 block halves the side; the width changes, so the shortcut is a
        convolution:

        >>> import jax, jax.numpy as jnp
        >>> from nnmjax.models.resnet import BasicBlock
        >>> block, x = BasicBlock(8, stride=2), jnp.zeros((1, 8, 8, 4))
        >>> variables = jax.eval_shape(block.init, jax.random.key(0), x)
        >>> sorted(variables["params"]), jax.eval_shape(block.apply, variables, x).shape
        (['bn1', 'bn2', 'conv1', 'conv2', 'shortcut_0', 'shortcut_1'], (1, 4, 4, 8))
    """

    expansion = 1
    layers = ((3, 1, True), (3, 1, False))


class Bottleneck(_Block):
    """``relu(BN(conv1(relu(BN(conv3_stride(relu(BN(conv1(x)))))))) + S(x))``, ``4 planes`` out.

    Args:
        planes: the block's width; its output has ``4 * planes`` channels.
        stride: the stride of its 3x3 convolution (and of the shortcut's 1x1).
        impl: the convolution formulation, as :class:`nnmjax.models.Conv5`'s.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from nnmjax.models.resnet import Bottleneck
        >>> block, x = Bottleneck(8), jnp.zeros((1, 8, 8, 4))
        >>> variables = jax.eval_shape(block.init, jax.random.key(0), x)
        >>> jax.eval_shape(block.apply, variables, x).shape
        (1, 8, 8, 32)
    """

    expansion = 4
    layers = ((1, 1, False), (3, 1, True), (1, 4, False))


class ResNet(nn.Module):
    """ByzFL's CIFAR-style ResNet (module docstring); NHWC in, log-probabilities out.

    Submodules are named as ByzFL's (``conv1``, ``bn1``, ``layer{s}_{b}`` for block ``b``
    of stage ``s``, ``linear``), so a PyTorch ``state_dict`` maps on name by name.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        stage_sizes: the number of blocks of each of the four stages.
        num_classes: the number of classes.
        impl: the convolution formulation.

    Examples:
        ResNet-18 on 32x32 RGB images has ByzFL's parameter count:

        >>> import jax, jax.numpy as jnp
        >>> from nnmjax.models import param_count
        >>> from nnmjax.models.resnet import RESNETS, ResNet
        >>> block, stages = RESNETS["resnet18"]
        >>> model, x = ResNet(block=block, stage_sizes=stages), jnp.zeros((2, 32, 32, 3))
        >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
        >>> param_count(variables["params"]), jax.eval_shape(model.apply, variables, x).shape
        (11173962, (2, 10))
    """

    block: type
    stage_sizes: Sequence[int]
    num_classes: int = 10
    #: convolution formulation, as :class:`nnmjax.models.Conv5`'s (``"auto"``: XLA's
    #: convolution, with :func:`nnmjax.models.layers.conv_nhwc`'s gradient on CPU)
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = nn.relu(_bn(train, "bn1")(_conv(64, 3, 1, self.impl, "conv1")(x)))
        for s, (planes, blocks) in enumerate(zip((64, 128, 256, 512), self.stage_sizes)):
            for b in range(blocks):
                stride = 2 if s > 0 and b == 0 else 1
                x = self.block(planes, stride, self.impl, name=f"layer{s + 1}_{b}")(x, train)
        x = nn.avg_pool(x, (4, 4), strides=(4, 4))
        x = x.reshape(x.shape[:-3] + (-1,))
        return nn.log_softmax(dense_torch_init(self.num_classes, x.shape[-1], "linear")(x))


#: name -> (block, blocks per stage), ByzFL's ``ResNet18`` ... ``ResNet152``
RESNETS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}


#: smallest image side the final 4x4 average pool accepts: the three stride-2 stages map a
#: side ``h`` to ``ceil(h / 8)``, which must be at least 4
MIN_SIZE = 25
