"""The simulator's algorithms side by side: the wall time of one step of robust D-SHB, one
robust FedAvg round and one robust decentralized step, in one setting and one run.

``python benchmarks/algorithms.py [--model paper_cnn] [--steps 10] [--repeats 3]
[--local-steps 5] [--out F]``

Setting: Fashion-MNIST (the local IDX files), Dirichlet(0.1), batch 25, ``nnm+cwtm``,
ALIE, n = 17 workers (clients, nodes) of which f = 4 Byzantine, one seed; every other
key is :class:`nnmjax.experiments.config.Config`'s default. Cases, run back to back:

- ``dshb``: robust D-SHB (13 honest gradients, momentum, attack, rule, SGD);
- ``fedavg``: a FedAvg round of ``--local-steps`` local SGD steps of the 13 honest
  clients, full participation;
- ``ring``: decentralized on a ring of 17 nodes, the rules told f = 1 per neighbourhood
  of 3 rows (16 honest nodes' gradients at their own parameters, momentum, the local step
  and robust gossip with the attack computed per receiving node);
- ``random_regular``: the same on a random 6-regular graph (seed 0), f = 2 per
  neighbourhood of 7 rows.

``--local-updates`` adds the clients' local steps alone
(:func:`nnmjax.optim.federated.local_updates`, 13 clients x 5 SGD steps of batch 25 of
ByzFL's ``cnn_mnist`` on random images, jitted), all clients in one ``jax.vmap`` against one
client at a time (``clients_per_call=1``), median of 5 calls.

Each case is timed as ``benchmarks/training.py`` times ours (one warm-up chunk, then
``--repeats`` chunks of ``--steps`` steps; the median chunk over ``steps``), in one
process. Ratios are each case's s/step over D-SHB's, from the same run. The target of
issue 21: a ring step at most 3x a D-SHB step. Results: ``benchmarks/results/
algorithms-<backend>.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from training import machine_info, time_nnmjax  # noqa: E402

SCHEMA = "nnmjax.bench.algorithms/1"
BASE = ["dataset='fashion_mnist'", "n=17", "f=4", "partition='dirichlet'", "alpha=0.1",
        "batch_size=25", "rules=['nnm+cwtm']", "attacks=['alie']"]


def cases(local_steps: int) -> dict[str, list[str]]:
    """Each case's config overrides on top of :data:`BASE`."""
    return {
        "dshb": ["algorithm='dshb'"],
        "fedavg": ["algorithm='fedavg'", f"local_steps={local_steps}", "lr=0.1",
                   "lr_schedule='constant'", "clip=false"],
        "ring": ["algorithm='decentralized'", "topology='ring'", "tolerated_f=1"],
        "random_regular": ["algorithm='decentralized'", "topology='random_regular'",
                           "degree=6", "tolerated_f=2"],
    }


def time_local_updates(repeats: int = 5) -> dict:
    """Median wall time of the clients' local steps, vmapped and one client at a time."""
    import statistics
    import time

    import jax
    import jax.numpy as jnp
    import optax

    from nnmjax.models import make_model
    from nnmjax.models.losses import nll
    from nnmjax.optim import federated

    model = make_model("byzfl_cnn_mnist", 10, (28, 28, 1))
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    clients, steps, batch = 13, 5, 25
    x = jax.random.normal(jax.random.key(1), (clients, steps, batch, 28, 28, 1))
    y = jax.random.randint(jax.random.key(2), (clients, steps, batch), 0, 10)

    def loss_fn(w, b):
        return nll(model.apply({"params": w}, b[0]), b[1])

    out = {}
    for name, per_call in (("vmap", None), ("one_client_at_a_time", 1)):
        fn = jax.jit(lambda p, b, k=per_call: federated.local_updates(
            loss_fn, p, b, optimizer=optax.sgd(0.1), clients_per_call=k).updates)
        jax.block_until_ready(fn(params, (x, y)))
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(params, (x, y)))
            samples.append(time.perf_counter() - t0)
        out[name] = {"median_s": statistics.median(samples), "samples_s": samples}
        print(f"local updates, {name}: {out[name]['median_s'] * 1e3:.0f} ms", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="paper_cnn")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--cases", default="dshb,fedavg,ring,random_regular")
    p.add_argument("--local-updates", action="store_true",
                   help="also time the clients' local steps vmapped and one at a time")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import jax

    from nnmjax.experiments.config import load_config

    wanted = [c for c in args.cases.split(",") if c]
    out = Path(args.out or HERE / "results" / f"algorithms-{jax.default_backend()}.json")
    record = {"schema": SCHEMA, "machine": machine_info(), "argv": list(argv or sys.argv[1:]),
              "model": args.model, "cases": {}}
    dataset = None
    for name in wanted:
        overrides = BASE + [f"model='{args.model}'"] + cases(args.local_steps)[name]
        config = load_config(None, overrides)
        dataset = dataset or config.load_data()
        r = time_nnmjax(config, "alie", [1], args.steps, args.repeats, dataset)
        r["overrides"] = overrides
        record["cases"][name] = r
        base = record["cases"].get("dshb")
        ratio = f", {r['s_per_step'] / base['s_per_step']:.2f}x D-SHB" if base else ""
        print(f"{name}: {r['s_per_step']:.4f} s/step{ratio} (first chunk "
              f"{r['first_chunk_s']:.1f} s)", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1) + "\n")
    if "dshb" in record["cases"] and "ring" in record["cases"]:
        ratio = record["cases"]["ring"]["s_per_step"] / record["cases"]["dshb"]["s_per_step"]
        record["target"] = {"target": "a ring step costs at most 3x a D-SHB step",
                            "ratio": ratio, "met": ratio <= 3.0}
        print(f"target: ring / D-SHB = {ratio:.2f} (need <= 3): "
              f"{'MET' if ratio <= 3.0 else 'NOT MET'}")
        out.write_text(json.dumps(record, indent=1) + "\n")
    if args.local_updates:
        record["local_updates"] = time_local_updates()
        out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
