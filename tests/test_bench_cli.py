"""``nnmjax bench`` on a tiny case: the CLI runs, the JSON has the documented structure."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nnmjax import bench, cli
from nnmjax.bench import measure
from nnmjax.bench.byzfl_rules import byzfl_skip
from nnmjax.bench.cases import rule_skip

TINY = ["--cases", "9:1000:2", "--rules", "cwtm", "nnm+krum", "--repeats", "2",
        "--quiet"]


def _check_structure(data, *, byzfl: bool):
    assert data["schema"] == bench.SCHEMA
    assert set(data["code"]) >= {"nnmjax", "git_commit", "source_sha256", "changed_during_run"}
    m = data["machine"]
    for key in ("platform", "cpu_count", "jax", "jaxlib", "jax_backend", "device_kind",
                "byzfl", "date"):
        assert key in m, key
    assert m["cpu_count"] >= 1
    cfg = data["config"]
    assert cfg["cases"] == [{"n": 9, "d": 1000, "f": 2}]
    assert cfg["rules"] == ["cwtm", "nnm+krum"]
    assert cfg["repeats"] == 2

    (stream,) = data["streams"]
    assert (stream["n"], stream["d"], stream["f"]) == (9, 1000, 2)
    for impl in ("jax", "numpy"):
        assert stream[impl]["status"] == "ok"
        assert len(stream[impl]["samples_ms"]) == 2
    assert stream["floor_ms"] == min(stream["jax"]["median_ms"], stream["numpy"]["median_ms"])
    gemm = stream["gemm"]
    assert gemm["status"] == "ok"
    assert gemm["flops_per_s"] == pytest.approx(2 * 2048 ** 3 / (gemm["median_ms"] / 1e3))

    assert [r["rule"] for r in data["results"]] == ["cwtm", "nnm+krum"]
    for r in data["results"]:
        assert (r["n"], r["d"], r["f"]) == (9, 1000, 2)
        nj = r["nnmjax"]
        assert r["status"] == nj["status"] == "ok"
        assert nj["compile_s"] > 0 and nj["warmup_ms"] > 0
        assert len(nj["samples_ms"]) == 2 and all(t > 0 for t in nj["samples_ms"])
        assert nj["median_ms"] == pytest.approx(sum(nj["samples_ms"]) / 2)
        own = r["stream"]["median_ms"]  # the streaming pass timed in the rule's rounds
        assert r["x_stream"] == pytest.approx(nj["median_ms"] / own)
        assert r["floor"] == bench.rule_floor(r["rule"], bench.Case(9, 1000, 2), stream_ms=own,
                                              gemm_flops_per_s=gemm["flops_per_s"])
        assert r["x_floor"] == pytest.approx(nj["median_ms"] / r["floor"]["floor_ms"])
        assert r["numpy"]["status"] == "ok"
        assert r["vs_numpy"] == pytest.approx(r["numpy"]["median_ms"] / nj["median_ms"])
        if byzfl:
            b = r["byzfl"]
            assert set(b["backends"]) == {"numpy", "torch"}
            assert b["status"] == "ok" and b["backend"] in b["backends"]
            assert b["median_ms"] == min(x["median_ms"] for x in b["backends"].values())
            assert r["vs_byzfl"] == pytest.approx(b["median_ms"] / nj["median_ms"])
        else:
            assert r["byzfl"] is None and r["vs_byzfl"] is None
    # the tiny case is not one of the target cases
    assert data["targets"] == [] and data["floor_targets"] == []
    assert data["wall_s"] > 0


def test_bench_cli_worker_process_no_byzfl(tmp_path, capsys):
    out = tmp_path / "sub" / "bench.json"
    assert cli.main(["bench", *TINY, "--no-byzfl", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    _check_structure(data, byzfl=False)
    assert data["config"]["byzfl"] is False and data["config"]["isolate"] is True
    printed = capsys.readouterr().out
    assert "nnm+krum" in printed and "vs-byzfl" in printed and str(out) in printed


def test_bench_cli_without_byzfl_installed(tmp_path, monkeypatch, capsys):
    """In-process, with ``import byzfl`` failing: ByzFL's columns are empty, nothing breaks."""
    monkeypatch.setitem(sys.modules, "byzfl", None)  # makes `import byzfl` raise ImportError
    out = tmp_path / "bench.json"
    assert cli.main(["bench", *TINY, "--in-process", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    _check_structure(data, byzfl=False)
    assert data["machine"]["byzfl"] is None
    assert data["config"]["byzfl_available"] is False


@pytest.mark.byzfl
def test_bench_cli_with_byzfl(tmp_path):
    pytest.importorskip("byzfl")
    out = tmp_path / "bench.json"
    assert cli.main(["bench", *TINY, "--in-process", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    _check_structure(data, byzfl=True)
    assert data["results"][1]["byzfl"]["classes"] == "NNM(f) then Krum(f)"


def test_bench_skips_enumeration_past_max_subsets():
    assert rule_skip("mda", bench.Case(17, 10, 4)) is None
    assert "max_subsets" in rule_skip("nnm+smea", bench.Case(100, 10, 20))
    # ByzFL's NNM gather (n, n-f, d) float32 is refused past the limit
    assert byzfl_skip("nnm+cwtm", bench.Case(1000, 10_000, 200), 8.0)
    assert byzfl_skip("cwtm", bench.Case(1000, 10_000, 200), 8.0) is None


def test_bench_cli_bad_arguments(capsys):
    assert cli.main(["bench", "--cases", "9:1000", "--no-byzfl", "--quiet"]) == 2
    assert "N:D:F" in capsys.readouterr().err
    assert cli.main(["bench", "--cases", "9:1000:2", "--rules", "nope", "--quiet"]) == 2
    assert "nope" in capsys.readouterr().err


def test_cli_help_runs_as_module():
    res = subprocess.run([sys.executable, "-m", "nnmjax.cli", "bench", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    assert "--quick" in res.stdout and "--out" in res.stdout


def test_measure_records_a_failing_implementation_and_keeps_timing_the_others(monkeypatch):
    real = measure._make_call
    calls = {"n": 0}

    def flaky(impl, rule, case, seed):
        call, prepare = real(impl, rule, case, seed)
        if impl != "numpy":
            return call, prepare

        def fails_on_second_call(*args):
            calls["n"] += 1
            if calls["n"] == 2:
                raise FloatingPointError("boom")
            return call(*args)

        return fails_on_second_call, prepare

    monkeypatch.setattr(measure, "_make_call", flaky)
    task = {"kind": "measure", "case": bench.Case(5, 8, 1), "seed": 0, "rule": "cwtm",
            "impls": ["nnmjax", "numpy"], "repeats": 3, "budget_s": 60.0, "single_call_s": 60.0}
    out = measure.run_task(task, lambda step: None)["ok"]
    assert out["numpy"]["status"] == "error" and "FloatingPointError: boom" in out["numpy"]["reason"]
    assert out["nnmjax"]["status"] == "ok" and len(out["nnmjax"]["samples_ms"]) == 3


def test_rule_floors_count_the_gram_pass_and_the_passes_over_x():
    case = bench.Case(17, 1_000_000, 4)
    gram_ms = 1e3 * 17 * 18 * 1_000_000 / 1e11  # 3.06 ms at 100 GFLOP/s
    floor = lambda name, rate=1e11: bench.rule_floor(name, case, stream_ms=2.0,  # noqa: E731
                                                     gemm_flops_per_s=rate)
    assert floor("mean")["floor_ms"] == floor("cwtm")["floor_ms"] == 2.0  # one read
    assert floor("krum")["floor_ms"] == pytest.approx(gram_ms)  # it returns one row
    assert floor("gm")["floor_ms"] == pytest.approx(gram_ms + 2.0)  # and combines the rows
    assert floor("nnm")["floor_ms"] == pytest.approx(gram_ms + 4.0)  # reads and writes n x d
    assert floor("nnm+cwtm")["floor_ms"] == floor("nnm+krum")["floor_ms"] + 2.0
    assert floor("bucketing+cwtm")["floor_ms"] == 2.0
    assert floor("clipping+cwtm")["floor_ms"] == 4.0  # the norms, then the rule
    assert floor("clipping+krum")["floor_ms"] == pytest.approx(gram_ms)  # the Gram has them
    assert floor("krum", 1e13)["gram_ms"] == 2.0  # the Gram pass reads x at least once
    assert floor("krum", None)["floor_ms"] == 2.0
    result = {"results": [{"n": 17, "d": 1_000_000, "f": 4, "rule": "krum", "x_floor": 1.5},
                          {"n": 17, "d": 1_000_000, "f": 4, "rule": "nnm", "x_floor": 4.0},
                          {"n": 17, "d": 1_000_000, "f": 4, "rule": "cwtm", "x_floor": 9.0}]}
    checks = bench.check_floor_targets(result)
    assert [(c["rule"], c["verdict"]) for c in checks] == [("krum", "hit"), ("nnm", "miss")]
    assert "MISS    n=17 d=1e6 f=4  nnm            need <= 2x its floor, got 4x" in \
        bench.format_targets({**result, "floor_targets": checks})
