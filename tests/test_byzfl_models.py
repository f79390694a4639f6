"""ByzFL's models in flax, and PyTorch weights loaded into them (nnmjax.models.torch_weights).

With ByzFL installed, each check copies the weights of a freshly built ByzFL model into
ours and compares the outputs on the same images in evaluation mode (running
statistics) and in training mode (batch statistics), the training loss's gradient, and the
updated running statistics; parameter counts are compared for every depth of ResNet without compiling.
Without it, the weight layouts are checked against a NumPy forward pass.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnmjax.models import make_model, param_count
from nnmjax.models.torch_weights import TORCH_NAMES, _flattened, from_torch, to_torch

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def byzfl_models():
    pytest.importorskip("torch")
    return pytest.importorskip("byzfl.fed_framework.models")


def _leaves(tree, leaf):
    """``{path: array}`` of the leaves named ``leaf`` (e.g. every BatchNorm ``mean``)."""
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(tree)
            if jax.tree_util.keystr(p).endswith(f"['{leaf}']")}


@pytest.mark.byzfl
@pytest.mark.parametrize("name, shape", [("byzfl_fc_mnist", (28, 28, 1)),
                                         ("byzfl_cnn_mnist", (28, 28, 1)),
                                         ("byzfl_cnn_cifar", (32, 32, 3)),
                                         ("resnet18", (32, 32, 3)), ("resnet50", (32, 32, 3))])
def test_forward_matches_byzfl(byzfl_models, name, shape):
    import torch

    torch.manual_seed(0)
    ref = getattr(byzfl_models, TORCH_NAMES[name][0])()
    with torch.no_grad():  # non-trivial running statistics and BatchNorm affine parameters
        for mod in ref.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    model = make_model(name, 10, shape)
    x = RNG.normal(size=(3,) + shape).astype(np.float32)
    variables = from_torch(name, ref.state_dict(), input_shape=shape)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    back = to_torch(name, variables, input_shape=shape)  # ByzFL's names and layouts again
    assert back.keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(back[k], v.numpy() * ("num_batches" not in k), err_msg=k)

    def logp():  # fc_mnist and cnn_mnist return log-probabilities, the others logits
        with torch.no_grad():
            out = ref(xt)
        return (out if "mnist" in name else torch.log_softmax(out, 1)).numpy()

    _gradients_match(name, shape, model, variables, copy.deepcopy(ref), xt, x)
    ref.eval()
    np.testing.assert_allclose(jax.jit(model.apply)(variables, x), logp(), rtol=2e-4, atol=2e-4)
    if "batch_stats" not in variables:
        return
    ref.train()
    want_train = logp()  # also moves ByzFL's running statistics
    got_train, new = jax.jit(lambda v, x: model.apply(v, x, train=True,
                                                      mutable=["batch_stats"]))(variables, x)
    np.testing.assert_allclose(got_train, want_train, rtol=2e-4, atol=2e-4)
    want = from_torch(name, ref.state_dict(), input_shape=shape)["batch_stats"]
    got_means, want_means = _leaves(new["batch_stats"], "mean"), _leaves(want, "mean")
    assert got_means.keys() == want_means.keys() and len(got_means) > 10
    for k in got_means:
        np.testing.assert_allclose(got_means[k], want_means[k], rtol=1e-4, atol=1e-5, err_msg=k)
    # running variances move by the biased batch variance where PyTorch takes the unbiased
    # one: the stem's BatchNorm sees m = 3 * 32 * 32 values per channel
    m = 3 * 32 * 32
    old = variables["batch_stats"]["bn1"]["var"]
    ours = new["batch_stats"]["bn1"]["var"] - 0.9 * old
    theirs = want["bn1"]["var"] - 0.9 * old
    np.testing.assert_allclose(theirs / ours, m / (m - 1), rtol=1e-4)


def _gradients_match(name, shape, model, variables, ref, xt, x):
    """The training loss's gradient (NLL, batch statistics in BatchNorm) is PyTorch's, both
    in float64 (in float32 a ReLU input near 0 may fall on either side in either library,
    which moved a ResNet-18 gradient by 3e-3 in norm)."""
    import torch

    y = np.arange(len(x)) % 10
    ref = ref.double().train()
    out = ref(xt.double())
    logp = out if "mnist" in name else torch.log_softmax(out, 1)
    torch.nn.functional.nll_loss(logp, torch.from_numpy(y)).backward()

    with jax.enable_x64(True):
        v64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)

        def loss(params):
            lp, _ = model.apply({**v64, "params": params}, x.astype(np.float64), train=True,
                                mutable=["batch_stats"])
            return -jnp.mean(jnp.take_along_axis(lp, jnp.asarray(y)[:, None], 1))

        ours = to_torch(name, {**v64, "params": jax.grad(loss)(v64["params"])},
                        input_shape=shape)
    for k, p in ref.named_parameters():
        want = p.grad.numpy()
        assert ours[k].dtype == np.float64
        err = np.linalg.norm(ours[k] - want) / np.linalg.norm(want)
        assert err < 1e-9, (k, err)


@pytest.mark.byzfl
@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_resnet_parameter_counts_match_byzfl(byzfl_models, depth):
    model = make_model(f"resnet{depth}", 10, (32, 32, 3))
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    ref = getattr(byzfl_models, f"ResNet{depth}")()
    assert param_count(v["params"]) == sum(p.numel() for p in ref.parameters())
    buffers = sum(b.numel() for n, b in ref.named_buffers() if "running" in n)
    assert param_count(v["batch_stats"]) == buffers


def _fc_mnist_state(rng):
    """A random ``fc_mnist`` state_dict as NumPy arrays (PyTorch's layouts)."""
    return {"_f1.weight": rng.normal(size=(100, 784)), "_f1.bias": rng.normal(size=100),
            "_f2.weight": rng.normal(size=(10, 100)), "_f2.bias": rng.normal(size=10)}


def test_from_torch_layouts_against_numpy():
    """Linear layers transposed (a NumPy forward pass of ByzFL's ``fc_mnist``), and a
    flattened ``(C, H, W)`` input permuted to our ``(H, W, C)`` order."""
    sd = _fc_mnist_state(RNG)
    v = from_torch("byzfl_fc_mnist", sd, input_shape=(28, 28, 1))
    x = RNG.normal(size=(4, 28, 28, 1)).astype(np.float32)
    h = np.maximum(x.reshape(4, -1) @ sd["_f1.weight"].T + sd["_f1.bias"], 0)
    z = h @ sd["_f2.weight"].T + sd["_f2.bias"]
    want = z - z.max(1, keepdims=True)
    want -= np.log(np.exp(want).sum(1, keepdims=True))
    got = make_model("byzfl_fc_mnist", 10, (28, 28, 1)).apply(v, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)

    w, img = RNG.normal(size=(5, 3 * 4 * 4)), RNG.normal(size=(3, 4, 4))  # (C, H, W)
    hwc = _flattened(w, 3, to_hwc=True)
    np.testing.assert_allclose(hwc @ img.transpose(1, 2, 0).ravel(), w @ img.ravel(),
                               rtol=1e-10)
    np.testing.assert_array_equal(_flattened(hwc, 3, to_hwc=False), w)


@pytest.mark.parametrize("name, shape", [("byzfl_cnn_mnist", (28, 28, 1)),
                                         ("resnet18", (32, 32, 3))])
def test_to_torch_inverts_from_torch(name, shape):
    """Random variables -> PyTorch names and layouts -> the same variables."""
    model = make_model(name, 10, shape)
    want = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + shape)))
    variables = jax.tree_util.tree_map(
        lambda s: RNG.normal(size=s.shape).astype(np.float32), want)
    sd = to_torch(name, variables, input_shape=shape)
    key, torch_shape = {"resnet18": ("model.layer1.0.conv1.weight", (64, 64, 3, 3)),
                        "byzfl_cnn_mnist": ("_f1.weight", (500, 800))}[name]
    assert sd[key].shape == torch_shape
    got = from_torch(name, sd, input_shape=shape)
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, variables)


def test_from_torch_errors():
    sd = _fc_mnist_state(RNG)
    with pytest.raises(ValueError, match="no PyTorch counterpart"):
        from_torch("paper_cnn", sd, input_shape=(28, 28, 1))
    with pytest.raises(ValueError, match="missing, unexpected or misshapen.*Dense_1"):
        from_torch("byzfl_fc_mnist", {k: v for k, v in sd.items() if k != "_f2.bias"},
                   input_shape=(28, 28, 1))
    with pytest.raises(ValueError, match="misshapen"):  # 10 classes into a 100-class model
        from_torch("byzfl_fc_mnist", sd, num_classes=100, input_shape=(28, 28, 1))
    with pytest.raises(ValueError, match="square"):
        _flattened(RNG.normal(size=(5, 3 * 4 * 5)), 3, to_hwc=True)
    with pytest.raises(ValueError, match="no PyTorch counterpart"):
        to_torch("cifar_cnn", {}, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="missing"):
        to_torch("byzfl_fc_mnist", {"params": {}}, input_shape=(28, 28, 1))
