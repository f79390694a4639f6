"""The optax transforms, the simulator, configs, records and the `nnmjax run` job."""
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnmjax
from nnmjax.experiments import results
from nnmjax.optim import transforms as T
from nnmjax.experiments.config import Config, load_config, parse_set
from nnmjax.experiments.grid import run_grid
from nnmjax.sim import build_experiment
from retrace import assert_compiles_once
from simcheck import assert_vmapped_runs_equal_one_by_one

TINY = ["steps=6", "eval_every=3", "seeds=[1]", "n=7", "f=2", "batch_size=5", "model='logreg'"]


def _loss(params, x, y):
    logp = jax.nn.log_softmax(x @ params["w"] + params["b"])
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def test_chain_equals_hand_written_algorithm_3():
    h, f, beta, lr = 5, 2, 0.9, 0.3
    key = jax.random.key(0)
    xs = jax.random.normal(key, (4, h, 6, 3))
    ys = jax.random.randint(jax.random.key(1), (4, h, 6), 0, 2)
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    rule = nnmjax.rule("nnm+cwtm", f)
    server = optax.chain(T.clip_by_worker_norm(1.0), T.worker_momentum(beta, h),
                         T.inject_attack("sign_flipping", f), T.robust_aggregate(rule), optax.sgd(lr))
    state = server.init(params)
    p_ref = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m_ref = np.zeros((h, 8))
    p = params
    for t in range(4):
        grads = jax.vmap(jax.grad(_loss), in_axes=(None, 0, 0))(p, xs[t], ys[t])
        upd, state = server.update(grads, state, p)
        p = optax.apply_updates(p, upd)
        # reference: Algorithm 3 by hand on flattened vectors
        g = np.stack([np.concatenate([np.ravel(jax.grad(_loss)(
            {k: jnp.asarray(v, jnp.float32) for k, v in p_ref.items()}, xs[t, i], ys[t, i])[k])
            for k in ("b", "w")]) for i in range(h)])
        g = g * np.minimum(1.0, 1.0 / np.linalg.norm(g, axis=1, keepdims=True))
        m_ref = beta * m_ref + (1 - beta) * g
        byz = np.repeat(-m_ref.mean(0, keepdims=True), f, axis=0)
        R = np.asarray(rule(jnp.asarray(np.concatenate([m_ref, byz]), jnp.float32)))
        p_ref = {"b": p_ref["b"] - lr * R[:2], "w": p_ref["w"] - lr * R[2:].reshape(3, 2)}
        np.testing.assert_allclose(np.asarray(p["w"]), p_ref["w"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(p["b"]), p_ref["b"], rtol=1e-4, atol=1e-6)


def test_transform_errors():
    with pytest.raises(ValueError, match="max_norm"):
        T.clip_by_worker_norm(0.0)
    with pytest.raises(ValueError, match="beta"):
        T.worker_momentum(1.0, 3)
    with pytest.raises(ValueError, match="unknown attack"):
        T.inject_attack("nope", 2)
    with pytest.raises(ValueError, match="rule="):
        T.inject_attack("optimal_alie", 2)


def test_transform_keys_are_required_where_they_are_drawn_from():
    with pytest.raises(ValueError, match="randomized: pass key="):
        T.inject_attack("gaussian", 2)
    with pytest.raises(ValueError, match="randomized: pass key="):
        T.robust_aggregate(nnmjax.rule("bucketing+cwtm", 1))
    T.inject_attack("alie", 2)  # deterministic: no key needed
    T.robust_aggregate(nnmjax.rule("cwtm", 1))


_TRANSFORMS = {
    "clip_by_worker_norm": lambda: T.clip_by_worker_norm(1.0),
    "worker_momentum": lambda: T.worker_momentum(0.9, 6),
    "inject_attack": lambda: T.inject_attack("optimal_alie", 2, rule=nnmjax.rule("nnm+cwtm", 2)),
    "robust_aggregate": lambda: T.robust_aggregate(nnmjax.rule("bucketing+cwtm", 2),
                                                   key=jax.random.key(1)),
}


@pytest.mark.parametrize("name", sorted(_TRANSFORMS))
def test_transforms_compile_once_per_shape(name):
    tx = _TRANSFORMS[name]()
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    state = tx.init(params)

    def grads(seed):
        return jax.tree.map(lambda p: jax.random.normal(jax.random.key(seed), (6,) + p.shape),
                            params)

    outs = assert_compiles_once(lambda g, s: tx.update(g, s, params),
                                [(grads(seed), state) for seed in range(3)])
    assert not np.allclose(outs[0][0]["b"], outs[1][0]["b"])


@pytest.fixture(scope="module")
def tiny_config():
    return load_config(None, TINY + ["attacks=['alie']", "rules=['nnm+cwtm']", "baseline=false"])


def test_the_simulators_chunk_compiles_once(tiny_config):
    """The step is a pure function: vmapped over runs in a chunk it traces once, and an
    Experiment compiles its chunk once for every chunk of one length."""
    import functools

    from nnmjax.sim.step import run_steps
    from nnmjax.sim.worker_data import RUN_AXES

    exp = build_experiment(tiny_config, "alie", "bucketing+cwtm", [1, 2])
    state = exp.init()
    later, _ = exp.run_chunk(state, 2)
    later, _ = exp.run_chunk(later, 2)
    assert exp._run_chunk._cache_size() == 1
    def chunk(state, data, hyper, steps):
        return jax.vmap(functools.partial(run_steps, exp.spec), in_axes=(0, RUN_AXES, 0, None))(
            state, data, hyper, steps)

    (_, (a, _)), (_, (b, _)) = assert_compiles_once(
        chunk, [(state, exp.data, exp.hyper, 2), (later, exp.data, exp.hyper, 2)],
        static_argnums=(3,))
    assert not np.allclose(a, b)


def test_vmapped_seeds_equal_one_by_one_and_repeatable(tiny_config):
    loss, _ = assert_vmapped_runs_equal_one_by_one(tiny_config, "optimal_alie", "nnm+cwtm",
                                                   [1, 2], 4)
    again = build_experiment(tiny_config, "optimal_alie", "nnm+cwtm", [1, 2])
    _, (loss2, _) = again.run_chunk(again.init(), 4)
    np.testing.assert_array_equal(np.asarray(loss), np.asarray(loss2))


def test_runs_differing_in_shape_free_settings_share_one_program(tiny_config):
    """alpha, lr, momentum, weight_decay and clip vmapped as per-run values: each run equals
    its own one-setting program (where the values are compile-time constants)."""
    import dataclasses

    settings = [dataclasses.replace(tiny_config, alpha=0.1, lr=0.5, momentum=0.9),
                dataclasses.replace(tiny_config, alpha=10.0, lr=0.2, momentum=0.5, clip=1.0,
                                    weight_decay=1e-2),
                dataclasses.replace(tiny_config, alpha=1.0, gamma=0.3, lr=0.5, momentum=0.0)]
    seeds = [1, 2, 1]
    both = build_experiment(tiny_config, "sign_flipping", "nnm+cwtm", seeds, settings=settings)
    assert sorted(both.hyper) == ["clip", "lr", "momentum", "weight_decay"]
    s, (loss, kappa) = both.run_chunk(both.init(), 4)
    acc = np.asarray(both.evaluate(s))
    for i, (cfg, seed) in enumerate(zip(settings, seeds)):
        one = build_experiment(cfg, "sign_flipping", "nnm+cwtm", [seed])
        assert one.hyper == {}
        s1, (l1, k1) = one.run_chunk(one.init(), 4)
        np.testing.assert_allclose(np.asarray(loss[i]), np.asarray(l1[0]), rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(kappa[i]), np.asarray(k1[0]), rtol=2e-4, atol=1e-5)
        np.testing.assert_allclose(acc[i], np.asarray(one.evaluate(s1))[0], atol=1e-6)


def test_data_seed_fixes_the_partition_across_seeds(tiny_config):
    """``data_seed`` draws the partition; the runs' seeds then differ in initialisation and
    sampling only. Runs differing in it share one program."""
    import dataclasses

    same = build_experiment(dataclasses.replace(tiny_config, data_seed=7), "alie", "cwtm", [1, 2])
    own = build_experiment(tiny_config, "alie", "cwtm", [1, 2])
    data = jax.tree.map(np.asarray, (same.data.index, own.data.index))  # each run's rows
    for a in jax.tree.leaves(data[0]):
        np.testing.assert_array_equal(a[0], a[1])  # one partition for both seeds
    assert not all(np.array_equal(b[0], b[1]) for b in jax.tree.leaves(data[1]))  # each its own
    settings = [dataclasses.replace(tiny_config, data_seed=d) for d in (7, 8)]
    mixed = build_experiment(tiny_config, "alie", "cwtm", [1, 1], settings=settings)
    first = jax.tree.leaves(jax.tree.map(np.asarray, mixed.data.index))
    np.testing.assert_array_equal(first[0][0], jax.tree.leaves(data[0])[0][0])
    with pytest.raises(ValueError, match="data_seed"):
        load_config(None, ["data_seed=1.5"])


def test_settings_that_change_shapes_are_refused(tiny_config):
    import dataclasses

    with pytest.raises(ValueError, match=r"differ only in .* one differs in \['n'\]"):
        build_experiment(tiny_config, "alie", "cwtm", [1, 1],
                         settings=[tiny_config, dataclasses.replace(tiny_config, n=9)])
    with pytest.raises(ValueError, match=r"one differs in \['clip'\]"):
        build_experiment(tiny_config, "alie", "cwtm", [1, 1],
                         settings=[tiny_config, dataclasses.replace(tiny_config, clip=None)])
    with pytest.raises(ValueError, match="one config per seed"):
        build_experiment(tiny_config, "alie", "cwtm", [1, 2], settings=[tiny_config])


def test_run_chunk_on_a_mesh_before_init_is_a_clear_error(tiny_config):
    import dataclasses

    exp = build_experiment(dataclasses.replace(tiny_config, mesh=(("runs", 1),)), "alie", "cwtm", [1])
    with pytest.raises(RuntimeError, match=r"init\(\)"):
        exp.run_chunk(None, 1)


def test_grid_compiles_a_sweep_over_alpha_and_momentum_once(tmp_path, monkeypatch, tiny_config):
    """A sweep over shape-free keys is one program per (attack, rule) (its runs equal their
    one-setting programs: test above); a memory budget below one run cuts it into pieces."""
    import dataclasses

    from nnmjax.experiments import grid

    built = []
    real = grid.build_experiment
    monkeypatch.setattr(grid, "build_experiment",
                        lambda *a, **k: built.append(len(a[3])) or real(*a, **k))
    sweep = [dataclasses.replace(tiny_config, alpha=a, momentum=m, seeds=(1, 2))
             for a, m in [(0.1, 0.9), (1.0, 0.99)]]
    records = run_grid(sweep, tmp_path / "sweep", progress=False)
    assert built == [4] and len(records) == 4
    assert {r["summary"]["vmapped_runs"] for r in records} == {4}
    assert all(len(r["code"]["source_sha256"]) == 64 for r in records)  # provenance
    assert {(r["key"]["alpha"], r["key"]["momentum"], r["key"]["seed"]) for r in records} == {
        (a, m, seed) for a, m in [(0.1, 0.9), (1.0, 0.99)] for seed in (1, 2)}
    specs = grid.grid_runs(sweep)
    ds = nnmjax.data.load_dataset("digits")
    assert [len(g) for g in grid.program_groups(specs)] == [4]
    assert [len(g) for g in grid.program_groups(specs, datasets={specs[0].config.data_source: ds},
                                                budget=1)] == [1, 1, 1, 1]


@pytest.mark.parametrize("attack,rule", [("label_flipping", "bucketing+cwtm"), ("mimic", "krum"),
                                         ("gaussian", "gm")])
def test_every_attack_kind_runs(tiny_config, attack, rule):
    exp = build_experiment(tiny_config, attack, rule, [3])
    s, (loss, kappa) = exp.run_chunk(exp.init(), 3)
    assert np.all(np.isfinite(np.asarray(loss)))
    acc = np.asarray(exp.evaluate(s))
    assert acc.shape == (1,) and 0 <= acc[0] <= 1


def test_dgd_runs(tiny_config):
    import dataclasses
    cfg = dataclasses.replace(tiny_config, algorithm="dgd")
    exp = build_experiment(cfg, "sign_flipping", "cwmed", [1])
    _, (loss, _) = exp.run_chunk(exp.init(), 2)
    assert np.all(np.isfinite(np.asarray(loss)))


@pytest.mark.parametrize("item,match", [
    ("bogus=1", "unknown config key 'bogus'"),
    ("f=9", "2f < n"),
    ("alpha=0", "alpha"),
    ("attacks=['nope']", "'attacks': unknown 'nope'"),
    ("rules=['cwtm+nnm']", "rules"),
    ("model='resnet'", "model"),
    ("steps=0", "steps"),
    ("tolerated_f=9", "2 tolerated_f < n"),
    ("tolerated_f=-1", "tolerated_f"),
    ("tolerated_f=true", "tolerated_f"),
    ("clip=0", "clip.*false for no clipping"),
    ("clip=true", "clip"),
    ("rule_options={cwtm={bogus=1}}", "rule_options.*unknown option.*bogus"),
    ("rule_options={gm={nu=0.1}}", "rule_options.*'gm' is a stage of none of the rules"),
    ("rule_options={cwtm=3}", "rule_options.*table of tables"),
    ("rule_options={cwtm={x=[1]}}", "rule_options.*cwtm.x must be"),
])
def test_config_errors(item, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [item])


def test_rule_options_built_by_hand_must_be_pairs(tiny_config):
    import dataclasses
    with pytest.raises(ValueError, match="rule_options.*pairs"):
        dataclasses.replace(tiny_config, rule_options={"cwtm": {}})


def test_clip_false_turns_clipping_off():
    assert load_config(None, ["clip=false"]).clip is None
    assert load_config(None, ["clip=1"]).clip == 1.0


def test_parse_set_and_missing_files(tmp_path):
    assert parse_set(["steps=200", "rules=[\"nnm+cwtm\"]", "dataset=mnist"]) == {
        "steps": 200, "rules": ["nnm+cwtm"], "dataset": "mnist"}
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "nope.toml")
    cfg = load_config(None, TINY + ["dataset='mnist'", f"data_dir='{tmp_path}'"])
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        run_grid(cfg, tmp_path / "out", progress=False)


