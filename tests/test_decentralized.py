"""Robust decentralized learning (nnmjax.optim.decentralized): graphs and robust gossip."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnmjax
from nnmjax.optim import decentralized as dec
from nnmjax.robust import attacks

KEY = jax.random.key(0)


@pytest.mark.parametrize("topo, n, k", [(dec.ring(7), 7, 2), (dec.torus(3, 5), 15, 4),
                                        (dec.complete(6), 6, 5),
                                        (dec.random_regular(12, 3, seed=1), 12, 3),
                                        (dec.make_topology("torus", 16), 16, 4)])
def test_topologies_are_regular_symmetric_and_connected(topo, n, k):
    a = topo.adjacency()
    assert topo.n == n and topo.degree == k
    assert (a == a.T).all() and not a.diagonal().any() and (a.sum(1) == k).all()
    assert dec.from_adjacency(a).neighbours.tolist() == topo.neighbours.tolist()
    assert (topo.neighbourhoods()[:, 0] == np.arange(n)).all()


def test_random_regular_is_seeded():
    a, b = dec.random_regular(14, 4, seed=3), dec.random_regular(14, 4, seed=3)
    assert a.neighbours.tolist() == b.neighbours.tolist()
    assert a.neighbours.tolist() != dec.random_regular(14, 4, seed=4).neighbours.tolist()


@pytest.mark.parametrize("adjacency, match", [
    (np.ones((3, 2)), "square"),
    ([[0, 2], [2, 0]], "0/1"),
    ([[0, 1, 0], [0, 0, 1], [1, 0, 0]], "symmetric"),
    ([[1, 1], [1, 0]], "self-loops"),
    ([[0, 1, 1], [1, 0, 0], [1, 0, 0]], "same degree"),
    ([[0, 0], [0, 0]], "no neighbours"),
    (np.kron(np.eye(2), 1 - np.eye(3)), "disconnected"),
])
def test_bad_graphs_are_clear_errors(adjacency, match):
    with pytest.raises(ValueError, match=match):
        dec.from_adjacency(adjacency)


@pytest.mark.parametrize("call, match", [
    (lambda: dec.make_topology("star", 5), "unknown 'star'"),
    (lambda: dec.make_topology("ring", 5, degree=2), "degree is for 'random_regular'"),
    (lambda: dec.make_topology("random_regular", 5), "degree is for 'random_regular'"),
    (lambda: dec.make_topology("adjacency", 5), "adjacency is for 'adjacency'"),
    (lambda: dec.make_topology("torus", 7), "no such factorisation"),
    (lambda: dec.random_regular(5, 3, seed=0), "even"),
    (lambda: dec.ring(2), "n >= 3"),
    (lambda: dec.torus(2, 5), ">= 3"),
    (lambda: dec.make_topology("adjacency", 4, adjacency=1 - np.eye(3)), "3 nodes"),
    (lambda: dec.check_neighbourhood_f(dec.torus(3, 3), 3), "at most f=2"),
])
def test_bad_topology_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _reference(x, topo, aggregate, byzantine, attack, **options):
    """Each honest node by hand: its honest members (itself first), the attack told its
    number of Byzantine neighbours, the rule."""
    h = topo.n - byzantine
    out, jitted = [], {}
    for i, members in enumerate(topo.neighbourhoods()[:h]):
        good = [j for j in members if j < h]
        rows = x[np.array(good)]
        b = len(members) - len(good)
        if b:
            if b not in jitted:  # one compile per count, not one eager search per node
                jitted[b] = jax.jit(lambda r, b=b: attacks.ATTACKS[attack](r, b, **options))
            byz = jitted[b](jnp.asarray(rows))
            rows = np.concatenate([rows, np.asarray(byz)])
        out.append(np.asarray(aggregate(jnp.asarray(rows))))
    return np.stack(out)


@pytest.mark.parametrize("rule_name, attack", [
    ("cwtm", "alie"), ("monna", "sign_flipping"), ("krum", "alie"),
    ("nnm+cwtm", "sign_flipping"), ("nnm+cwtm", "optimal_alie")])
def test_gossip_matches_a_node_by_node_reference(rule_name, attack):
    """On a graph whose nodes have 0, 1 and 2 Byzantine neighbours (three vmapped groups),
    the attack told each node's count and the rule its own f = 1."""
    topo = dec.random_regular(9, 4, seed=2)
    byzantine = 2
    x = np.asarray(jax.random.normal(KEY, (topo.n - byzantine, 6)) * 2 + 1, np.float32)
    rule = nnmjax.rule(rule_name, 1)
    options = {"rule": rule} if attack == "optimal_alie" else {}
    gossip = jax.jit(lambda x: dec.robust_gossip(x, topo, rule, byzantine=byzantine,
                                                 attack=attack))
    got = gossip(jnp.asarray(x))
    want = _reference(x, topo, rule, byzantine, attack, **options)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    groups = {len(m) - sum(j < topo.n - byzantine for j in m)
              for m in topo.neighbourhoods()[: topo.n - byzantine]}
    assert groups == {0, 1, 2}


