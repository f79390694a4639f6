"""Tests for nnmjax.models: shapes, parameter counts, fast conv == flax conv, loss.

Compilation dominates on CPU, so parameters are built with ``jax.eval_shape``
plus NumPy (no compiled ``init``) and each check is one jitted function.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nnmjax.models import (
    CONV_IMPLS,
    MODELS,
    Conv5,
    PaperCNN,
    accuracy,
    average_batch_stats,
    make_model,
    max_pool2,
    nll,
    param_count,
    torch_kernel_init,
)

TOL = 1e-4
RNG = np.random.default_rng(0)


def _close(a, b, tol=TOL):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


def _numpy_variables(model, x, **kw):
    """Variables of ``model`` with PyTorch-like random values, without compiling ``init``."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, **kw))

    def fill(path, s):
        name = jax.tree_util.keystr(path)
        if "batch_stats" in name:
            return np.ones(s.shape, np.float32) if "var" in name else np.zeros(s.shape, np.float32)
        if "scale" in name:
            return np.ones(s.shape, np.float32)
        bound = 1.0 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1
        return RNG.uniform(-bound, bound, s.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize("impl", ["shift", "im2col", "xla", "xla_cpu"])
@pytest.mark.parametrize("k, stride, pad, bias, out_hw", [(5, 1, 0, True, (7, 6)),
                                                          (3, 2, 1, False, (6, 5)),
                                                          (1, 2, 0, False, (6, 5))])
def test_conv5_matches_flax_conv(impl, k, stride, pad, bias, out_hw):
    """Also strided and padded (ResNet's 3x3 / 1x1 convolutions): PyTorch's symmetric
    padding, which flax's ``"SAME"`` is not for stride 2."""
    x = RNG.normal(size=(2, 3, 11, 10, 3)).astype(np.float32)  # extra leading (worker) axis
    ref = nn.Conv(4, (k, k), strides=stride, padding=((pad, pad), (pad, pad)), use_bias=bias)
    mine = Conv5(4, k, impl=impl, stride=stride, padding=pad, use_bias=bias)
    params = _numpy_variables(ref, x)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
        jax.eval_shape(lambda: mine.init(jax.random.key(0), x)))
    g = RNG.normal(size=(2, 3) + out_hw + (4,)).astype(np.float32)

    @jax.jit
    def both(p, xx):
        outs = []
        for m in (mine, ref):
            loss = lambda p, xx: jnp.sum(m.apply(p, xx) * g)
            outs.append((m.apply(p, xx), jax.grad(loss, argnums=(0, 1))(p, xx)))
        return outs

    (y, gy), (y_ref, gy_ref) = both(params, x)
    assert y.shape == (2, 3) + out_hw + (4,)
    _close(y, y_ref)
    _close(gy, gy_ref)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_nhwc_gradient_equals_autodiff_batched_kernels_inside_scan(stride):
    """The gradient of ``conv_nhwc`` where the simulator takes it: under ``vmap`` with each
    worker's own kernel (decentralized nodes, FedAvg clients) and inside ``lax.scan``."""
    from nnmjax.models.layers import conv_nhwc

    x = RNG.normal(size=(3, 2, 12, 11, 4)).astype(np.float32)
    k = RNG.normal(size=(3, 5, 5, 4, 6)).astype(np.float32)
    ref = lambda x, k: jax.lax.conv_general_dilated(
        x, k, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    mine = lambda x, k: conv_nhwc(x, k, stride)

    def grads(conv):
        def step(carry, _):
            g = jax.vmap(jax.grad(lambda x, k: jnp.sum(jnp.sin(conv(x, k))), (0, 1)))(*carry)
            return carry, g
        return jax.jit(lambda x, k: jax.lax.scan(step, (x, k), None, length=2)[1])(x, k)

    _close(grads(mine), grads(ref))


def test_conv_nhwc_second_order_gradient_equals_autodiff():
    from nnmjax.models.layers import conv_nhwc

    x = RNG.normal(size=(2, 9, 8, 3)).astype(np.float32)
    k = RNG.normal(size=(3, 3, 3, 2)).astype(np.float32)
    ref = lambda x, k: jax.lax.conv_general_dilated(
        x, k, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def hvp_like(conv):
        inner = jax.grad(lambda x, k: jnp.sum(jnp.tanh(conv(x, k))), (0, 1))
        return jax.grad(lambda x, k: sum(jnp.sum(g ** 2) for g in inner(x, k)), (0, 1))(x, k)

    _close(hvp_like(lambda x, k: conv_nhwc(x, k, 2)), hvp_like(ref))


def test_max_pool2_matches_flax():
    x = RNG.normal(size=(3, 9, 8, 5)).astype(np.float32)  # odd H: floor, like VALID
    g = RNG.normal(size=(3, 4, 4, 5)).astype(np.float32)
    ref = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2), padding="VALID")

    @jax.jit
    def both(v):
        return [(f(v), jax.grad(lambda u: jnp.sum(f(u) * g))(v)) for f in (max_pool2, ref)]

    mine, theirs = both(x)
    _close(mine, theirs)