def test_committed_records_keep_their_identity():
    """A run's hash is a function of its settings; new config keys (unset) must not change
    it, or finished grids would run again: rebuild committed records' hashes."""
    from nnmjax.experiments.config import RunSpec
    runs = Path(__file__).parents[1] / "experiments" / "results" / "fashion_mnist_table2" / "runs"
    for path in sorted(runs.glob("*.json"))[:5]:
        rec = json.loads(path.read_text())
        key = dict(rec["key"])
        attack, rule, seed = key.pop("attack"), key.pop("rule"), key.pop("seed")
        config = Config(**key, attacks=(attack,), rules=(rule,), seeds=(seed,))
        assert RunSpec(config, attack, rule, seed).hash() == rec["hash"] == path.stem


def test_tolerated_f_builds_the_rules_with_it(tmp_path, tiny_config):
    """The rules assume ``tolerated_f`` Byzantine workers while ``f`` attack; the record
    says so, and its table joins the baseline of the same honest workers."""
    import dataclasses
    cfg = dataclasses.replace(tiny_config, tolerated_f=3, rules=("cwtm",), baseline=True)
    exp = build_experiment(cfg, "alie", "cwtm", [1])
    assert exp.rule.f == 3 and exp.workers == cfg.n - cfg.f == 5
    assert cfg.runs()[0].hash() != dataclasses.replace(cfg, tolerated_f=None).runs()[0].hash()
    assert dataclasses.replace(cfg, tolerated_f=cfg.f).tolerated_f is None  # = f: the same run
    recs = run_grid(cfg, tmp_path, progress=False)
    attacked = [r for r in recs if r["key"]["attack"] == "alie"]
    assert len(recs) == 2 and attacked[0]["key"]["tolerated_f"] == 3
    assert "tolerated_f" not in [r for r in recs if r["key"]["attack"] == "none"][0]["key"]
    from nnmjax.experiments import table
    md = table.format_markdown(recs)
    assert "f=2, tolerated_f=3" in md and "Fault-free baseline (mean, 5 honest workers)" in md