def test_gossip_of_a_pytree_under_jit_and_randomized_rules():
    topo = dec.torus(3, 3)
    x = {"w": jax.random.normal(KEY, (7, 2, 3)), "b": jnp.ones((7, 4))}
    rule = nnmjax.rule("bucketing+cwtm", 1)
    run = jax.jit(lambda x, key: dec.robust_gossip(x, topo, rule, byzantine=2, attack="alie",
                                                   key=key))
    a, b = run(x, jax.random.key(1)), run(x, jax.random.key(1))
    assert a["w"].shape == (7, 2, 3) and a["b"].shape == (7, 4)
    np.testing.assert_array_equal(np.asarray(a["w"]), np.asarray(b["w"]))
    np.testing.assert_allclose(np.asarray(a["b"]), 1.0)


def test_complete_graph_with_the_mean_is_the_centralized_step():
    """Complete graph, mean, no Byzantine nodes: every node ends at the nodes' mean, which
    is a centralized D-GD step from a common start."""
    topo = dec.complete(5)
    w, lr = jnp.array([1.0, -2.0]), 0.1
    grads = jax.random.normal(KEY, (5, 2))
    half = w - lr * grads
    out = dec.robust_gossip(half, topo, nnmjax.rule("mean", 0), byzantine=0)
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(w - lr * grads.mean(0), (5, 2)),
                               rtol=1e-6)
    assert float(dec.consensus_distance(out)) < 1e-12


def test_decentralized_sgd_converges_under_attack_in_a_users_loop():
    """Local gradient steps on heterogeneous quadratics, then robust gossip on a torus with
    ALIE from 2 of 9 nodes: the honest nodes agree and approach the honest optimum."""
    topo, byzantine = dec.torus(3, 3), 2
    h = topo.n - byzantine
    targets = jax.random.normal(KEY, (h, 4))
    rule = nnmjax.rule("nnm+cwtm", 1)

    @jax.jit
    def step(x):
        half = x - 0.2 * (x - targets)  # each node's gradient of ||x - target_i||^2 / 2
        return dec.robust_gossip(half, topo, rule, byzantine=byzantine, attack="alie")

    x = jnp.zeros((h, 4))
    for _ in range(60):
        x = step(x)
    spread = float(dec.consensus_distance(targets))
    assert float(dec.consensus_distance(x)) < 0.05 * spread  # a constant step's residual
    assert float(jnp.linalg.norm(x.mean(0) - targets.mean(0))) ** 2 < 0.25 * spread


@pytest.mark.parametrize("kwargs, match", [
    (dict(byzantine=1, attack="none"), "'none' with Byzantine"),
    (dict(byzantine=1, attack="mimic"), "mimic"),
    (dict(byzantine=2, attack="alie"), "needs the 4 honest"),
])
def test_gossip_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dec.robust_gossip(jnp.ones((5, 2)), dec.ring(6), nnmjax.rule("cwtm", 1), **kwargs)
