"""The console script's re-execution with glibc's malloc on transparent huge pages."""
import os
import subprocess
import sys

import pytest

from nnmjax import cli
from nnmjax.bench import hugepages
from nnmjax.bench.hugepages import TUNABLE, hugepage_env

LINUX = dict(platform="linux", glibc=(2, 36), thp_mode="madvise")


def test_env_appends_the_tunable_only_where_it_helps():
    assert hugepage_env({}, **LINUX)["GLIBC_TUNABLES"] == TUNABLE
    env = hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "KEEP": "1"}, **LINUX)
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLE}" and env["KEEP"] == "1"
    for change in (dict(platform="darwin"), dict(glibc=None), dict(glibc=(2, 31)),
                   dict(thp_mode="always"), dict(thp_mode="never"), dict(thp_mode=None)):
        assert hugepage_env({}, **{**LINUX, **change}) is None, change
    assert hugepage_env({"NNMJAX_HUGEPAGES": "0"}, **LINUX) is None
    assert hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, **LINUX) is None
    info = hugepages.status()
    assert set(info) == {"thp_mode", "glibc", "glibc_tunables"}


@pytest.mark.parametrize("argv, reexec", [(["run", "--help"], True), (["bench", "-h"], False),
                                          (["table", "DIR"], False), ([], False)])
def test_entry_reexecutes_long_commands_once(monkeypatch, argv, reexec):
    calls = []
    monkeypatch.setattr(sys, "argv", ["nnmjax", *argv])
    monkeypatch.delenv("NNMJAX_REEXECUTED", raising=False)
    monkeypatch.setattr(hugepages, "hugepage_env", lambda: {"GLIBC_TUNABLES": TUNABLE})

    def fake_exec(path, args, env):
        calls.append((path, args, env))
        raise SystemExit(0)

    monkeypatch.setattr(os, "execve", fake_exec)
    monkeypatch.setattr(cli, "main", lambda a: 0)
    with pytest.raises(SystemExit):
        cli.entry()
    if reexec:
        (path, args, env), = calls
        assert path == sys.executable and args == [sys.executable, "-m", "nnmjax.cli", *argv]
        assert env["GLIBC_TUNABLES"] == TUNABLE and env["NNMJAX_REEXECUTED"] == "1"
    else:
        assert not calls
    calls.clear()
    monkeypatch.setenv("NNMJAX_REEXECUTED", "1")  # the re-executed process runs main itself
    with pytest.raises(SystemExit):
        cli.entry()
    assert not calls


def test_real_reexecution_terminates():
    env = {k: v for k, v in os.environ.items() if k not in ("NNMJAX_REEXECUTED", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-m", "nnmjax.cli", "run", "--help"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--checkpoint-every" in out.stdout