def test_paper_cnn_fast_equals_flax_reference_vmapped():
    """Default formulation (auto conv, reshape pool) == nn.Conv/nn.max_pool, per worker."""
    x = RNG.normal(size=(2, 3, 28, 28, 1)).astype(np.float32)  # 2 workers x 3 images
    y = np.array([[0, 3, 7], [9, 1, 1]])
    fast, ref = PaperCNN(), PaperCNN(impl="flax", pool="flax")
    v = _numpy_variables(ref, x[0])
    assert jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(
        jax.eval_shape(lambda: fast.init(jax.random.key(0), x[0])))

    @jax.jit
    def both(p, xs, ys):
        res = []
        for m in (fast, ref):
            def worker(xx, yy, m=m):
                out = m.apply(p, xx)
                return out, jax.grad(lambda q: nll(m.apply(q, xx), yy))(p)
            res.append(jax.vmap(worker)(xs, ys))
        return res

    (out, g), (out_ref, g_ref) = both(v, x, y)
    assert out.shape == (2, 3, 10)
    _close(out, out_ref)
    _close(g, g_ref)
    # per-worker gradients differ (the vmap kept workers apart)
    assert not np.allclose(g["params"]["Dense_1"]["bias"][0], g["params"]["Dense_1"]["bias"][1])


def test_paper_cnn_shapes_and_param_count():
    m = make_model("paper_cnn", 10, (28, 28, 1))
    v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))))
    assert param_count(v["params"]) == 176_050
    shapes = jax.tree_util.tree_map(lambda s: s.shape, v["params"])
    assert shapes["Conv_0"] == {"kernel": (5, 5, 1, 20), "bias": (20,)}
    assert shapes["Conv_1"] == {"kernel": (5, 5, 20, 20), "bias": (20,)}
    assert shapes["Dense_0"]["kernel"] == (320, 500)
    assert shapes["Dense_1"]["kernel"] == (500, 10)
    out = jax.eval_shape(m.apply, v, jnp.zeros((3, 28, 28, 1)))
    assert out.shape == (3, 10)


def test_torch_default_init_bounds():
    k = torch_kernel_init(jax.random.key(0), (5, 5, 4, 8))
    bound = 1 / np.sqrt(5 * 5 * 4)
    assert float(jnp.abs(k).max()) <= bound and float(jnp.abs(k).max()) > 0.9 * bound


