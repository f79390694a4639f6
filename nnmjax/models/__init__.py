"""Flax models of the paper (Table 3), ByzFL's models, their layers and loss.

- :mod:`nnmjax.models.zoo`: the models and :func:`make_model`, which builds one by name;
- :mod:`nnmjax.models.layers`: PyTorch-initialised layers, :class:`Conv5`, pooling;
- :mod:`nnmjax.models.resnet`: ByzFL's ResNet-18 ... -152;
- :mod:`nnmjax.models.losses`: the NLL loss, accuracy, pytree utilities;
- :mod:`nnmjax.models.torch_weights`: PyTorch ``state_dict`` -> flax variables.

Every name below is importable from ``nnmjax.models`` itself.

Examples:
    >>> from nnmjax.models import MODELS, make_model
    >>> "paper_cnn" in MODELS
    True
"""
from nnmjax.models.layers import (CONV_IMPLS, POOL_IMPLS, Conv5, dense_torch_init, max_pool2,
                                  torch_kernel_init)
from nnmjax.models.losses import accuracy, average_batch_stats, correct, nll, param_count
from nnmjax.models.zoo import (MODELS, ByzflCifarCNN, CifarCNN, LogisticRegression, MLP,
                               PaperCNN, make_model)

__all__ = ["MODELS", "CONV_IMPLS", "POOL_IMPLS", "Conv5", "max_pool2", "PaperCNN", "CifarCNN",
           "ByzflCifarCNN", "dense_torch_init", "LogisticRegression", "MLP", "make_model", "nll",
           "accuracy", "correct", "average_batch_stats", "torch_kernel_init", "param_count"]
