"""Run with 8 fake CPU devices (tests/test_sharding.py): a grid whose seeds are split over a
``runs`` mesh axis gives the same records as the same grid on one device."""
from __future__ import annotations

import json
import sys
import tempfile

import jax
import numpy as np

from nnmjax.config import load_config
from nnmjax.grid import run_grid

TINY = ["steps=4", "eval_every=2", "seeds=[1, 2, 3]", "n=7", "f=2", "batch_size=5",
        "model='logreg'", "attacks=['sign_flipping']", "rules=['nnm+cwtm']"]


def main():
    assert len(jax.devices()) == 8
    one = run_grid(load_config(None, TINY), tempfile.mkdtemp(), progress=False)
    many = run_grid(load_config(None, TINY + ["mesh={runs = 2}"]), tempfile.mkdtemp(),
                    progress=False)
    one = {r["hash"]: r for r in one}
    out = {"same_hashes": sorted(one) == sorted(r["hash"] for r in many), "max_diff": 0.0}
    for r in many:
        a, b = one[r["hash"]]["curves"], r["curves"]
        for k in ("loss", "kappa_hat", "test_acc"):
            out["max_diff"] = max(out["max_diff"], float(np.max(np.abs(
                np.asarray(a[k], float) - np.asarray(b[k], float)))))
    from nnmjax.simulate import build_experiment

    cfg = load_config(None, TINY + ["mesh={runs = 2}"])
    exp = build_experiment(cfg, "sign_flipping", "nnm+cwtm", [1, 2, 3])
    state = exp.init()
    out["data_devices"] = len(exp.data.x.sharding.device_set)
    out["state_devices"] = len(jax.tree.leaves(state.params)[0].sharding.device_set)
    state, (loss, _) = exp.run_chunk(state, 2)
    out["chunk_shape"] = list(np.asarray(loss).shape)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
