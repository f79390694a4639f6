"""Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/test_sharding.py):
every rule sharded by columns over 8 CPU devices against the same rule on one device."""
from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

import nnmjax
from nnmjax.robust import aggregators
from nnmjax.scale import sharding

F = 4


#: The peers' rules run alone (their nnm+ compositions add nothing sharding-specific).
PEER_RULES = ("cge", "bulyan", "dnc", "signguard")


def cases():
    names = list(aggregators.AGGREGATORS) + [f"nnm+{a}" for a in aggregators.AGGREGATORS
                                             if a not in PEER_RULES]
    return names + ["bucketing+krum", "clipping+cwtm", "arc+nnm+gm", "nnm", "bucketing+cwmed"]


def f_for(name):
    """``F``, or the most Bulyan takes at n = 17 (n >= 4f + 3)."""
    return 3 if name.endswith("bulyan") else F


def main():
    assert len(jax.devices()) == 8, jax.devices()
    mesh = sharding.worker_mesh()
    rng = np.random.default_rng(0)
    out = {}
    for d in (1003,):  # not a multiple of 8
        # rows of different spreads: nearest-neighbour sets without float32 near-ties
        x = (rng.normal(size=(17, d)) * rng.uniform(0.5, 3.0, size=(17, 1)) + 3.0).astype(np.float32)
        x[-3] = 1e38  # bad Byzantine rows: huge, NaN, partly infinite
        x[-2] = np.nan
        x[-1, ::3] = np.inf
        for name in cases():
            if name in sharding.WHOLE_ROW_STAGES:  # refused: they pick coordinates over all d
                try:
                    sharding.shard_rule(nnmjax.rule(name, F), mesh)
                except ValueError:
                    continue
                raise AssertionError(f"{name} should be refused")
            if name == "nnm":
                ref = np.asarray(nnmjax.robust.preaggregators.nnm(jnp.asarray(x), F))
                sharded = sharding.shard_rule(lambda z: nnmjax.robust.preaggregators.nnm(z, F), mesh)
                got = np.asarray(sharded(x))
            else:
                rule = nnmjax.rule(name, f_for(name))
                key = jax.random.key(1) if rule.randomized else None
                ref = np.asarray(rule(jnp.asarray(x), key=key) if key is not None else rule(jnp.asarray(x)))
                got = np.asarray(sharding.shard_rule(rule, mesh)(x, key=key))
            # mean is not robust, and NNM passes the bad rows through unmixed: the same NaN /
            # inf on both sides counts as equal
            both_nan = (np.isnan(got) & np.isnan(ref)) | (got == ref)
            diff = np.where(both_nan, 0.0, np.abs(got - ref))
            err = float(np.max(diff) / (1.0 + np.max(np.abs(np.where(both_nan, 0.0, ref)))))
            out[f"{name}@{d}"] = {"shape_ok": got.shape == ref.shape, "rel_err": err,
                                  "finite": bool(np.all(np.isfinite(got)))
                                  or name in ("mean", "nnm+mean", "nnm")}
    x = jnp.ones((17, 1024), jnp.float32)
    for name in ("cwtm", "cwmed", "meamed", "nnm+cwtm", "krum", "gm", "clipping+cwtm"):
        hlo = sharding.shard_rule(nnmjax.rule(name, F), mesh).jitted.lower(
            x, jax.random.key(0)).compile().as_text()
        out[f"collectives:{name}"] = sum(hlo.count(op) for op in (
            "all-reduce(", "all-gather(", "all-to-all(", "collective-permute("))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
