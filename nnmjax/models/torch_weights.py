"""PyTorch weights (a ByzFL model's ``state_dict``) as the variables of our flax model.

For the models ByzFL and nnmjax share (``byzfl_fc_mnist``, ``byzfl_cnn_mnist``,
``byzfl_cnn_cifar``, ``resnet18`` ... ``resnet152``), :func:`from_torch` maps ByzFL's
``state_dict`` onto ``{"params": ..., "batch_stats": ...}`` so that ``model.apply`` gives
ByzFL's outputs (as log-probabilities): start a robust run from a ByzFL checkpoint, or
check one library against the other; :func:`to_torch` goes back, e.g. to evaluate a model
trained here with ByzFL's tools.

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
from nnmjax.models.resnet import RESNETS

__all__ = ["from_torch", "to_torch", "TORCH_NAMES"]

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


def _flattened(w: np.ndarray, channels: int, *, to_hwc: bool) -> np.ndarray:
    """Permutes a linear weight ``[out, in]``'s input axis between a flattened ``(C, H, W)``
    (PyTorch) and ``(H, W, C)`` (ours) image of ``channels`` channels."""
    side = math.isqrt(w.shape[1] // channels)
    if side * side * channels != w.shape[1]:
        raise ValueError(f"state_dict: cannot unflatten {w.shape[1]} inputs into {channels} "
                         "channels of a square image; convert non-square inputs by hand")
    if to_hwc:
        return w.reshape(-1, channels, side, side).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
    return w.reshape(-1, side, side, channels).transpose(0, 3, 1, 2).reshape(w.shape[0], -1)


def _template(name: str, num_classes: int, input_shape) -> dict:
    """Shapes of ``make_model(name, ...)``'s variables, and its flattened layer's channels."""
    if name not in TORCH_NAMES:
        raise ValueError(f"name: no PyTorch counterpart for {name!r}; "
                         f"valid are {tuple(TORCH_NAMES)}")
    model = make_model(name, num_classes, input_shape)
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1,) + tuple(input_shape))))


def _flatten_spec(name: str, want) -> Tuple[str, int] | None:
    """``(linear layer after the flatten, channels it flattens)``, or None."""
    flatten = TORCH_NAMES[name][2]
    if flatten is None:
        return None
    layer, channels = flatten
    if isinstance(channels, str):
        channels = want["params"][channels]["kernel"].shape[-1]
    return layer, channels


def from_torch(name: str, state_dict: Mapping[str, Any], *, num_classes: int = 10,
               input_shape: Tuple[int, int, int] = (32, 32, 3)) -> dict:
    """Variables of ``make_model(name, num_classes, input_shape)`` holding ``state_dict``.

    ``state_dict``: ByzFL's model's ``state_dict()`` (torch tensors or arrays). Raises
    ``ValueError`` naming the keys that are missing, unexpected, or of the wrong shape.

    Args:
        name: the model, one of :data:`TORCH_NAMES`.
        state_dict: ByzFL's ``state_dict()``, PyTorch names and layouts.
        num_classes: the model's number of classes.
        input_shape: ``(H, W, C)`` of one image.

    Returns:
        ``{"params": ..., "batch_stats": ...}`` (``batch_stats`` only for models with
        BatchNorm), float32 arrays for ``model.apply``.

    Raises:
        ValueError: ``name`` has no PyTorch counterpart, or ``state_dict`` does not fit the
            model (missing, unexpected or misshapen arrays).

    Examples:
        ByzFL's ``fc_mnist`` (``_f1``, ``_f2``) on 8x8 images; weights become transposed
        kernels:

        >>> import jax
        >>> from nnmjax.models.torch_weights import from_torch
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> state_dict = {"_f1.weight": rng.normal(size=(100, 64)), "_f1.bias": np.zeros(100),
        ...               "_f2.weight": rng.normal(size=(10, 100)), "_f2.bias": np.zeros(10)}
        >>> variables = from_torch("byzfl_fc_mnist", state_dict, input_shape=(8, 8, 1))
        >>> jax.tree.map(lambda a: a.shape, variables["params"]["Dense_0"])
        {'bias': (100,), 'kernel': (64, 100)}
        >>> del state_dict["_f2.bias"]
        >>> from_torch("byzfl_fc_mnist", state_dict, input_shape=(8, 8, 1))
        Traceback (most recent call last):
        ...
        ValueError: state_dict: does not fit 'byzfl_fc_mnist' on (8, 8, 1) images with 10
        classes: 1 arrays missing, unexpected or misshapen, e.g. ["['params']['Dense_1']['bias']
        None (want (10,))"]
    """
    want = _template(name, num_classes, input_shape)
    renames, flatten = TORCH_NAMES[name][1], _flatten_spec(name, want)
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
                w = _flattened(w, flatten[1], to_hwc=True)
            w, leaf = w.T, "kernel"
        elif leaf == "weight":
            leaf = "scale"
        node = variables.setdefault(coll, {})
        for m in mods:
            node = node.setdefault(m, {})
        node[leaf] = jnp.asarray(w)
    _check_fits(name, variables, want, num_classes, input_shape)
    return variables


def to_torch(name: str, variables: Mapping[str, Any], *, num_classes: int = 10,
             input_shape: Tuple[int, int, int] = (32, 32, 3)) -> dict:
    """ByzFL's ``state_dict`` (NumPy arrays, PyTorch's names and layouts) of our variables.

    The inverse of :func:`from_torch`; load it with
    ``ref.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``. BatchNorm's
    ``num_batches_tracked`` counters, which we do not keep, are 0.

    Args:
        name: the model, one of :data:`TORCH_NAMES`.
        variables: the model's ``{"params": ..., "batch_stats": ...}``.
        num_classes: the model's number of classes.
        input_shape: ``(H, W, C)`` of one image.

    Returns:
        ``{PyTorch name: NumPy array}`` in PyTorch's layouts.

    Raises:
        ValueError: ``name`` has no PyTorch counterpart, or ``variables`` do not fit the
            model.

    Examples:
        >>> import numpy as np
        >>> from nnmjax.models.torch_weights import from_torch, to_torch
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> state_dict = {"_f1.weight": rng.normal(size=(100, 64)), "_f1.bias": np.zeros(100),
        ...               "_f2.weight": rng.normal(size=(10, 100)), "_f2.bias": np.zeros(10)}
        >>> variables = from_torch("byzfl_fc_mnist", state_dict, input_shape=(8, 8, 1))
        >>> back = to_torch("byzfl_fc_mnist", variables, input_shape=(8, 8, 1))
        >>> sorted(back), all(np.allclose(back[k], state_dict[k]) for k in state_dict)
        (['_f1.bias', '_f1.weight', '_f2.bias', '_f2.weight'], True)
    """
    want = _template(name, num_classes, input_shape)
    _check_fits(name, variables, want, num_classes, input_shape)
    inverse = {ours: theirs for theirs, ours in TORCH_NAMES[name][1].items()}
    flatten = _flatten_spec(name, want)
    prefix = ["model"] if name in RESNETS else []
    state = {}
    for path, value in jax.tree_util.tree_leaves_with_path(dict(variables)):
        coll, *mods, leaf = [k.key for k in path]
        w = np.asarray(value)
        if coll == "batch_stats":
            leaf = f"running_{leaf}"
            counter = ".".join(prefix + [_torch_name(m, inverse) for m in mods]
                               + ["num_batches_tracked"])
            state[counter] = np.zeros((), np.int64)
        elif leaf == "kernel" and w.ndim == 4:
            w, leaf = w.transpose(3, 2, 0, 1), "weight"
        elif leaf == "kernel":
            w, leaf = w.T, "weight"
            if flatten and mods == [flatten[0]]:
                w = _flattened(w, flatten[1], to_hwc=False)
        elif leaf == "scale":
            leaf = "weight"
        state[".".join(prefix + [_torch_name(m, inverse) for m in mods] + [leaf])] = w
    return state


def _torch_name(module: str, inverse: Mapping[str, str]) -> str:
    """``Dense_0`` -> ``_f1`` (renamed), ``layer1_0`` -> ``layer1.0``, ``conv1`` as is."""
    if module in inverse:
        return inverse[module]
    base, _, index = module.rpartition("_")
    return f"{base}.{index}" if base and index.isdigit() else module


def _check_fits(name, variables, want, num_classes, input_shape) -> None:
    got, need = _shapes(variables), _shapes(want)
    wrong = sorted(f"{k} {got.get(k)} (want {need.get(k)})" for k in got.keys() | need.keys()
                   if got.get(k) != need.get(k))
    if wrong:
        raise ValueError(f"state_dict: does not fit {name!r} on {tuple(input_shape)} images "
                         f"with {num_classes} classes: {len(wrong)} arrays missing, unexpected "
                         f"or misshapen, e.g. {wrong[:4]}")


def _shapes(tree) -> dict:
    """``{"['params']['conv1']['kernel']": shape, ...}``."""
    return {jax.tree_util.keystr(p): tuple(leaf.shape)
            for p, leaf in jax.tree_util.tree_leaves_with_path(dict(tree))}
