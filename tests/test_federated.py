"""``nnmjax.optim.federated``: robust FedAvg rounds in a user's own loop."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnmjax
from nnmjax.optim import federated
from nnmjax.optim import transforms as T

H, F, D = 7, 2, 6


def loss_fn(w, batch):
    x, y = batch
    return jnp.mean((x @ w["a"] + w["b"] - y) ** 2)


def data(seed, steps, batch=5):
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (H, steps, batch, D))
    y = x @ jnp.arange(1.0, D + 1) + 0.1 * jax.random.normal(ky, (H, steps, batch))
    return x, y


def params():
    return {"a": jnp.zeros(D), "b": jnp.zeros(())}


def server(lr):
    rule = nnmjax.rule("nnm+cwtm", F)
    return optax.chain(T.inject_attack("alie", F), T.robust_aggregate(rule), optax.sgd(lr))


def test_one_local_sgd_step_is_a_robust_dgd_step():
    """One local SGD step (rate lr), server rate 1, every client: a robust D-GD step of rate
    lr on the same minibatches (ALIE and NNM+CWTM commute with the scaling by lr)."""
    lr = 0.05
    x, y = data(0, steps=1)
    fed, dgd = server(1.0), server(lr)
    w_fed = w_dgd = params()
    s_fed, s_dgd = fed.init(w_fed), dgd.init(w_dgd)
    for _ in range(4):
        local = federated.local_updates(loss_fn, w_fed, (x, y), optimizer=optax.sgd(lr))
        u, s_fed = fed.update(federated.pseudo_gradients(local.updates), s_fed, w_fed)
        w_fed = optax.apply_updates(w_fed, u)
        grads = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))(w_dgd, (x[:, 0], y[:, 0]))
        u, s_dgd = dgd.update(grads, s_dgd, w_dgd)
        w_dgd = optax.apply_updates(w_dgd, u)
        for a, b in zip(jax.tree.leaves(w_fed), jax.tree.leaves(w_dgd)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_local_steps_match_a_python_loop_with_momentum():
    x, y = data(1, steps=5)
    opt = optax.sgd(0.02, momentum=0.9)
    res = jax.jit(lambda w: federated.local_updates(loss_fn, w, (x, y), optimizer=opt))(params())
    for i in range(H):
        w, st, losses = params(), opt.init(params()), []
        for t in range(5):
            loss, g = jax.value_and_grad(loss_fn)(w, (x[i, t], y[i, t]))
            u, st = opt.update(g, st, w)
            w, losses = optax.apply_updates(w, u), losses + [float(loss)]
        np.testing.assert_allclose(np.asarray(res.updates["a"][i]), np.asarray(w["a"]), rtol=1e-5,
                                   atol=1e-6)
        assert float(res.loss[i]) == pytest.approx(np.mean(losses), rel=1e-5)


def test_rounds_vmapped_over_seeds_equal_rounds_one_by_one():
    fed = server(1.0)
    opt = optax.sgd(0.05)

    def run(seed):
        kx, ky = jax.random.split(jax.random.key(seed))
        x = jax.random.normal(kx, (H, 2, 5, D))
        y = x @ jnp.ones(D) + jax.random.normal(ky, (H, 2, 5))
        w, st = params(), fed.init(params())
        for _ in range(3):
            local = federated.local_updates(loss_fn, w, (x, y), optimizer=opt)
            u, st = fed.update(federated.pseudo_gradients(local.updates), st, w)
            w = optax.apply_updates(w, u)
        return w["a"]

    seeds = jnp.arange(3)
    together = jax.jit(jax.vmap(run))(seeds)
    for s in range(3):
        np.testing.assert_allclose(np.asarray(together[s]), np.asarray(jax.jit(run)(s)), rtol=1e-5,
                                   atol=1e-6)


def test_bad_batches_and_participation_raise():
    opt = optax.sgd(0.1)
    x, y = data(2, steps=2)
    with pytest.raises(ValueError, match="leading"):
        federated.local_updates(loss_fn, params(), (x, y[:, :1]), optimizer=opt)
    with pytest.raises(ValueError, match="local_steps"):
        federated.local_updates(loss_fn, params(), (x[:, :0], y[:, :0]), optimizer=opt)
    for p in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="participation"):
            federated.sample_clients(jax.random.key(0), 13, 4, p)


def test_sample_clients_without_replacement():
    for seed in range(5):
        idx, f = federated.sample_clients(jax.random.key(seed), 13, 4, 0.5)
        assert len(set(np.asarray(idx).tolist())) == 6 and f == 2
        assert np.all(np.diff(np.asarray(idx)) > 0) and 0 <= int(idx.min()) and int(idx.max()) < 13
    idx, f = federated.sample_clients(jax.random.key(0), 13, 4, 1.0)
    assert np.asarray(idx).tolist() == list(range(13)) and f == 4


def test_local_updates_carry_each_clients_model_state():
    """With ``model_state`` (e.g. BatchNorm statistics) each client carries its own through
    its local steps, and the result holds every client's final state."""
    def loss_fn(w, state, batch):
        return jnp.sum((w - batch) ** 2), {"seen": state["seen"] + batch}

    batches = jnp.arange(6.0).reshape(2, 3)  # 2 clients, 3 local steps of one scalar each
    res = federated.local_updates(loss_fn, jnp.zeros(()), batches, optimizer=optax.sgd(0.1),
                                  model_state={"seen": jnp.zeros(())})
    assert res.model_state["seen"].tolist() == [3.0, 12.0]
    plain = federated.local_updates(lambda w, b: jnp.sum((w - b) ** 2), jnp.zeros(()), batches,
                                    optimizer=optax.sgd(0.1))
    np.testing.assert_allclose(np.asarray(res.updates), np.asarray(plain.updates))
    assert plain.model_state is None


@pytest.mark.parametrize("per_call", [1, 2])
def test_clients_in_blocks_equal_clients_in_one_vmap(per_call):
    def loss_fn(w, batch):
        x, y = batch
        return jnp.mean((jnp.tanh(x @ w) - y) ** 2)

    x = jax.random.normal(jax.random.key(0), (5, 3, 4, 6))
    y = jax.random.normal(jax.random.key(1), (5, 3, 4))
    w = jax.random.normal(jax.random.key(2), (6,))
    opt = optax.sgd(0.1, momentum=0.5)
    one = federated.local_updates(loss_fn, w, (x, y), optimizer=opt)
    blocks = federated.local_updates(loss_fn, w, (x, y), optimizer=opt, clients_per_call=per_call)
    np.testing.assert_allclose(np.asarray(blocks.updates), np.asarray(one.updates), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(np.asarray(blocks.loss), np.asarray(one.loss), rtol=1e-6)
