"""PyTorch weights (a ByzFL model's ``state_dict``) as the variables of our flax model.

For the models ByzFL and nnmjax share (``byzfl_fc_mnist``, ``byzfl_cnn_mnist``,
``byzfl_cnn_cifar``, ``resnet18`` ... ``resnet152``), :func:`from_torch` maps ByzFL's
``state_dict`` onto ``{"params": ..., "batch_stats": ...}`` so that ``model.apply`` gives
ByzFL's outputs (as log-probabilities): start a robust run from a ByzFL checkpoint, or
check one library against the other.

Layouts: a convolution's ``weight [out, in, kh, kw]`` becomes ``kernel [kh, kw, in, out]``;
a linear layer's ``weight [out, in]`` becomes ``kernel [in, out]``, and for the first
linear layer after a flatten its rows are permuted from PyTorch's ``(C, H, W)`` order to
our ``(H, W, C)`` one; BatchNorm's ``weight``, ``bias``, ``running_mean`` and
``running_var`` become ``scale``, ``bias`` and the ``batch_stats`` ``mean`` and ``var``
(``num_batches_tracked`` is dropped). Names: ByzFL's ResNets wrap the network in
``model.``, which is dropped, and an index joins its module (``layer1.0`` ->
``layer1_0``, ``shortcut.1`` -> ``shortcut_1``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from nnmjax.models import make_model
from nnmjax.resnet import RESNETS

__all__ = ["from_torch", "TORCH_NAMES"]

#: our model -> (ByzFL's class, renames of ByzFL's modules, (the linear layer after the
#: flatten, the channels it flattens: a number, or the module whose output it flattens))
TORCH_NAMES = {
    "byzfl_fc_mnist": ("fc_mnist", {"_f1": "Dense_0", "_f2": "Dense_1"}, None),
    "byzfl_cnn_mnist": ("cnn_mnist",
                        {"_c1": "Conv_0", "_c2": "Conv_1", "_f1": "Dense_0", "_f2": "Dense_1"},
                        ("Dense_0", "Conv_1")),
    "byzfl_cnn_cifar": ("cnn_cifar", {}, ("fc1", "conv3")),
    **{name: (f"ResNet{name[6:]}", {}, ("linear", 512 * block.expansion))
       for name, (block, _) in RESNETS.items()},
}


def _path(key: str, renames: Mapping[str, str]) -> list[str]:
    """``model.layer1.0.shortcut.1.weight`` -> ``[layer1_0, shortcut_1, weight]``."""
    parts = key.split(".")
    if parts[0] == "model":
        parts = parts[1:]
    out: list[str] = []
    for p in parts:
        if p.isdigit() and out:
            out[-1] += f"_{p}"
        else:
            out.append(renames.get(p, p))
    return out


def _chw_to_hwc(w: np.ndarray, channels: int) -> np.ndarray:
    """Permutes a linear weight's input axis from a flattened ``(C, H, W)`` to ``(H, W, C)``."""
    side = math.isqrt(w.shape[1] // channels)
    if side * side * channels != w.shape[1]:
        raise ValueError(f"state_dict: cannot unflatten {w.shape[1]} inputs into {channels} "
                         "channels of a square image; load non-square inputs by hand")
    return w.reshape(w.shape[0], channels, side, side).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)


def from_torch(name: str, state_dict: Mapping[str, Any], *, num_classes: int = 10,
               input_shape: Tuple[int, int, int] = (32, 32, 3)) -> dict:
    """Variables of ``make_model(name, num_classes, input_shape)`` holding ``state_dict``.

    ``state_dict``: ByzFL's model's ``state_dict()`` (torch tensors or arrays). Raises
    ``ValueError`` naming the keys that are missing, unexpected, or of the wrong shape.
    """
    if name not in TORCH_NAMES:
        raise ValueError(f"name: no PyTorch counterpart for {name!r}; "
                         f"valid are {tuple(TORCH_NAMES)}")
    _, renames, flatten = TORCH_NAMES[name]
    model = make_model(name, num_classes, input_shape)
    want = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1,) + tuple(input_shape))))
    variables: dict = {}
    for key, value in state_dict.items():
        *mods, leaf = _path(key, renames)
        w = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value,
                       np.float32)
        if leaf == "num_batches_tracked":
            continue
        coll = "params"
        if leaf in ("running_mean", "running_var"):
            coll, leaf = "batch_stats", leaf[len("running_"):]
        elif leaf == "weight" and w.ndim == 4:
            w, leaf = w.transpose(2, 3, 1, 0), "kernel"
        elif leaf == "weight" and w.ndim == 2:
            if flatten and mods == [flatten[0]]:
                channels = flatten[1]
                if isinstance(channels, str):
                    channels = want["params"][channels]["kernel"].shape[-1]
                w = _chw_to_hwc(w, channels)
            w, leaf = w.T, "kernel"
        elif leaf == "weight":
            leaf = "scale"
        node = variables.setdefault(coll, {})
        for m in mods:
            node = node.setdefault(m, {})
        node[leaf] = jnp.asarray(w)
    got, need = _shapes(variables), _shapes(want)
    wrong = sorted(f"{k} {got.get(k)} (want {need.get(k)})" for k in got.keys() | need.keys()
                   if got.get(k) != need.get(k))
    if wrong:
        raise ValueError(f"state_dict: does not fit {name!r} on {tuple(input_shape)} images "
                         f"with {num_classes} classes: {len(wrong)} arrays missing, unexpected "
                         f"or misshapen, e.g. {wrong[:4]}")
    return variables


def _shapes(tree) -> dict:
    """``{"['params']['conv1']['kernel']": shape, ...}``."""
    return {jax.tree_util.keystr(p): tuple(leaf.shape)
            for p, leaf in jax.tree_util.tree_leaves_with_path(dict(tree))}