def test_cifar_cnn_train_eval_batch_stats():
    m = make_model("cifar_cnn", 10, (32, 32, 3), impl="xla")  # conv impls are tested above
    x = RNG.normal(size=(2, 3, 32, 32, 3)).astype(np.float32)  # 2 workers x 3 images
    v = _numpy_variables(m, x[0])
    assert param_count(v["params"]) == 789_706
    assert param_count(v["batch_stats"]) == 768
    assert v["params"]["Dense_0"]["kernel"].shape == (2 * 2 * 128, 128)

    @jax.jit
    def run(v, xs, keys):
        def worker(xx, key):
            return m.apply(v, xx, train=True, mutable=["batch_stats"], rngs={"dropout": key})

        outs, new = jax.vmap(worker)(xs, keys)
        evals = m.apply(v, xs[0])  # eval: running averages, no dropout
        return outs, new, evals, average_batch_stats(new["batch_stats"])

    outs, new, evals, avg = run(v, x, jax.random.split(jax.random.key(2), 2))
    assert outs.shape == (2, 3, 10) and evals.shape == (3, 10)
    np.testing.assert_allclose(np.exp(evals).sum(-1), 1.0, rtol=1e-5)
    mean0 = new["batch_stats"]["BatchNorm_0"]["mean"]
    assert mean0.shape == (2, 64) and not np.allclose(mean0[0], mean0[1])
    assert avg["BatchNorm_0"]["mean"].shape == (64,)
    np.testing.assert_allclose(avg["BatchNorm_0"]["mean"], mean0.mean(0), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_small_models(name):
    m = make_model(name, 10, (8, 8, 1))
    x = RNG.normal(size=(5, 8, 8, 1)).astype(np.float32)
    v = _numpy_variables(m, x)
    assert param_count(v["params"]) == {"logreg": 650, "mlp": 64 * 64 + 64 + 64 * 10 + 10}[name]
    out = jax.jit(m.apply)(v, x)
    assert out.shape == (5, 10)
    np.testing.assert_allclose(np.exp(out).sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name, shape, params, stats", [
    ("byzfl_fc_mnist", (28, 28, 1), 79_510, 0),
    ("byzfl_cnn_mnist", (28, 28, 1), 431_080, 0),
    ("byzfl_cnn_cifar", (32, 32, 3), 2_324_630, 0),
    ("resnet18", (32, 32, 3), 11_173_962, 9_600),
    ("resnet34", (32, 32, 3), 21_282_122, 17_024),
    ("resnet50", (32, 32, 3), 23_520_842, 53_120),
    ("resnet101", (32, 32, 3), 42_512_970, 105_344),
    ("resnet152", (32, 32, 3), 58_156_618, 151_424),
])
def test_byzfl_model_sizes(name, shape, params, stats):
    """ByzFL's models: its PyTorch modules' parameter and running-statistic counts
    (compared with ByzFL itself, and output for output, in test_byzfl_models.py)."""
    m = make_model(name, 10, shape)
    v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1,) + shape)))
    assert param_count(v["params"]) == params
    assert param_count(v.get("batch_stats", {})) == stats
    assert jax.eval_shape(m.apply, v, jnp.zeros((2,) + shape)).shape == (2, 10)


def test_resnet_takes_any_channels_and_checks_the_size():
    m = make_model("resnet18", 10, (28, 28, 1))  # MNIST-sized: 28 -> 4 before the pool
    v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))))
    assert v["params"]["conv1"]["kernel"].shape == (3, 3, 1, 64)
    with pytest.raises(ValueError, match="at least 25x25"):
        make_model("resnet18", 10, (24, 24, 3))
    with pytest.raises(ValueError, match="at least 8x8"):
        make_model("byzfl_cnn_cifar", 10, (7, 7, 3))


def test_make_model_errors():
    with pytest.raises(ValueError, match="valid models"):
        make_model("resnet", 10, (28, 28, 1))
    with pytest.raises(ValueError, match="input_shape"):
        make_model("paper_cnn", 10, (8, 8, 1))
    with pytest.raises(ValueError, match="input_shape"):
        make_model("mlp", 10, (8, 8))
    with pytest.raises(ValueError, match="num_classes"):
        make_model("mlp", 1, (8, 8, 1))
    with pytest.raises(ValueError, match="impl"):
        jax.eval_shape(lambda: PaperCNN(impl="fft").init(jax.random.key(0),
                                                         jnp.zeros((1, 28, 28, 1))))
    assert {"paper_cnn", "cifar_cnn", "logreg", "mlp"} <= set(MODELS)
    assert {"shift", "xla", "auto"} <= set(CONV_IMPLS)


def test_nll_and_accuracy():
    logits = RNG.normal(size=(6, 10)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 9])
    want = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    np.testing.assert_allclose(nll(jax.nn.log_softmax(logits), labels), want, rtol=1e-5)
    lp = np.log(np.eye(10)[[0, 1, 5]] * 0.9 + 0.01)
    np.testing.assert_allclose(accuracy(lp, np.array([0, 1, 2])), 2 / 3, rtol=1e-6)