def test_rule_options_reach_the_rules_records_and_tables(tmp_path, tiny_config):
    """``rule_options`` (ByzFL's aggregator parameters) build every rule with the stage;
    they are part of the attacked runs' identity, not of the shared baseline's, and a
    table tells the settings apart."""
    import dataclasses

    from nnmjax.experiments import table
    from nnmjax.experiments.config import from_mapping
    byzfl_gm = {"gm": {"nu": 0.1, "max_iter": 3, "tol": 0.0, "init": "zero"}}
    plain = dataclasses.replace(tiny_config, rules=("gm", "nnm+cwtm"), baseline=True, steps=2,
                                eval_every=2)
    cfg = from_mapping({**{k: v for k, v in dataclasses.asdict(plain).items()
                           if k != "rule_options"}, "rule_options": byzfl_gm, "mesh": {}})
    assert cfg.rule_options == (("gm", (("init", "zero"), ("max_iter", 3), ("nu", 0.1),
                                        ("tol", 0.0))),)
    exp = build_experiment(cfg, "alie", "gm", [1])
    assert exp.rule.options == byzfl_gm["gm"] and cfg.build_rule("nnm+cwtm").options == {}
    hashes = [s.hash() for s in cfg.runs()]
    plain_hashes = [s.hash() for s in plain.runs()]
    assert hashes[:2] != plain_hashes[:2] and hashes[-1] == plain_hashes[-1]  # the baseline
    recs = run_grid(cfg, tmp_path, progress=False)
    keys = {r["key"]["rule"]: r["key"] for r in recs}
    assert keys["gm"]["rule_options"] == "gm(init='zero', max_iter=3, nu=0.1, tol=0.0)"
    assert "rule_options" not in keys["mean"]
    recs = run_grid(plain, tmp_path, progress=False)
    assert len(list((tmp_path / "runs").glob("*.json"))) == 5
    md = table.format_markdown(results.load_records(tmp_path))
    assert md.count("rule_options=gm(init='zero'") == 1 and md.count("Fault-free") == 2


