"""Two processes on localhost through jax.distributed give the same results as one."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nnmjax.experiments import results
from nnmjax.experiments.config import load_config
from nnmjax.scale.distributed import initialize
from nnmjax.experiments.grid import run_grid

HERE = Path(__file__).resolve().parent
SETS = ["steps=4", "eval_every=2", "seeds=[1, 2]", "n=7", "f=2", "batch_size=5",
        "model='logreg'", "attacks=['alie']", "rules=['cwtm', 'nnm+cwtm']"]


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, str(HERE / "distributed_check.py"), str(i),
                               str(port), str(tmp_path / "shared"), json.dumps(SETS)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    for o in outs:  # a mesh over both processes' devices; sharded rules equal one device
        assert o["devices"] == 2 and o["local"] == 1
        # with the workers split over the two processes, each gathers only its own data
        assert o["loaded_workers"] == ([0, 1, 2, 3] if o["pid"] == 0 else [4, 5, 6])
        assert max(o[k] for k in ("nnm+cwtm", "krum", "gm", "cwmed")) <= 1e-5
    # the two processes split the grid and filled one directory: same records as one process
    two = {r["hash"]: r for r in results.load_records(tmp_path / "shared")}
    one = {r["hash"]: r for r in run_grid(load_config(None, SETS), tmp_path / "one",
                                          progress=False)}
    assert set(two) == set(one) and len(one) == (2 + 1) * 2  # two rules and the baseline
    # the same grid run jointly, each process computing its own workers' gradients
    joint = {r["hash"]: r for r in results.load_records(tmp_path / "shared-workers")}
    assert set(joint) < set(one) and len(joint) == 1 * 2 + 2
    for h, r in one.items():
        assert r["curves"]["test_acc"] == pytest.approx(two[h]["curves"]["test_acc"], abs=1e-6)
    for h, r in joint.items():
        for k in ("test_acc", "loss", "kappa_hat"):
            assert r["curves"][k] == pytest.approx(one[h]["curves"][k], abs=1e-5), (h, k)


def test_initialize_argument_errors():
    with pytest.raises(ValueError, match="all of"):
        initialize("localhost:1234")
    with pytest.raises(ValueError, match="process_id"):
        initialize("localhost:1234", 2, 5)
