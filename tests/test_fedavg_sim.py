"""Robust FedAvg in the simulator (``algorithm = "fedavg"``, nnmjax.sim.fedavg)."""
import dataclasses

import jax
import numpy as np
import pytest

from nnmjax.experiments.config import Config, load_config
from nnmjax.sim import build_experiment
from nnmjax.sim.fedavg import local_keys
from simcheck import assert_vmapped_runs_equal_one_by_one

TINY = ["steps=4", "eval_every=2", "seeds=[1]", "n=7", "f=2", "batch_size=5",
        "model='logreg'", "attacks=['alie']", "rules=['nnm+cwtm']"]


def _fedavg(**changes):
    base = load_config(None, TINY + ["algorithm='fedavg'"])
    return dataclasses.replace(base, **changes)


def _params(state):
    return [np.asarray(a) for a in jax.tree.leaves(state.params)]


@pytest.mark.parametrize("attack, rule", [("alie", "nnm+cwtm"), ("label_flipping", "krum")])
def test_one_local_step_is_a_dshb_step_with_momentum_zero(attack, rule):
    """One local SGD step, full participation, server_lr = 1, no clipping: each round is a
    robust D-SHB step with momentum 0 (same minibatches, same step sizes)."""
    fed = _fedavg(clip=None, lr_schedule="paper_mnist", lr=0.5)
    dshb = dataclasses.replace(fed, algorithm="dshb", momentum=0.0)
    a = build_experiment(fed, attack, rule, [3])
    b = build_experiment(dshb, attack, rule, [3])
    sa, sb = a.init(), b.init()
    for _ in range(3):
        sa, (la, ka) = a.run_chunk(sa, 1)
        sb, (lb, kb) = b.run_chunk(sb, 1)
        for x, y in zip(_params(sa), _params(sb)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(la), np.asarray(lb), rtol=1e-5)
    assert int(sa.step[0]) == 3


def test_vmapped_seeds_equal_one_by_one():
    config = _fedavg(local_steps=2, participation=0.6, local_momentum=0.5, server_lr=0.8)
    assert_vmapped_runs_equal_one_by_one(config, "alie", "nnm+cwtm", [1, 2], 3)


def test_local_steps_and_participation_change_the_run():
    base = build_experiment(_fedavg(), "alie", "nnm+cwtm", [1])
    runs = {"base": base.run_chunk(base.init(), 2)}
    for name, config in {"steps": _fedavg(local_steps=3), "part": _fedavg(participation=0.5),
                         }.items():
        exp = build_experiment(config, "alie", "nnm+cwtm", [1])
        runs[name] = exp.run_chunk(exp.init(), 2)
    ref = _params(runs["base"][0])
    for name in ("steps", "part"):
        assert not all(np.allclose(x, y) for x, y in zip(ref, _params(runs[name][0]))), name
        assert np.all(np.isfinite(np.asarray(runs[name][1][0])))


def test_label_flipping_clients_train_on_their_own_data_when_sampled():
    """Under label flipping the round's Byzantine clients (rows n - f ..) are drawn too and
    train on flipped labels; the rule is told floor(p f)."""
    config = _fedavg(participation=0.5, n=9, f=2)
    exp = build_experiment(config, "label_flipping", "cwtm", [1, 2])
    assert config.round_sizes == (3, 1) and exp.rule.f == 1
    from nnmjax.sim.fedavg import participants

    picked = participants(exp.spec, jax.random.key(0))
    assert picked.shape == (4,) and int(picked[-1]) >= config.honest
    assert np.all(np.diff(np.asarray(picked[:3])) > 0) and int(picked[2]) < config.honest
    _, (loss, _) = exp.run_chunk(exp.init(), 2)
    assert np.all(np.isfinite(np.asarray(loss)))


def test_local_keys_start_from_the_rounds_key():
    key = jax.random.key(5)
    keys = local_keys(key, 3)
    data = np.asarray(jax.random.key_data(keys))
    assert data.shape[0] == 3 and np.array_equal(data[0], np.asarray(jax.random.key_data(key)))
    assert len({tuple(row.ravel()) for row in data}) == 3


@pytest.mark.parametrize("item, match", [
    (dict(participation=0.0), "participation"),
    (dict(participation=1.5), "participation"),
    (dict(local_steps=0), "local_steps"),
    (dict(local_steps=2.0), "local_steps"),
    (dict(server_lr=0.0), "server_lr"),
    (dict(local_momentum=1.0), "local_momentum"),
    (dict(server_lr_schedule="cosine"), "server_lr_schedule"),
    (dict(mesh=(("workers", 2),)), "mesh"),
    (dict(n=9, f=4, participation=0.5), "participation"),
])
def test_fedavg_config_errors_name_the_key(item, match):
    with pytest.raises(ValueError, match=f"config key '{match}'"):
        Config(algorithm="fedavg", **item)