def test_grid_records_resume_and_corruption(tmp_path, tiny_config):
    import dataclasses
    cfg = dataclasses.replace(tiny_config, attacks=("alie", "sign_flipping"), baseline=True)
    recs = run_grid(cfg, tmp_path, progress=False)
    assert len(recs) == 3
    files = sorted((tmp_path / "runs").glob("*.json"))
    assert len(files) == 3
    mtimes = [f.stat().st_mtime_ns for f in files]
    import csv
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert len(rows) == 3 and set(results.SUMMARY_COLUMNS) <= set(rows[0])
    run_grid(cfg, tmp_path, progress=False)  # nothing to do
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    files[0].write_text("{not json")
    with pytest.raises(results.CorruptRecordError, match=files[0].name):
        run_grid(cfg, tmp_path, progress=False)
    assert files[0].read_text() == "{not json"


def test_cli_plan_without_data(tmp_path, capsys):
    """--plan lists the groups of a grid whose data is not here, and says so."""
    from nnmjax.cli import main
    args = ["run", "--out", str(tmp_path / "out"), "--plan"] + [a for s in TINY for a in ("--set", s)]
    args += ["--set", "dataset='mnist'", "--set", f"data_dir='{tmp_path}'",
             "--set", "attacks=['alie']", "--set", "rules=['cwtm']"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 runs in 2 compiled groups to run (0 already done), 12 run-steps left" in out
    assert "alie / cwtm: 1 runs x 6 steps" in out
    assert "needs data not found here" in out and "could not find" in out and str(tmp_path) in out


@pytest.mark.slow
def test_cli_jobs_split_a_grid_over_worker_processes(tmp_path, capsys):
    """--jobs 2: two worker processes fill one directory with the records a single process
    writes (bit for bit), each with its log; a failing worker fails the run, its log shown."""
    from nnmjax.cli import main
    sets = [a for s in TINY + ["attacks=['sign_flipping', 'alie']", "rules=['cwtm']"]
            for a in ("--set", s)]
    assert main(["run", "--out", str(tmp_path / "jobs"), "--quiet", "--no-plots", "--jobs", "2"] + sets) == 0
    assert "worst case" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "jobs" / "logs").iterdir()) == [
        "run-shard-0-of-2.log", "run-shard-1-of-2.log"]
    assert main(["run", "--out", str(tmp_path / "one"), "--quiet", "--no-plots"] + sets) == 0
    jobs, one = results.load_records(tmp_path / "jobs"), results.load_records(tmp_path / "one")
    assert len(jobs) == len(one) == 3
    for a, b in zip(jobs, one):
        assert a["hash"] == b["hash"] and a["curves"] == b["curves"]
    assert len((tmp_path / "jobs" / "summary.csv").read_text().splitlines()) == 1 + 3
    bad = sets + ["--set", "dataset='mnist'", "--set", f"data_dir='{tmp_path}'"]
    assert main(["run", "--out", str(tmp_path / "bad"), "--quiet", "--jobs", "2"] + bad) == 1
    err = capsys.readouterr().err
    assert "worker run-shard-1-of-2.log exited with 2" in err and "could not find" in err
    assert main(["run", "--out", str(tmp_path / "bad"), "--jobs", "0"] + sets) == 2
    assert "nnmjax run: error: --jobs must be >= 1" in capsys.readouterr().err


