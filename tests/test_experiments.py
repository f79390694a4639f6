"""Paper experiment configs, sweeps, multi-setting grids, Table 2 layout and heat-maps."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from fakedata import write_fake_cifar, write_fake_mnist

from nnmjax.experiments import table
from nnmjax.cli import main
from nnmjax.experiments.config import load_config, load_grid
from nnmjax.experiments.grid import grid_runs, run_grid
from nnmjax.experiments.plots import plot_all

PAPER = Path(__file__).resolve().parents[1] / "experiments" / "paper"
CONFIGS = sorted(PAPER.glob("*.toml"))
BYZFL = PAPER.parent / "byzfl"
FEDERATED, DECENTRALIZED = PAPER.parent / "federated", PAPER.parent / "decentralized"
ADAPTIVE = PAPER.parent / "adaptive"
SMOKE_CONFIGS = (CONFIGS + sorted(BYZFL.glob("*.toml")) + sorted(FEDERATED.glob("*.toml"))
                 + sorted(DECENTRALIZED.glob("*.toml")) + sorted(ADAPTIVE.glob("*.toml")))
#: Models whose compilation alone takes tens of seconds here, trained through the simulator
#: on the same data format in test_simulate.test_cnn_trains_with_batch_norm: their configs'
#: smoke runs swap in a cheap model (everything else of the config is kept).
SMOKE_MODELS = {"cifar_cnn": "logreg"}
TINY = ["steps=4", "eval_every=2", "seeds=[1]", "n=7", "f=2", "batch_size=5",
        "model='logreg'", "dataset='digits'"]


def _toml(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


# --------------------------------------------------------------------------- sweeps

def test_sweep_product_and_union_of_tables(tmp_path):
    p = _toml(tmp_path, 'steps = 5\n[[sweep]]\nf = 4\nalpha = [0.1, 1.0]\n'
                        '[[sweep]]\nf = [6, 8]\nalpha = 10.0\n')
    grid = load_grid(p)
    assert [(c.f, c.alpha) for c in grid] == [(4, 0.1), (4, 1.0), (6, 10.0), (8, 10.0)]
    assert all(c.steps == 5 for c in grid)


def test_sweep_single_table_and_list_valued_keys(tmp_path):
    p = _toml(tmp_path, '[sweep]\nalpha = [1.0, 10.0]\nrules = ["cwtm", "nnm+cwtm"]\n')
    grid = load_grid(p)
    assert [c.alpha for c in grid] == [1.0, 10.0]
    assert all(c.rules == ("cwtm", "nnm+cwtm") for c in grid)  # a list key is one value


def test_set_override_takes_key_out_of_sweep_and_dedupes(tmp_path):
    p = _toml(tmp_path, '[[sweep]]\nf = [4, 6]\nalpha = [0.1, 1.0]\n')
    grid = load_grid(p, ["alpha=1.0"])
    assert [(c.f, c.alpha) for c in grid] == [(4, 1.0), (6, 1.0)]
    assert [(c.f, c.alpha) for c in load_grid(p, ["f=4", "alpha=1.0"])] == [(4, 1.0)]
    assert [c.f for c in load_grid(p, ["sweep=[{f = 6}]"])] == [6]


def test_sweep_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown key 'beta'"):
        load_grid(_toml(tmp_path, '[sweep]\nbeta = [0.9]\n'))
    with pytest.raises(ValueError, match="'f'"):
        load_grid(_toml(tmp_path, '[sweep]\nf = [4, 9]\n'))  # 2f >= n at one point
    with pytest.raises(ValueError, match="sweeps 2 settings"):
        load_config(_toml(tmp_path, '[sweep]\nf = [4, 6]\n'))


# --------------------------------------------------------------------------- paper configs

def test_every_paper_config_matches_the_paper():
    assert {p.stem for p in CONFIGS} >= {"table2_mnist", "mnist_dshb", "mnist_dgd",
                                         "mnist_extra_rules", "fashion_mnist",
                                         "fashion_mnist_table2", "cifar10"}
    for path in CONFIGS:
        grid = load_grid(path)
        for c in grid:
            assert c.n == 17 and c.seeds == (1, 2, 3, 4, 5) and c.baseline
            assert set(c.attacks) == {"optimal_alie", "optimal_foe", "label_flipping",
                                      "sign_flipping", "mimic"}
            assert len(c.rules) in (9, 12) and c.partition == "dirichlet"
            if c.dataset == "cifar10":  # Table 3, CIFAR-10 column
                assert (c.model, c.steps, c.batch_size, c.lr, c.lr_schedule, c.clip,
                        c.weight_decay) == ("cifar_cnn", 2000, 50, 0.25, "paper_cifar", 5.0, 1e-2)
            else:  # Table 3, MNIST & Fashion-MNIST column
                assert (c.model, c.steps, c.batch_size, c.lr, c.lr_schedule, c.clip,
                        c.weight_decay) == ("paper_cnn", 800, 25, 0.75, "paper_mnist", 2.0, 1e-4)
    t2 = load_grid(PAPER / "table2_mnist.toml")
    assert len(t2) == 1 and (t2[0].f, t2[0].alpha) == (4, 0.1)
    assert len(grid_runs(t2)) == 12 * 5 * 5 + 5
    fig = {(c.f, c.alpha) for c in load_grid(PAPER / "mnist_dshb.toml")}
    assert fig == {(4, 0.1), (4, 1.0), (4, 10.0), (6, 1.0), (6, 10.0), (8, 10.0)}
    cifar = {(c.f, c.alpha, c.momentum) for c in load_grid(PAPER / "cifar10.toml")}
    assert cifar == {(2, 1.0, 0.9), (2, 10.0, 0.9), (3, 1.0, 0.9), (3, 10.0, 0.9), (4, 10.0, 0.99)}


def _smoke_overrides(path, data_dir):
    first = load_grid(path)[0]
    rule = next(r for r in first.rules if "nnm" in r.split("+"))
    sets = ["steps=2", "eval_every=1", "seeds=[1]", f"attacks=['{first.attacks[0]}']",
            f"rules=['{rule}']", "baseline=false", f"n={first.n}", f"f={first.f}",
            f"alpha={first.alpha}", f"gamma={first.gamma}", f"momentum={first.momentum}"]
    if first.algorithm == "fedavg":
        sets += [f"local_steps={first.local_steps}", f"participation={first.participation}"]
    if first.algorithm == "decentralized":  # a sweep's degree cannot be unset: its graph
        g = next((c for c in load_grid(path) if c.degree is not None), first)
        sets += [f"topology='{g.topology}'", f"topology_seed={g.topology_seed}"]
        sets += [f"degree={g.degree}"] if g.degree is not None else []
    if first.model in SMOKE_MODELS:
        sets.append(f"model='{SMOKE_MODELS[first.model]}'")
    return sets + [f"data_dir='{data_dir}'"]


def test_byzfl_default_benchmark_config_is_byzfls():
    """experiments/byzfl/default_benchmark.toml is ByzFL's default benchmark (checked against
    ``byzfl.benchmark.benchmark.default_config`` when ByzFL is installed)."""
    grid = load_grid(BYZFL / "default_benchmark.toml")
    assert [(c.n - c.f, c.f, c.gamma) for c in grid] == [
        (10, f, g) for f in (1, 2, 3, 4) for g in (1.0, 0.66, 0.33, 0.0)]
    c = grid[0]
    assert (c.dataset, c.model, c.algorithm, c.partition, c.data_seed, c.seeds) == (
        "mnist", "byzfl_cnn_mnist", "dshb", "gamma_similarity", 0, (0, 1, 2))
    assert (c.lr, c.lr_schedule, c.momentum, c.weight_decay, c.batch_size, c.steps,
            c.eval_every, c.clip) == (0.1, "constant", 0.9, 1e-4, 25, 800, 50, None)
    gm = c.build_rule("clipping+nnm+gm")
    assert gm.options == {"nu": 0.1, "max_iter": 3, "tol": 0.0, "init": "zero"}
    assert c.build_rule("clipping+nnm+cwtm").options == {}
    assert c.attacks == ("sign_flipping", "optimal_foe", "optimal_alie")
    try:
        from byzfl.benchmark.benchmark import default_config as ref
    except ImportError:
        return
    bc, model, honest = ref["benchmark_config"], ref["model"], ref["honest_clients"]
    dist = bc["data_distribution"][0]
    assert bc["nb_honest_clients"] == 10 and bc["f"] == [1, 2, 3, 4]
    assert dist["name"] == "gamma_similarity_niid"
    assert dist["distribution_parameter"] == [1.0, 0.66, 0.33, 0.0]
    assert (bc["nb_steps"], bc["nb_training_seeds"], bc["data_distribution_seed"]) == (800, 3, 0)
    assert (model["name"], model["dataset_name"], model["learning_rate"],
            model["learning_rate_decay"]) == ("cnn_mnist", "mnist", 0.1, 1.0)
    assert (honest["momentum"], honest["weight_decay"], honest["batch_size"]) == (0.9, 1e-4, 25)
    assert ref["evaluation_and_results"]["evaluation_delta"] == 50
    assert [a["name"] for a in ref["aggregator"]] == ["GeometricMedian", "TrMean"]
    assert ref["aggregator"][0]["parameters"] == {"nu": 0.1, "T": 3}
    assert [a["name"] for a in ref["pre_aggregators"]] == ["Clipping", "NNM"]
    assert [a["name"] for a in ref["attack"]] == [
        "SignFlipping", "Optimal_InnerProductManipulation", "Optimal_ALittleIsEnough"]


@pytest.mark.slow
@pytest.mark.parametrize("path", SMOKE_CONFIGS, ids=[p.stem for p in SMOKE_CONFIGS])
def test_paper_config_smoke_run(path, tmp_path, capsys):
    """Each committed config (the paper's and ByzFL's) runs through ``nnmjax run`` (its
    model unless in SMOKE_MODELS, algorithm, attack search and data format) with --set
    steps=2 on one (setting, attack, rule, seed)."""
    cfg = load_grid(path)[0]
    data_dir = tmp_path / "data"  # small fake data in the dataset's real format
    if cfg.dataset == "cifar10":
        write_fake_cifar(data_dir, per_batch=68, n_test=20)
    else:
        write_fake_mnist(data_dir, n_train=340, n_test=20)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--no-plots",
                 *[a for s in _smoke_overrides(path, data_dir) for a in ("--set", s)]]) == 0
    rec = out / "runs"
    assert len(list(rec.glob("*.json"))) == 1
    assert "worst case" in capsys.readouterr().out


# --------------------------------------------------------------------------- grids

def test_grid_of_settings_shares_the_baseline_and_reports_per_setting(tmp_path):
    configs = load_grid(None, TINY + ["attacks=['sign_flipping']", "rules=['cwtm', 'nnm+cwtm']",
                                      "baseline=true", "sweep=[{alpha = [0.5, 5.0]}]"])
    assert [c.alpha for c in configs] == [0.5, 5.0]
    runs = grid_runs(configs)
    assert len(runs) == 2 * 2 + 2  # two baselines: the baseline keeps alpha
    records = run_grid(configs, tmp_path, progress=False)
    assert len(records) == len(runs)
    tables = table.accuracy_tables(records)
    assert [t.setting["alpha"] for t in tables] == [0.5, 5.0]
    assert all(t.baseline is not None and t.blocks == [("cwtm", ["cwtm", "nnm+cwtm"])]
               for t in tables)
    assert run_grid(configs, tmp_path, progress=False, shard=(1, 3))  # nothing left to do
    paths = plot_all(records, tmp_path / "plots")
    names = {p.name for p in paths}
    assert "worst_case.png" in names and "accuracy-alpha0.5-cwtm.png" in names


# --------------------------------------------------------------------------- tables

def _record(rule, attack, seed, acc, f=4, alpha=0.1, n=17):
    key = {"dataset": "mnist", "model": "paper_cnn", "algorithm": "dshb", "n": n, "f": f,
           "partition": "dirichlet", "alpha": alpha, "momentum": 0.9, "steps": 800,
           "attack": attack, "rule": rule, "seed": seed}
    steps = [400, 800]
    return {"key": key, "summary": {"max_test_acc": acc},
            "curves": {"test_acc": [acc / 2, acc], "eval_steps": steps,
                       "kappa_hat": [1.0, 0.5], "loss": [2.0, 1.0]}}


def _records():
    recs = []
    accs = {"krum": 0.1, "bucketing+krum": 0.4, "nnm+krum": 0.8,
            "cwtm": 0.3, "bucketing+cwtm": 0.5, "nnm+cwtm": 0.7, "gm": 0.6}
    for (f, alpha) in [(4, 0.1), (6, 1.0)]:
        for rule, a in accs.items():
            for attack, shift in [("optimal_alie", 0.0), ("mimic", 0.2), ("sign_flipping", 0.1)]:
                for seed in (1, 2):
                    recs.append(_record(rule, attack, seed, a + shift + 0.01 * seed, f, alpha))
        for seed in (1, 2):
            recs.append(_record("mean", "none", seed, 0.95, f=0, alpha=alpha, n=17 - f))
    return recs


def test_table2_layout_blocks_bold_worst_and_baseline(tmp_path):
    recs = _records()
    t = table.accuracy_tables(recs)
    assert len(t) == 2
    first = t[0]
    assert [b for b, _ in first.blocks] == ["krum", "gm", "cwtm"]  # the paper's block order
    assert first.blocks[0][1] == ["krum", "bucketing+krum", "nnm+krum"]
    assert first.attacks == ["optimal_alie", "sign_flipping", "mimic"]  # paper's column order
    m, s, k = first.cells[("nnm+krum", "worst")]
    assert (m, k) == (pytest.approx(0.815), 2) and s == pytest.approx(0.005)
    assert first.baseline[0] == pytest.approx(0.95)
    md = table.format_markdown(recs)
    assert md.count("worst case") == 2 and "f=6, partition=dirichlet, alpha=1.0" in md
    assert "| nnm+krum | **81.50 ± 0.50** |" in md  # best of its block under ALIE
    assert "| gm | 61.50 ± 0.50 |" in md  # a one-rule block has no bold
    assert "Fault-free baseline (mean, 13 honest workers): 95.00" in md
    table.write_csv(recs, tmp_path / "t.csv")
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert len(rows) == 2 * (7 * 4 + 1)
    worst = [r for r in rows if r["rule"] == "krum" and r["attack"] == "worst" and r["f"] == "4"]
    assert worst[0]["max_test_acc_mean_pct"] == "11.50" and worst[0]["max_test_acc_std_pct"] == "0.50"
    assert worst[0]["seeds"] == "2"


def test_worst_case_grid_and_heatmap(tmp_path):
    recs = _records()
    rules, rows, cols, grid = table.worst_case_grid(recs)
    assert rows == [4, 6] and cols == [0.1, 1.0]
    assert rules[:3] == ["krum", "bucketing+krum", "nnm+krum"]
    assert grid["nnm+krum"][0, 0] == pytest.approx(0.815) and np.isnan(grid["nnm+krum"][0, 1])
    paths = plot_all(recs, tmp_path)
    assert (tmp_path / "worst_case.png") in paths and (tmp_path / "accuracy-f4_alpha0.1-krum.png") in paths
    mixed = recs + [_record("cwtm", "mimic", 1, 0.5, f=4, alpha=0.1)]
    mixed[-1]["key"]["dataset"] = "cifar10"
    with pytest.raises(ValueError, match="differ"):
        table.worst_case_grid(mixed)


def test_claims_script_verdicts():
    import importlib.util

    spec = importlib.util.spec_from_file_location("claims", PAPER.parent / "claims.py")
    claims = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(claims)
    text = claims.claims(_records())
    assert ("- **krum**: best worst case here `nnm+krum` (NNM), 81.50 ± 0.50% against "
            "`bucketing+krum` 41.50 ± 0.50%: 40.00 points ahead; paper: `nnm+krum`.") in text
    assert "- **gm**: best worst case here `gm` (not NNM); paper: `nnm+gm`." in text
    assert "Bucketing's worst case across rules (complete rows only): 41.50-51.50%" in text
    # attack by attack, against the paper's full Table 2 (a one-rule block has no winner)
    assert "| krum | NNM 81.50 / NNM 78.30 | NNM 91.50 / NNM 82.44 | NNM 101.50 / NNM 97.69 |" in text
    assert "| gm | — | — | — |" in text
    assert "krum: NNM best under 3 of 3; cwtm: NNM best under 3 of 3 (paper:" in text
    assert claims.PAPER_WORST["nnm+gm"] == 75.27 and claims.PAPER_WORST["cwtm"] == 27.45
    partial = [r for r in _records() if not (r["key"]["rule"] == "cwtm" and r["key"]["seed"] == 2)]
    assert "- **cwtm**: incomplete" in claims.claims(partial)
    # one bad seed of NNM + Krum: still ahead on average, but not by a standard deviation
    noisy = [r for r in _records() if not (r["key"]["rule"] == "nnm+krum" and r["key"]["seed"] == 2)]
    noisy += [_record("nnm+krum", a, 2, 0.15, 4, 0.1) for a in ("optimal_alie", "mimic", "sign_flipping")]
    assert ("`nnm+krum` (NNM), 48.00 ± 33.00% against `bucketing+krum` 41.50 ± 0.50%: 6.50 points "
            "ahead, within one standard deviation (not a clear win)") in claims.claims(noisy)
    # Bucketing + CWTM and Bucketing + CWMed runs of the same key: counted when bit-identical
    assert "one function" not in text and claims.twins(_records()) == (0, 0)
    twins = [_record("bucketing+cwmed", a, seed, 0.5 + shift + 0.01 * seed)
             for a, shift in [("optimal_alie", 0.0), ("mimic", 0.2)] for seed in (1, 2)]
    twins[-1]["curves"]["loss"] = [2.0, 1.0 + 1e-7]
    assert claims.twins(_records() + twins) == (3, 4)
    other = [_record(r, "mimic", 1, 0.7, f=6) for r in ("bucketing+cwtm", "bucketing+cwmed")]
    assert claims.twins(other) == (0, 0)  # n = 17, f = 6: Bucketing leaves 17 rows
    assert "their runs agree bit for bit in 3 of 4 (attack, seed) pairs" in claims.claims(
        _records() + twins)


def test_mesh_key_is_validated_and_not_part_of_a_runs_identity():
    a = load_config(None, ["mesh={runs = 2}"])
    assert a.mesh == (("runs", 2),)
    assert a.runs()[0].hash() == load_config(None, []).runs()[0].hash()
    b = load_config(None, ["mesh={workers = 4, runs = 2}"])
    assert b.mesh == (("runs", 2), ("workers", 4)) and b.runs()[0].hash() == a.runs()[0].hash()
    with pytest.raises(ValueError, match="unknown axis 'data'"):
        load_config(None, ["mesh={data = 2}"])
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        load_config(None, ["mesh={workers = 0}"])
    with pytest.raises(ValueError, match="mesh"):
        load_config(None, ["mesh=2"])


def test_byzfl_fedavg_config_keeps_to_what_both_libraries_mean_alike():
    """experiments/byzfl/fedavg.toml uses only what tests/test_fedavg_sim.py checks round for
    round against ByzFL's FedAvg: ALIE, NNM + TrMean, local SGD without momentum, the
    aggregate applied with server_lr 1, no clipping, a constant step size."""
    grid = load_grid(BYZFL / "fedavg.toml")
    assert [(c.n - c.f, c.f) for c in grid[::4]] == [(10, 1), (10, 2), (10, 3), (10, 4)]
    for c in grid:
        assert (c.algorithm, c.attacks, c.rules) == ("fedavg", ("alie",), ("nnm+cwtm",))
        assert (c.local_momentum, c.server_lr, c.clip, c.lr_schedule) == (0.0, 1.0, None,
                                                                          "constant")
        assert c.round_sizes == (c.n - c.f, c.f)
