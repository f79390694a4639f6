"""One of two localhost processes (tests/test_distributed.py): ``nnmjax run`` with
``--coordinator`` (each process runs its slice of the grid into one directory), the same
grid with ``mesh = {workers = 2}`` spanning both processes (they run every run together,
each on its own workers), then a rule sharded over a mesh spanning both processes."""
from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

import nnmjax
from nnmjax.scale import sharding
from nnmjax.cli import main as cli
from nnmjax.experiments.config import load_config
from nnmjax.sim import build_experiment

pid, port, out_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
sets = json.loads(sys.argv[4])
assert cli(["run", "--out", out_dir, "--quiet", "--no-plots", "--coordinator", f"localhost:{port}",
            "--num-processes", "2", "--process-id", str(pid),
            *[a for s in sets for a in ("--set", s)]]) == 0
multihost_utils.sync_global_devices("grid done")
assert cli(["run", "--out", out_dir + "-workers", "--quiet", "--no-plots", "--coordinator", f"localhost:{port}",
            "--num-processes", "2", "--process-id", str(pid),
            *[a for s in sets + ["mesh={workers = 2}", "rules=['nnm+cwtm']"]
              for a in ("--set", s)]]) == 0
multihost_utils.sync_global_devices("collective grid done")

mesh = sharding.worker_mesh()
rng = np.random.default_rng(0)
x = (rng.normal(size=(17, 1000)) * rng.uniform(0.5, 3, (17, 1)) + 3).astype(np.float32)
x[-1] = np.nan
result = {"pid": pid, "devices": len(jax.devices()), "local": len(jax.local_devices())}
config = load_config(None, sets + ["mesh={workers = 2}"])
exp = build_experiment(config, "label_flipping", "cwtm", [1])  # 7 workers, padded to 8
result["loaded_workers"] = sorted(exp.loaded_workers)
for name in ("nnm+cwtm", "krum", "gm", "cwmed"):
    rule = nnmjax.rule(name, 4)
    gx = jax.make_array_from_callback(x.shape, NamedSharding(mesh, P(None, "workers")),
                                      lambda idx: x[idx])
    full = multihost_utils.process_allgather(sharding.shard_rule(rule, mesh)(gx), tiled=True)
    ref = np.asarray(rule(jnp.asarray(x)))
    result[name] = float(np.max(np.abs(np.asarray(full) - ref)))
print(json.dumps(result))
