"""Robust decentralized learning in the simulator (``algorithm = "decentralized"``)."""
import dataclasses

import jax
import numpy as np
import pytest

from nnmjax.experiments import table
from nnmjax.experiments.config import Config, load_config
from nnmjax.experiments.grid import run_grid
from nnmjax.experiments.plots import plot_all
from nnmjax.sim import build_experiment
from simcheck import assert_vmapped_runs_equal_one_by_one

TINY = ["steps=4", "eval_every=2", "seeds=[1]", "n=7", "f=2", "batch_size=5",
        "model='logreg'", "attacks=['alie']", "rules=['cwtm']", "algorithm='decentralized'"]


def _config(*extra):
    return load_config(None, TINY + list(extra))


@pytest.mark.parametrize("f, attack, rule", [(0, "none", "mean"), (0, "none", "krum")])
def test_a_complete_graph_is_the_centralized_run(f, attack, rule):
    """Complete graph, no Byzantine node: every node gathers every node's ``w - lr m_j``,
    so with the mean (or Krum, which picks the same row of ``m`` as of ``w - lr m``) all
    nodes stay at the D-SHB run's parameters, step for step. (With Byzantine nodes the
    attacks act on the parameters the nodes send, not on the momenta, so the runs differ.)"""
    dec = _config("topology='complete'", f"f={f}", f"attacks=['{attack}']", f"rules=['{rule}']")
    dshb = dataclasses.replace(dec, algorithm="dshb", topology="ring")
    a, b = build_experiment(dec, attack, rule, [2]), build_experiment(dshb, attack, rule, [2])
    sa, sb = a.init(), b.init()
    for _ in range(3):
        sa, (la, consensus) = a.run_chunk(sa, 1)
        sb, (lb, _) = b.run_chunk(sb, 1)
        for x, y in zip(jax.tree.leaves(sa.params), jax.tree.leaves(sb.params)):
            x, y = np.asarray(x)[0], np.asarray(y)[0]  # (nodes, ...) and (...)
            np.testing.assert_allclose(x, np.broadcast_to(y, x.shape), rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(np.asarray(la), np.asarray(lb), rtol=2e-5)
        assert float(consensus[0, 0]) < 1e-9
    acc = a.evaluate(sa)
    assert acc.shape == (1, 2) and abs(float(acc[0, 0]) - float(b.evaluate(sb)[0])) < 1e-6


def test_vmapped_seeds_equal_one_by_one():
    config = _config("topology='random_regular'", "degree=4", "topology_seed=3")
    assert_vmapped_runs_equal_one_by_one(config, "alie", "nnm+cwtm", [1, 2], 3,
                                         second_rtol=1e-3, second_atol=1e-9)


def test_a_ring_spreads_the_nodes_and_reports_mean_and_worst():
    config = _config("topology='ring'", "tolerated_f=1", "n=9")
    exp = build_experiment(config, "sign_flipping", "monna", [1])
    state, (loss, consensus) = exp.run_chunk(exp.init(), 4)
    assert np.all(np.isfinite(np.asarray(loss))) and float(consensus[0, -1]) > 0
    mean, worst = np.asarray(exp.evaluate(state))[0]
    assert 0 <= worst <= mean <= 1
    assert jax.tree.leaves(state.params)[0].shape[1] == config.honest


@pytest.mark.parametrize("items, key", [
    (dict(topology="ring"), "f"),                      # 3 rows per neighbourhood, f = 2
    (dict(topology="ring", tolerated_f=2), "tolerated_f"),
    (dict(topology="random_regular"), "topology"),
    (dict(topology="random_regular", degree=3, n=9), "degree"),  # n degree odd
    (dict(topology="star", tolerated_f=1), "topology"),
    (dict(topology="adjacency", tolerated_f=1,
          adjacency=tuple(map(tuple, np.kron(np.eye(2), 1 - np.eye(4)).astype(int)))), "adjacency"),
    (dict(topology="complete", attacks=("label_flipping",)), "attacks"),
    (dict(topology="complete", mesh=(("workers", 2),)), "mesh"),
])
def test_decentralized_config_errors_name_the_key(items, key):
    with pytest.raises(ValueError, match=f"config key '{key}'"):
        Config(algorithm="decentralized", **{"n": 8, "f": 2, **items})


def test_decentralized_keys_are_refused_by_the_other_algorithms_and_kept_out_of_their_identity():
    with pytest.raises(ValueError, match="config key 'topology': is a key of algorithm = "
                                         "'decentralized'"):
        Config(topology="torus")
    assert "topology" not in Config().runs()[0].record_key()
    key = Config(algorithm="decentralized", n=9, f=1, topology="torus").runs()[0].record_key()
    assert key["topology"] == "torus" and "adjacency" not in key


def test_grid_records_tables_and_plots(tmp_path):
    config = _config("topology='complete'", "baseline=true", "rules=['cwtm', 'nnm+cwtm']")
    records = run_grid([config], tmp_path, progress=False)
    attacked = [r for r in records if r["key"]["f"] > 0]
    base = [r for r in records if r["key"]["f"] == 0]
    assert len(attacked) == 2 and len(base) == 1 and base[0]["key"]["n"] == config.n
    for r in records:
        c = r["curves"]
        assert set(c) == {"loss", "consensus_distance", "eval_steps", "test_acc",
                          "test_acc_worst"}
        assert all(w <= m + 1e-6 for w, m in zip(c["test_acc_worst"], c["test_acc"]))
        assert r["summary"]["max_test_acc"] == max(c["test_acc"])
    [t] = table.accuracy_tables(records)
    assert t.baseline is not None
    assert "all 7 nodes honest" in table.format_markdown(records)
    names = [p.name for p in plot_all(records, tmp_path / "plots")]
    assert "consensus-cwtm.pdf" in names and "accuracy-cwtm.png" in names
    from nnmjax.experiments.reproduce import check_grid

    checks = check_grid([config], tmp_path, attack="alie", rule="nnm+cwtm", steps=2)
    assert len(checks) == 1 and checks[0].equal
