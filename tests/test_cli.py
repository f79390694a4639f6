"""The ``nnmjax`` command line as a careful user meets it: interrupts (real signals to a
real ``nnmjax run``), bad values, unusable output directories, corrupt records, default
output directories, directories holding several grids, ``--plan``'s estimate, help and
"did you mean". Every failure is one line on stderr and a non-zero exit, never a
traceback."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnmjax.experiments import results
from nnmjax.cli import default_out, main

#: a grid of one compiled group that runs for a while in small chunks
LONG = ["--set", "steps=20000", "--set", "eval_every=10", "--set", "baseline=false",
        "--set", "attacks=['sign_flipping']", "--set", "rules=['cwtm']", "--set", "n=7",
        "--set", "f=2", "--set", "batch_size=5", "--set", "model='logreg'", "--no-plots"]
TINY = ["--set", "steps=4", "--set", "eval_every=2", "--set", "seeds=[1]", "--set", "n=7",
        "--set", "f=2", "--set", "batch_size=5", "--set", "model='logreg'",
        "--set", "attacks=['sign_flipping']", "--set", "rules=['cwtm']", "--no-plots", "--quiet"]


def _start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nnmjax.cli", "run", "--out", str(out), "--quiet", *LONG, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(predicate, p: subprocess.Popen, timeout=120.0):
    t0 = time.monotonic()
    while not predicate():
        assert p.poll() is None, f"the run ended early: {p.communicate()}"
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.05)


def test_sigint_inside_a_chunk_saves_the_group_and_says_how_to_resume(tmp_path):
    """Ctrl-C while the group runs: exit 130, the group's checkpoint saved at the step it
    reached, one line naming it and the command that resumes."""
    out = tmp_path / "out"
    p = _start(out, "--checkpoint-every", "0")
    _wait_for(lambda: list((out / "partial").glob("*.npz")), p)  # chunks are running
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    assert "Traceback" not in stderr + stdout
    line, = [s for s in stderr.splitlines() if "stopped by SIGINT" in s]
    assert "kept 0 of 1 runs finished" in line and "resume with: nnmjax run --out" in line
    step = int(line.split(" at step ")[1].split()[0])
    assert 0 < step < 20000 and step % 10 == 0
    saved, = (out / "partial").glob("*.npz")
    import numpy as np
    with np.load(saved) as z:
        assert int(z["steps"]) == step


def test_a_stop_saves_the_running_group_whatever_the_interval(tmp_path, monkeypatch):
    """In-process: a stop requested after two chunks with periodic checkpoints off still
    saves the group, and the re-run resumes from it to the records of an uninterrupted run."""
    from nnmjax.experiments.config import load_grid
    from nnmjax.experiments.grid import run_grid
    from nnmjax.experiments.interrupt import StopRequest, Stopped
    from nnmjax.sim import Experiment

    config = load_grid(None, [s for s in TINY if "=" in s] + ["steps=6"])
    reference = run_grid(config, tmp_path / "ref", progress=False, checkpoint_s=None)
    stop, real, calls = StopRequest(), Experiment.run_chunk, []

    def chunk(self, state, steps):
        calls.append(steps)
        if len(calls) == 2:
            stop.signal = signal.SIGINT
        return real(self, state, steps)

    monkeypatch.setattr(Experiment, "run_chunk", chunk)
    with pytest.raises(Stopped) as e:
        run_grid(config, tmp_path / "out", progress=False, checkpoint_s=None, stop=stop)
    assert e.value.signum == signal.SIGINT and "at step 4 of 6" in e.value.kept
    monkeypatch.setattr(Experiment, "run_chunk", real)
    resumed = run_grid(config, tmp_path / "out", progress=False, checkpoint_s=None)
    by_hash = {r["hash"]: r for r in reference}
    assert len(resumed) == len(reference)
    for r in resumed:
        assert r["curves"] == by_hash[r["hash"]]["curves"]


def test_a_second_sigint_quits_at_once_and_sigterm_exits_143(tmp_path):
    # the second signal acts while the main thread is busy (here asleep in C, as in a
    # compilation): the watcher thread ends the process
    script = ("import time\nfrom nnmjax.experiments.interrupt import stop_on_signals\n"
              "with stop_on_signals('busy') as stop:\n"
              "    print('ready', flush=True)\n    time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGINT)
    time.sleep(0.3)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130 and time.monotonic() - t0 < 10
    assert "busy: SIGINT: stopping at the next safe point" in stderr
    assert "SIGINT again: quitting now" in stderr and "Traceback" not in stderr + stdout

    p = _start(tmp_path / "b")
    _wait_for(lambda: (tmp_path / "b").is_dir(), p)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr + stdout


def _fails(capsys, argv, *needles, status=2, lines=1):
    capsys.readouterr()
    assert main(argv) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err and (len(err.strip().splitlines()) == 1 or lines is None), err
    assert err.startswith(f"nnmjax {argv[0]}: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_values_are_one_line_naming_the_key(tmp_path, capsys):
    out = ["--out", str(tmp_path / "o")]
    _fails(capsys, ["run", *out, "--set", "lr='fast'"], "config key 'lr'", "must be a number",
           "'fast'")
    _fails(capsys, ["run", *out, "--set", "lr=nan"], "config key 'lr'", "finite")
    _fails(capsys, ["run", *out, "--set", "steps=1.5"], "config key 'steps'", "integer")
    _fails(capsys, ["run", *out, "--set", "seeds=['a']"], "config key 'seeds'")
    _fails(capsys, ["run", *out, "--set", "baseline=1"], "config key 'baseline'", "true or false")
    _fails(capsys, ["run", *out, "--set", "data_dir=3"], "config key 'data_dir'")
    _fails(capsys, ["run", *out, "--set", "lrr=0.1"], "did you mean 'lr'?")
    _fails(capsys, ["run", *out, "--set", "attacks=['optimal_ali']"], "'optimal_alie'")
    _fails(capsys, ["run", *out, "--set", "rules=['nnm+cwmt']"], "did you mean 'cwtm'")
    _fails(capsys, ["run", *out, "--set", "source='web'"], "config key 'source'")
    _fails(capsys, ["run", *out, "--shard", "2/2"], "--shard")
    _fails(capsys, ["run", str(tmp_path / "missing.toml"), *out], "does not exist")
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = [")
    _fails(capsys, ["run", str(bad), *out], "bad.toml")
    assert not (tmp_path / "o").exists()  # nothing was created for a run that never started


def test_unusable_output_directories_are_refused_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _fails(capsys, ["run", "--out", "/proc/nnmjax-x", *TINY], "cannot be written")
    _fails(capsys, ["run", "--out", str(a_file / "sub"), *TINY], "cannot be written")
    _fails(capsys, ["run", "--out", str(a_file), *TINY], "is a file")
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    _fails(capsys, ["run", "--out", str(foreign), *TINY], "did not write", "thesis.tex")
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]
    _fails(capsys, ["bench", "--quick", "--out", "/proc/nnmjax-x/b.json"], "cannot be written")


def test_table_plot_and_check_on_bad_directories(tmp_path, capsys):
    _fails(capsys, ["table", str(tmp_path)], "no run records")
    _fails(capsys, ["plot", str(tmp_path)], "no run records")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "0123456789abcdef.json").write_text("{not json")
    _fails(capsys, ["table", str(tmp_path)], "corrupt")
    _fails(capsys, ["plot", str(tmp_path)], "corrupt")
    _fails(capsys, ["run", "--out", str(tmp_path), *TINY], "corrupt")
    _fails(capsys, ["run", "--out", str(tmp_path), "--plan", *TINY], "corrupt")


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="config key 'lr'"):
        main(["run", "--out", str(tmp_path), "--set", "lr='fast'", "--debug"])


def test_data_dir_env_is_strict(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NNMJAX_DATA_DIR", str(tmp_path / "empty"))
    err = _fails(capsys, ["run", "--out", str(tmp_path / "o"), *TINY, "--set",
                          "dataset='fashion_mnist'", "--set", "model='logreg'"],
                 "NNMJAX_DATA_DIR", "could not find", lines=None)  # it lists where it looked
    assert "- /usr/share/datasets" not in err


def test_default_out_and_a_directory_of_several_grids(tmp_path, capsys, monkeypatch):
    assert default_out(None) == "out/quickstart"
    assert default_out("experiments/paper/fashion_mnist.toml") == "out/fashion_mnist"
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "mygrid.toml"
    cfg.write_text("dataset = 'digits'\n")
    assert main(["run", str(cfg), *TINY]) == 0
    assert len(results.load_records(tmp_path / "out" / "mygrid")) == 1
    capsys.readouterr()
    assert main(["run", str(cfg), *TINY[:-1], "--set", "alpha=1.0"]) == 0
    captured = capsys.readouterr()
    assert "already holds 1 runs of other settings" in captured.err
    table = (tmp_path / "out" / "mygrid" / "table.md").read_text()
    assert "alpha=0.1" in table and "alpha=1.0" in table  # the directory's every record
    summary = (tmp_path / "out" / "mygrid" / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 2
    assert not (tmp_path / "out" / "mygrid" / "plots").exists()  # --no-plots


def test_plan_estimates_the_wall_time(tmp_path, capsys):
    out = ["--out", str(tmp_path)]
    assert main(["run", *out, "--plan", *TINY]) == 0
    assert "Estimated wall time:" in capsys.readouterr().out
    assert main(["run", *out, *TINY]) == 0
    capsys.readouterr()
    assert main(["run", *out, "--plan", *TINY, "--set", "seeds=[2, 3]"]) == 0
    plan = capsys.readouterr().out
    assert "Estimated wall time:" in plan and "measured in this directory" in plan


def test_plan_measure_times_each_group_and_writes_nothing(tmp_path, capsys):
    """--plan --measure K builds and times every group's program (a line each, then the
    total); it writes no record, and bad values or missing data are one-line errors."""
    out = ["--out", str(tmp_path / "out")]
    grid = [*TINY, "--set", "attacks=['sign_flipping', 'alie']"]
    assert main(["run", *out, "--plan", "--measure", "1", *grid]) == 0
    text = capsys.readouterr().out
    assert "timing each group's program for 2 x 1 steps" in text
    for group in ("sign_flipping / cwtm", "alie / cwtm", "none / mean"):
        assert group in text, group
    assert "Estimated wall time:" in text and "measured now" in text
    assert not (tmp_path / "out" / "runs").exists()
    _fails(capsys, ["run", *out, "--plan", "--measure", "0", *TINY], "--measure must be >= 1")
    _fails(capsys, ["run", *out, "--plan", "--measure", "1", *TINY, "--set", "dataset='mnist'",
                    "--set", f"data_dir='{tmp_path}'"], "need their data", lines=None)


def test_plan_measure_stops_after_the_group_being_measured(tmp_path, capsys, monkeypatch):
    """A signal during --plan --measure: the group being timed finishes, then one line on
    stderr and exit 130, no traceback."""
    from nnmjax.cli import _print_plan
    from nnmjax.experiments.config import load_grid
    from nnmjax.experiments.interrupt import StopRequest
    from nnmjax.sim import Experiment

    config = load_grid(None, [s for s in TINY if "=" in s] + ["attacks=['sign_flipping', 'alie']"])
    stop, real = StopRequest(), Experiment.run_chunk

    def chunk(self, state, steps):
        stop.signal = signal.SIGINT
        return real(self, state, steps)

    monkeypatch.setattr(Experiment, "run_chunk", chunk)
    assert _print_plan(config, tmp_path, (0, 1), measure=1, stop=stop) == 130
    captured = capsys.readouterr()
    assert "sign_flipping / cwtm" in captured.out and "alie / cwtm" not in captured.out
    assert "stopped by SIGINT after measuring 1 of 3 groups" in captured.err
    assert "Traceback" not in captured.err


def test_measure_group_rejects_bad_steps(tmp_path):
    from nnmjax.experiments.config import Config
    from nnmjax.experiments.grid import plan_grid
    from nnmjax.experiments.measure import measure_group

    group = plan_grid(Config(model="logreg", n=5, f=1, steps=4), tmp_path).groups[0]
    for steps in (0, 1.5, True):
        with pytest.raises(ValueError, match="steps must be an integer >= 1"):
            measure_group(group, {}, steps=steps)


def test_help_lists_keys_and_names_with_examples(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for word in ("examples:", "attack_search=", "source=", "optimal_alie", "nnm+cwtm",
                 "--process-id", "Ctrl-C"):
        assert word in text, word
    for command in ("check", "table", "plot", "bench"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "examples:" in capsys.readouterr().out, command


def test_bench_writes_outside_the_committed_results_by_default():
    from nnmjax.cli import build_parser

    args = build_parser().parse_args(["bench"])
    assert args.out is None  # the default is chosen once the platform is known:
    import inspect

    from nnmjax import cli
    assert "out/bench/aggregators-" in inspect.getsource(cli._run_bench)
    assert "benchmarks/results" not in inspect.getsource(cli._run_bench)


def test_records_are_kept_bit_for_bit_through_a_failed_rerun(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path), *TINY]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "runs").glob("*.json")}
    _fails(capsys, ["run", "--out", str(tmp_path), *TINY, "--set", "lr='x'"], "config key 'lr'")
    after = {p.name: p.read_bytes() for p in (tmp_path / "runs").glob("*.json")}
    assert before == after and {json.loads(v)["key"]["rule"] for v in after.values()} == {
        "cwtm", "mean"}


def test_plan_prices_the_adaptive_attack_from_the_same_rules_optimal_attacks():
    """An adaptive group with no record of its own costs the same rule's measured
    optimal-attack step times ADAPTIVE_FACTOR (not the directory's median step)."""
    from types import SimpleNamespace

    from nnmjax.experiments import estimate

    def record(attack, rule, wall_s):
        return {"key": {"dataset": "fm", "model": "cnn", "attack": attack, "rule": rule,
                        "f": 4, "steps": 10}, "summary": {"wall_s": wall_s, "vmapped_runs": 1}}

    records = [record("optimal_alie", "cwtm", 20.0), record("optimal_foe", "cwtm", 20.0),
               record("alie", "cwtm", 1.0), record("alie", "krum", 1.0)]
    config = SimpleNamespace(dataset="fm", model="cnn")

    def group(attack, rule):
        return SimpleNamespace(runs=[SimpleNamespace(config=config)], steps=10, resume_step=0,
                               attack=attack, rule=rule)

    seconds, how = estimate.plan_seconds([group("adaptive", "cwtm")], records)
    assert seconds == pytest.approx(20.0 * estimate.ADAPTIVE_FACTOR) and "measured" in how
    seconds, _ = estimate.plan_seconds([group("adaptive", "krum")], records)
    directory_median = (0.1 + 2.0) / 2  # per run-step, over all four records
    assert seconds == pytest.approx(10 * directory_median * estimate.SEARCH_FACTOR
                                    * estimate.ADAPTIVE_FACTOR)
