"""Run with 8 fake CPU devices (tests/test_sharding.py): a grid whose seeds are split over a
``runs`` mesh axis, and one whose workers are also split over a ``workers`` axis, give the
same records as the same grid on one device."""
from __future__ import annotations

import json
import sys
import tempfile

import jax
import numpy as np

from nnmjax.experiments.config import load_config
from nnmjax.experiments.grid import run_grid
from nnmjax.sim import build_experiment

TINY = ["steps=4", "eval_every=2", "seeds=[1, 2, 3]", "n=7", "f=2", "batch_size=5",
        "model='logreg'", "attacks=['label_flipping']", "rules=['nnm+cwtm']"]
MESHES = {"runs": "mesh={runs = 2}", "runs_workers": "mesh={runs = 2, workers = 4}"}


def _max_diff(one, many):
    diff = 0.0
    for r in many:
        a, b = one[r["hash"]]["curves"], r["curves"]
        for k in ("loss", "kappa_hat", "test_acc"):
            diff = max(diff, float(np.max(np.abs(np.asarray(a[k], float)
                                                 - np.asarray(b[k], float)))))
    return diff


def main():
    assert len(jax.devices()) == 8
    one = {r["hash"]: r for r in run_grid(load_config(None, TINY), tempfile.mkdtemp(),
                                           progress=False)}
    out = {}
    for name, mesh in MESHES.items():
        many = run_grid(load_config(None, TINY + [mesh]), tempfile.mkdtemp(), progress=False)
        out[name] = {"same_hashes": sorted(one) == sorted(r["hash"] for r in many),
                     "max_diff": _max_diff(one, many)}
        cfg = load_config(None, TINY + [mesh])
        exp = build_experiment(cfg, "label_flipping", "nnm+cwtm", [1, 2, 3])
        state = exp.init()
        index = exp.data.index.index  # each run's workers' rows of the shared training set
        out[name]["data_devices"] = len(index.sharding.device_set)
        out[name]["data_shape"] = list(index.shape)
        out[name]["data_block"] = list(index.addressable_shards[0].data.shape)
        out[name]["state_devices"] = len(jax.tree.leaves(state.params)[0].sharding.device_set)
        state, (loss, _) = exp.run_chunk(state, 2)
        out[name]["chunk_shape"] = list(np.asarray(loss).shape)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