@pytest.mark.parametrize("key", ["local_steps", "participation", "server_lr"])
def test_fedavg_keys_are_refused_by_the_other_algorithms(key):
    value = {"local_steps": 5, "participation": 0.5, "server_lr": 0.1}[key]
    with pytest.raises(ValueError, match=f"config key '{key}': is a key of algorithm = 'fedavg'"):
        Config(algorithm="dshb", **{key: value})


def test_fedavg_keys_are_in_a_fedavg_runs_identity_only():
    dshb = Config().runs()[0].record_key()
    assert "local_steps" not in dshb and "participation" not in dshb
    fed = Config(algorithm="fedavg", local_steps=5).runs()[0]
    assert fed.record_key()["local_steps"] == 5
    assert fed.hash() != Config(algorithm="fedavg").runs()[0].hash()


@pytest.mark.byzfl
def test_a_round_matches_byzfls_fedavg_update_for_update():
    """ByzFL 0.0.11's FedAvg round (its benchmark's train.py: each selected client's
    compute_model_update of T local SGD steps, ALIE on the clients' weights, NNM + TrMean of
    the weights as the new model) against federated.local_updates and the server chain on
    the clients' updates, from the same weights on the same minibatches. The two agree
    because ALIE, NNM and TrMean commute with a common translation (aggregating weights or
    updates is the same); ByzFL's fc_mnist, 5 clients, f = 2, two rounds."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("byzfl")
    import optax
    from byzfl import ByzantineClient, Client, Server
    from torch.utils.data import DataLoader, TensorDataset

    import nnmjax
    from nnmjax.models import make_model
    from nnmjax.models.losses import nll
    from nnmjax.models.torch_weights import from_torch
    from nnmjax.optim import federated, transforms as T

    h, f, steps, b, lr, wd = 5, 2, 3, 4, 0.1, 1e-4
    rng = np.random.default_rng(0)
    x = rng.normal(size=(h, steps * b, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, size=(h, steps * b))
    torch.manual_seed(0)
    loader = lambda i: DataLoader(TensorDataset(torch.tensor(x[i]), torch.tensor(y[i])),
                                  batch_size=b, shuffle=False)
    common = {"model_name": "fc_mnist", "device": "cpu", "optimizer_name": "SGD",
              "learning_rate": lr, "weight_decay": wd, "milestones": [100],
              "learning_rate_decay": 1.0}
    clients = [Client({**common, "loss_name": "NLLLoss", "LabelFlipping": False, "nb_labels": 10,
                       "momentum": 0.0, "training_dataloader": loader(i),
                       "store_per_client_metrics": False}) for i in range(h)]
    test = DataLoader(TensorDataset(torch.tensor(x[0]), torch.tensor(y[0])), batch_size=b)
    server = Server({**common, "test_loader": test,
                     "aggregator_info": {"name": "TrMean", "parameters": {"f": f}},
                     "pre_agg_list": [{"name": "NNM", "parameters": {"f": f}}]})
    byzantine = ByzantineClient({"name": "ALittleIsEnough", "f": f, "parameters": {}})

    model = make_model("byzfl_fc_mnist", 10, (28, 28, 1))
    params = from_torch("byzfl_fc_mnist", server.get_dict_parameters(),
                        input_shape=(28, 28, 1))["params"]
    chain = optax.chain(T.inject_attack("alie", f), T.robust_aggregate(nnmjax.rule("nnm+cwtm", f)),
                        optax.sgd(1.0))
    chain_state = chain.init(params)

    def loss_fn(w, batch):
        xb, yb = batch
        l2 = sum(jax.numpy.sum(p * p) for p in jax.tree.leaves(w))
        return nll(model.apply({"params": w}, xb), yb) + 0.5 * wd * l2

    batches = (np.moveaxis(x, 2, -1).reshape(h, steps, b, 28, 28, 1), y.reshape(h, steps, b))
    for _ in range(2):
        for c in clients:
            c.set_model_state(server.get_dict_parameters())
            c.compute_model_update(steps)
        honest = [c.get_flat_parameters() for c in clients]
        server.update_model_with_weights(honest + byzantine.apply_attack(honest))

        local = federated.local_updates(loss_fn, params, batches, optimizer=optax.sgd(lr))
        upd, chain_state = chain.update(federated.pseudo_gradients(local.updates), chain_state,
                                        params)
        params = optax.apply_updates(params, upd)
        theirs = from_torch("byzfl_fc_mnist", server.get_dict_parameters(),
                            input_shape=(28, 28, 1))["params"]
        for a, t in zip(jax.tree.leaves(params), jax.tree.leaves(theirs)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(t), rtol=1e-4, atol=2e-5)