def test_cli_run_table_plot(tmp_path, capsys):
    from nnmjax.cli import main
    args = ["run", "--out", str(tmp_path)] + [a for s in TINY for a in ("--set", s)] + [
        "--set", "attacks=['sign_flipping']", "--set", "rules=['cwtm','nnm+cwtm']", "--quiet",
        "--checkpoint-every", "0"]
    assert main(args + ["--plan"]) == 0
    plan = capsys.readouterr().out
    assert "3 runs in 3 compiled groups to run (0 already done), 18 run-steps left" in plan
    assert "sign_flipping / nnm+cwtm: 1 runs x 6 steps" in plan and "none / mean" in plan
    assert not (tmp_path / "runs").exists()
    assert main(args) == 0
    assert not list((tmp_path / "partial").glob("*.npz"))  # finished groups leave none
    out = capsys.readouterr().out
    assert "nnm+cwtm" in out and "worst case" in out
    assert (tmp_path / "summary.csv").exists() and (tmp_path / "table.md").exists()
    assert (tmp_path / "plots" / "accuracy-cwtm.png").exists()  # one figure per block
    assert (tmp_path / "plots" / "kappa-cwtm.png").exists() and (tmp_path / "table.csv").exists()
    assert main(["table", str(tmp_path)]) == 0
    assert main(["plot", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["run", "--set", "f=100", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("nnmjax run: error: config key 'f'")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir()
                    and not os.environ.get("NNMJAX_DATA_DIR"),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_paper_setting_reaches_70_percent_in_100_steps(tmp_path):
    """Paper setting: D-SHB, n=17, f=4, Dirichlet alpha=0.1, ALIE vs nnm+cwtm, 100 steps
    (seed 1 is at 0.77 there)."""
    cfg = load_config(None, ["dataset='fashion_mnist'", "model='paper_cnn'", "steps=100",
                             "lr=0.75", "attacks=['alie']", "rules=['nnm+cwtm']", "baseline=false",
                             "eval_every=50", "augment_flip=true", "seeds=[1]"])
    rec, = run_grid(cfg, tmp_path, progress=False)
    assert rec["summary"]["max_test_acc"] >= 0.70, rec["curves"]["test_acc"]


def test_shards_partition_the_grid(tmp_path, tiny_config):
    import dataclasses
    cfg = dataclasses.replace(tiny_config, attacks=("alie", "sign_flipping"), rules=("cwtm",))
    run_grid(cfg, tmp_path, progress=False, shard=(0, 2))
    assert len(list((tmp_path / "runs").glob("*.json"))) == 1
    run_grid(cfg, tmp_path, progress=False, shard=(1, 2))
    assert len(list((tmp_path / "runs").glob("*.json"))) == 2
    with pytest.raises(ValueError, match="shard"):
        run_grid(cfg, tmp_path, progress=False, shard=(2, 2))


@pytest.mark.parametrize("model, stats", [("cifar_cnn", 8), ("resnet18", 40)])
def test_cnn_trains_with_batch_norm(tmp_path, model, stats):
    """cifar_cnn (with dropout) and ByzFL's ResNet-18: each worker normalises with its own
    batch statistics; the running averages move (the honest workers' mean) and evaluation
    uses them."""
    from fakedata import write_fake_cifar

    write_fake_cifar(tmp_path, per_batch=20, n_test=8)
    cfg = load_config(None, ["dataset='cifar10'", f"data_dir='{tmp_path}'", f"model='{model}'",
                             "n=5", "f=1", "batch_size=4", "steps=2", "eval_every=2",
                             "seeds=[1]", "attacks=['sign_flipping']", "rules=['nnm+cwtm']",
                             "lr_schedule='paper_cifar'", "lr=0.25", "clip=5.0"])
    exp = build_experiment(cfg, "sign_flipping", "nnm+cwtm", [1])
    state = exp.init()
    stats0 = jax.tree.leaves(state.model_state)
    assert len(stats0) == stats  # mean and var of each BatchNorm layer
    state, (loss, kappa) = exp.run_chunk(state, 2)
    stats1 = jax.tree.leaves(state.model_state)
    assert all(np.all(np.isfinite(np.asarray(s))) for s in stats1)
    assert any(not np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(stats0, stats1))
    assert np.all(np.isfinite(np.asarray(loss))) and np.isfinite(float(exp.evaluate(state)[0]))


def test_dataset_too_small_for_the_partition_is_a_clear_error(tmp_path, capsys):
    from fakedata import write_fake_mnist

    from nnmjax.cli import main

    write_fake_mnist(tmp_path / "data", n_train=10, n_test=5)
    sets = ["dataset='mnist'", f"data_dir='{tmp_path / 'data'}'", "model='logreg'", "steps=2",
            "seeds=[1]", "attacks=['sign_flipping']", "rules=['cwtm']"]
    assert main(["run", "--out", str(tmp_path / "out"), "--quiet",
                 *[a for s in sets for a in ("--set", s)]]) == 2
    assert "13 workers but only 10 samples" in capsys.readouterr().err


def test_an_interrupted_group_resumes_from_its_checkpoint_bit_for_bit(tmp_path, tiny_config,
                                                                       monkeypatch, capsys):
    import dataclasses
    from nnmjax.sim import Experiment

    cfg = dataclasses.replace(tiny_config, eval_every=2, seeds=(1, 2))
    reference = run_grid(cfg, tmp_path / "ref", progress=False, checkpoint_s=None)
    assert not (tmp_path / "ref" / "partial").exists()

    chunks = []
    real = Experiment.run_chunk

    def killed_after_two_chunks(self, state, steps):
        if len(chunks) == 2:
            raise KeyboardInterrupt
        chunks.append(steps)
        return real(self, state, steps)

    monkeypatch.setattr(Experiment, "run_chunk", killed_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        run_grid(cfg, tmp_path / "out", progress=False, checkpoint_s=0)
    saved, = (tmp_path / "out" / "partial").glob("*.npz")
    from nnmjax.experiments.grid import plan_grid
    done, (group,), missing = plan_grid(cfg, tmp_path / "out")
    assert missing is None
    assert not done and group.checkpoint == (4, True) and group.resume_step == 4
    assert len(group.runs) == 2 and (group.attack, group.rule, group.steps) == ("alie", "nnm+cwtm", 6)
    assert not (tmp_path / "out" / "runs").exists()
    with np.load(saved) as z:
        assert int(z["steps"]) == 4 and z["loss"].shape == (2, 4) and list(z["at"]) == [2, 4]

    chunks.clear()
    monkeypatch.setattr(Experiment, "run_chunk", lambda self, state, steps: (
        chunks.append(steps), real(self, state, steps))[1])
    resumed = run_grid(cfg, tmp_path / "out", progress=True, checkpoint_s=0)
    assert chunks == [2]  # only the last chunk ran
    assert "alie / nnm+cwtm: resumed at step 4 from" in capsys.readouterr().out
    assert not list((tmp_path / "out" / "partial").glob("*.npz"))
    by_hash = {r["hash"]: r for r in reference}
    assert len(resumed) == 2
    for r in resumed:
        assert r["curves"] == by_hash[r["hash"]]["curves"]
        assert r["summary"]["max_test_acc"] == by_hash[r["hash"]]["summary"]["max_test_acc"]


def test_stale_or_foreign_checkpoints_are_discarded(tmp_path, tiny_config):
    from nnmjax.experiments import checkpoint

    exp = build_experiment(tiny_config, "alie", "nnm+cwtm", [1, 2])
    state = exp.init()
    path = checkpoint.group_path(tmp_path, ["b", "a"])
    assert path == checkpoint.group_path(tmp_path, ["a", "b"])
    progress = checkpoint.Progress(3, np.ones((2, 3), np.float32), np.ones((2, 3), np.float32),
                                   np.ones((2, 1), np.float32), [3], 1.5)
    checkpoint.save(path, state, progress, source="code-a")
    back, got = checkpoint.load(path, state, source="code-a")
    assert got.steps == 3 and got.at == [3] and got.wall_s == 1.5
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(back)):
        assert a.dtype == b.dtype
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.warns(UserWarning, match="other code"):
        assert checkpoint.load(path, state, source="code-b") is None
    assert not path.exists()
    other = build_experiment(tiny_config, "alie", "nnm+cwtm", [1, 2, 3]).init()
    checkpoint.save(path, other, progress, source="code-a")
    with pytest.warns(UserWarning, match="does not match"):
        assert checkpoint.load(path, state, source="code-a") is None
    path.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="unreadable"):
        assert checkpoint.load(path, state, source="code-a") is None
    assert checkpoint.load(path, state, source="code-a") is None  # nothing left
    with pytest.raises(ValueError, match="checkpoint_s"):
        run_grid(tiny_config, tmp_path, progress=False, checkpoint_s=-1)


def test_check_reproduces_finished_runs_bit_for_bit_and_flags_a_changed_record(tmp_path, capsys):
    from nnmjax.cli import main
    from nnmjax.experiments.reproduce import check_grid

    cfg = load_config(None, TINY + ["attacks=['sign_flipping']", "rules=['cwtm']",
                                    "baseline=false", "seeds=[1, 2]"])
    run_grid(cfg, tmp_path, progress=False)
    checks = check_grid(cfg, tmp_path, steps=6)
    assert len(checks) == 2 and all(c.equal and c.steps == 6 for c in checks)
    assert all(c.same_code and c.loss_rel == 0.0 for c in checks)
    with pytest.raises(ValueError, match="evaluation point"):
        check_grid(cfg, tmp_path, steps=4)
    with pytest.raises(ValueError, match="no finished run"):
        check_grid(cfg, tmp_path, attack="alie")
    path = results.record_path(tmp_path, checks[1].hash)
    record = json.loads(path.read_text())
    record["curves"]["loss"][1] *= 1.0 + 1e-6
    path.write_text(json.dumps(record))
    args = ["check", "--out", str(tmp_path)] + [a for s in TINY for a in ("--set", s)] + [
        "--set", "attacks=['sign_flipping']", "--set", "rules=['cwtm']",
        "--set", "baseline=false", "--set", "seeds=[1, 2]"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "1 of 2 runs reproduce their records bit for bit" in out
    assert "| sign_flipping / cwtm | 2 | 3 | **differs** |" in out  # the first evaluation point
    assert main(args + ["--attack", "alie"]) == 2
    assert "no finished run" in capsys.readouterr().err
