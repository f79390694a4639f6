"""Rules sharded over a device mesh equal the single-device rules (8 fake CPU devices)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from nnmjax.scale import sharding

HERE = Path(__file__).resolve().parent


def _on_eight_devices(script):
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, str(HERE / script)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_grid_split_over_runs_and_workers_meshes_equals_one_device():
    out = _on_eight_devices("sharded_grid_check.py")
    for name in ("runs", "runs_workers"):
        assert out[name]["same_hashes"] and out[name]["max_diff"] <= 1e-5, name
        assert out[name]["chunk_shape"] == [3, 2]  # 3 seeds padded to 4 on 2 devices
    assert out["runs"]["data_devices"] == out["runs"]["state_devices"] == 2
    # 4 seeds x 7 workers (label flipping: all hold data) padded to 8: blocks of 2 x 2 workers
    w = out["runs_workers"]
    assert w["data_devices"] == 8 and w["data_shape"][:2] == [4, 8]
    assert w["data_block"][:2] == [2, 2]


@pytest.mark.slow
def test_every_rule_sharded_by_columns_equals_one_device_coordinatewise_without_collectives():
    eight_devices = _on_eight_devices("sharded_rules_check.py")  # one subprocess for both checks
    rules = {k: v for k, v in eight_devices.items() if not k.startswith("collectives:")}
    assert len(rules) >= 29
    bad = {k: v for k, v in rules.items()
           if not (v["shape_ok"] and v["finite"] and v["rel_err"] <= 1e-4)}
    assert not bad
    c = {k.split(":")[1]: v for k, v in eight_devices.items() if k.startswith("collectives:")}
    assert c["cwtm"] == c["cwmed"] == c["meamed"] == 0
    # distance-based rules and norms: all-reduces of n x n / n values only
    assert c["nnm+cwtm"] >= 1 and c["krum"] >= 1 and c["clipping+cwtm"] >= 1


def test_worker_mesh_errors():
    with pytest.raises(ValueError, match="needs 4 devices"):
        sharding.worker_mesh(2, runs=2, devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="runs"):
        sharding.worker_mesh(runs=0)
    mesh = sharding.worker_mesh()
    assert mesh.axis_names == ("runs", "workers")
    with pytest.raises(ValueError, match="no axis"):
        sharding.shard_rule(lambda x: x, mesh, axis="data")
