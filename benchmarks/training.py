"""Training throughput: robust D-SHB steps (or FedAvg rounds) per second, nnmjax against
ByzFL's framework.

``python benchmarks/training.py [--steps 30] [--repeats 3] [--quick] [--no-byzfl] [--out F]``
``python benchmarks/training.py --local-steps 5 [...]``: robust FedAvg rounds of 5 local
steps on both sides (below).

The setting is the paper's Fashion-MNIST one with ByzFL's ``cnn_mnist`` on both sides
(``--model byzfl_cnn_mnist``, the default; ``--model paper_cnn`` times the paper's
narrower CNN on our side against ByzFL's ``cnn_mnist``),
``n = 17`` workers of which ``f = 4`` Byzantine, Dirichlet(``alpha = 0.1``) split of the
training set over the 13 honest workers, batch 25, worker momentum 0.9, rule
``nnm+cwtm``; every other key is :class:`nnmjax.experiments.config.Config`'s default (so per-worker
gradient clipping at 2.0 is on, which only adds work on our side). Measured cases:

- **nnmjax, 1 seed**: ``alie`` (``mean + 1.5 std``) and ``optimal_alie`` (``eta`` chosen
  against the real defence every step);
- **nnmjax, 5 vmapped seeds**: the same two attacks, one compiled program advancing five
  independent runs (own partition, initialisation and sampling) per step; we also report
  the cost per seed-step (``s/step / 5``).

For each, ``exp.init()`` then one warm-up ``exp.run_chunk(state, steps)`` (its wall time
includes compilation, ``first_chunk_s``; ``compile_s`` is that minus the median timed
chunk), then ``--repeats`` timed chunks of ``--steps`` steps, each ended by
``jax.block_until_ready``. ``s_per_step`` is the median chunk time divided by ``steps``.

- **ByzFL** (when ``import byzfl`` works): ByzFL 0.0.11's own ``Client``, ``Server``,
  ``ByzantineClient`` and ``DataDistributor`` (``dirichlet_niid``, 0.1, over 13 honest
  clients) with its ``cnn_mnist``, pre-aggregator ``NNM(f=4)`` then ``TrMean(f=4)``, SGD
  with its defaults (lr 0.1, weight decay 1e-4, no milestones), batch 25, momentum 0.9,
  attacks ``ALittleIsEnough(tau=1.5)`` and ``Optimal_ALittleIsEnough`` (its defaults:
  20 evaluations against the real NNM+TrMean; ``f = 4`` copies sent). Fashion-MNIST is
  read by torchvision from an uncompressed copy of the local IDX files with ByzFL's
  training transform (random horizontal flip, ``ToTensor``). The loop body is the DSGD
  branch of ``byzfl/benchmark/train.py`` verbatim, minus evaluation and file output.
  Data loading is excluded: every client's batches (its own shuffled ``DataLoader``) are
  drawn before timing and handed back in order by ``_sample_train_batch``. A timed step
  therefore includes, for each of the 13 clients, forward + backward + flattening the
  gradient + the momentum update; the attack; NNM + TrMean; setting the gradient and the
  SGD step on the server; and loading the new ``state_dict`` into all 13 clients. We
  time ``--byzfl-warmup`` untimed steps, then ``--byzfl-steps`` steps one by one, and
  report the median per-step time (the mean and a phase breakdown are kept too).

With ``--local-steps K`` both sides run robust FedAvg rounds instead: ours
``algorithm = "fedavg"``, ``local_steps = K``, full participation, local SGD lr 0.1
(constant), ``server_lr = 1``, no clipping (ByzFL's FedAvg clips nothing); ByzFL's the FedAvg
branch of ``train.py`` with every honest client selected (its sampler would pick
``floor(13 p)`` of all 17 clients; with all 13 honest ones and the ``f = 4`` Byzantine
copies both sides do the same work): each client's ``compute_model_update(K)`` (K forward
+ backward + SGD steps of its own ``torch.optim.SGD``) and ``get_flat_parameters``, the
attack on the clients' weights, ``update_model_with_weights`` (NNM + TrMean of the weights
as the new model) and the broadcast. A timed "step" is then a round; the target is a round
at least 3x cheaper than ByzFL's. Results go to ``training-fedavg<K>-<backend>.json``.

Compared cases run back to back (for the first attack: 5 seeds, 1 seed, ByzFL; for the
second: ByzFL, 1 seed, 5 seeds), so that load from other processes that drifts during the
run skews the ratios least. Ratios are ByzFL's median s/step divided by ours, both
measured in this run. Results go
to ``benchmarks/results/training-<backend>.json`` (raw samples and machine information).
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SCHEMA = "nnmjax.bench.training/1"
RULE = "nnm+cwtm"
ATTACKS = ("alie", "optimal_alie")
BYZFL_ATTACKS = {"alie": ("ALittleIsEnough", {"tau": 1.5}),
                 "optimal_alie": ("Optimal_ALittleIsEnough", {})}
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
MODELS = ("byzfl_cnn_mnist", "paper_cnn")
SETTING = ["dataset='fashion_mnist'", "n=17", "f=4",
           "partition='dirichlet'", "alpha=0.1", "batch_size=25", "algorithm='dshb'",
           f"rules=['{RULE}']"]


# ------------------------------------------------------------------------- machine
def machine_info() -> dict:
    import jax
    import numpy as np

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_at_start": list(os.getloadavg()),
        "mem_total_gb": _mem_total_gb(),
        "numpy": np.__version__,
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "jax_backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "byzfl": None, "torch": None, "torchvision": None, "torch_threads": None,
    }
    try:
        import byzfl  # noqa: F401
        import torch
        import torchvision

        info.update(byzfl=_version("byzfl"), torch=torch.__version__,
                    torchvision=torchvision.__version__, torch_threads=torch.get_num_threads())
    except Exception:  # noqa: BLE001 - ByzFL is optional
        pass
    return info


def _version(dist: str):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _mem_total_gb():
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


# -------------------------------------------------------------------------- nnmjax
def time_nnmjax(config, attack: str, seeds, steps: int, repeats: int, dataset,
                budget_s: float = float("inf")) -> dict:
    """Steps per second of one compiled (attack, rule) experiment over ``seeds``: one
    warm-up chunk, then ``repeats`` timed chunks, stopping early (after at least one) once
    the timed chunks have taken ``budget_s`` seconds."""
    import jax
    import numpy as np

    from nnmjax.sim import build_experiment

    t0 = time.perf_counter()
    exp = build_experiment(config, attack, RULE, seeds, dataset=dataset)
    state = jax.block_until_ready(exp.init())
    setup_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    state, out = exp.run_chunk(state, steps)
    state, out = jax.block_until_ready((state, out))
    first_s = time.perf_counter() - t0

    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, out = exp.run_chunk(state, steps)
        state, out = jax.block_until_ready((state, out))
        samples.append(time.perf_counter() - t0)
        if sum(samples) >= budget_s:
            break
    chunk = statistics.median(samples)
    loss = np.asarray(out[0])
    s_per_step = chunk / steps
    return {
        "impl": "nnmjax", "attack": attack, "rule": RULE, "seeds": list(seeds),
        "vmapped_seeds": len(seeds), "steps_per_chunk": steps, "repeats": len(samples),
        "setup_s": setup_s, "first_chunk_s": first_s,
        "compile_s": max(first_s - chunk, 0.0),
        "chunk_samples_s": samples, "chunk_median_s": chunk, "chunk_min_s": min(samples),
        "s_per_step": s_per_step, "steps_per_s": 1.0 / s_per_step,
        "s_per_seed_step": s_per_step / len(seeds),
        "seed_steps_per_s": len(seeds) / s_per_step,
        "final_loss": [float(v) for v in loss[:, -1]],
        "loss_finite": bool(np.all(np.isfinite(loss))),
        "loadavg_after": list(os.getloadavg()),
    }


# --------------------------------------------------------------------------- ByzFL
def _torchvision_root(data_dir: str, tmp: str) -> str:
    """A ``FashionMNIST/raw`` folder of uncompressed IDX files (what torchvision reads)."""
    raw = Path(tmp) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    src = Path(data_dir)
    for name in FASHION_FILES:
        if (src / name).is_file():
            os.symlink(src / name, raw / name)
        else:
            with gzip.open(src / f"{name}.gz", "rb") as fin, open(raw / name, "wb") as fout:
                shutil.copyfileobj(fin, fout)
    return tmp


def time_byzfl(attack: str, steps: int, warmup: int, data_dir: str, *, n: int = 17, f: int = 4,
               alpha: float = 0.1, batch_size: int = 25, seed: int = 0,
               local_steps: int | None = None) -> dict:
    """Per-step wall time of ByzFL's DSGD loop, or with ``local_steps`` per-round wall time
    of its FedAvg loop (see the module docstring)."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from byzfl import ByzantineClient, Client, DataDistributor, Server
    from byzfl.utils.misc import set_random_seed

    byz_name, byz_params = BYZFL_ATTACKS[attack]
    honest = n - f
    hflip = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor()])
    t_setup = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="byzfl-fmnist-") as tmp:
        root = _torchvision_root(data_dir, tmp)
        train = datasets.FashionMNIST(root=root, train=True, download=False, transform=hflip)
        test = datasets.FashionMNIST(root=root, train=False, download=False, transform=hflip)
        train.data, train.targets = train.data.clone(), torch.as_tensor(train.targets).long()
        test.data, test.targets = test.data.clone(), test.targets.clone()
    train_subset = Subset(train, list(range(len(train))))
    test_loader = DataLoader(test, batch_size=128, shuffle=False)

    # ByzFL crashes on a client without data: take the first partition seed giving none.
    dd_seed = seed
    while True:
        set_random_seed(dd_seed)
        loaders = DataDistributor({
            "data_distribution_name": "dirichlet_niid", "distribution_parameter": float(alpha),
            "nb_honest": honest, "data_loader": train_subset, "batch_size": batch_size,
        }).split_data()
        sizes = [len(dl.dataset) for dl in loaders]
        if min(sizes) > 0:
            break
        dd_seed += 1

    common = {"model_name": "cnn_mnist", "device": "cpu", "optimizer_name": "SGD",
              "learning_rate": 0.1, "weight_decay": 1e-4, "milestones": [],
              "learning_rate_decay": 1.0}
    clients = [Client({**common, "loss_name": "NLLLoss", "LabelFlipping": False,
                       "training_dataloader": loaders[i], "momentum": 0.9, "nb_labels": 10,
                       "store_per_client_metrics": False}) for i in range(honest)]
    aggregator_info = {"name": "TrMean", "parameters": {"f": f}}
    pre_agg_list = [{"name": "NNM", "parameters": {"f": f}}]
    server = Server({**common, "validation_loader": None, "test_loader": test_loader,
                     "aggregator_info": aggregator_info, "pre_agg_list": pre_agg_list})
    attack_parameters = dict(byz_params, aggregator_info=aggregator_info,
                             pre_agg_list=pre_agg_list, f=f)
    byz_client = ByzantineClient({"name": byz_name, "f": f, "parameters": attack_parameters})
    set_random_seed(seed)

    # Draw every batch now (its own DataLoader: shuffling, flip, ToTensor), outside timing.
    total = warmup + steps
    t_load = time.perf_counter()
    for c in clients:
        batches = [c._sample_train_batch() for _ in range(total * (local_steps or 1))]
        c._sample_train_batch = iter(batches).__next__
    load_s = time.perf_counter() - t_load
    setup_s = time.perf_counter() - t_setup - load_s

    new_model = server.get_dict_parameters()
    for c in clients:
        c.set_model_state(new_model)

    phases = {"gradients": [], "attack": [], "aggregate_and_step": [], "broadcast": []}
    step_s, losses = [], []
    for t in range(total):
        t0 = time.perf_counter()
        train_loss = np.zeros(honest)
        if local_steps is None:
            # --- the DSGD branch of byzfl/benchmark/train.py ---
            for i, client in enumerate(clients):
                train_loss[i] = client.compute_gradients()
            honest_gradients = [client.get_flat_gradients_with_momentum() for client in clients]
            t1 = time.perf_counter()
            byz_vector = byz_client.apply_attack(honest_gradients)
            t2 = time.perf_counter()
            server.update_model_with_gradients(honest_gradients + byz_vector)
        else:
            # --- the FedAvg branch of byzfl/benchmark/train.py, every honest client ---
            for i, client in enumerate(clients):
                train_loss[i] = client.compute_model_update(local_steps)
            honest_weights = [client.get_flat_parameters() for client in clients]
            t1 = time.perf_counter()
            byz_weights = byz_client.apply_attack(honest_weights)
            t2 = time.perf_counter()
            server.update_model_with_weights(honest_weights + byz_weights)
        t3 = time.perf_counter()
        new_model = server.get_dict_parameters()
        for client in clients:
            client.set_model_state(new_model)
        t4 = time.perf_counter()
        if t >= warmup:
            step_s.append(t4 - t0)
            for key, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                phases[key].append(dt)
            losses.append(float(train_loss.mean()))
    med = statistics.median(step_s)
    return {
        "impl": "byzfl", "attack": attack, "byzfl_attack": byz_name,
        "algorithm": "DSGD" if local_steps is None else "FedAvg", "local_steps": local_steps,
        "byzfl_attack_parameters": byz_params, "aggregator": "NNM(f=4) then TrMean(f=4)",
        "model": "cnn_mnist", "n": n, "f": f, "honest": honest, "alpha": alpha,
        "batch_size": batch_size, "data_distribution_seed": dd_seed,
        "client_sizes": sizes, "warmup_steps": warmup, "timed_steps": steps,
        "setup_s": setup_s, "batch_prefetch_s": load_s,
        "step_samples_s": step_s, "s_per_step": med, "s_per_step_mean": statistics.fmean(step_s),
        "s_per_step_min": min(step_s), "steps_per_s": 1.0 / med,
        "phase_median_s": {k: statistics.median(v) for k, v in phases.items()},
        "phase_mean_s": {k: statistics.fmean(v) for k, v in phases.items()},
        "train_loss": losses, "torch_threads": torch.get_num_threads(),
        "loadavg_after": list(os.getloadavg()),
    }


# --------------------------------------------------------------------------- report
#: The most a vmapped seed-step may cost, as a share of one run's step.
SEED_SHARE = 0.6


def targets(results: dict) -> list[dict]:
    ok = [r for r in results["nnmjax"] if "s_per_step" in r]
    ours1 = {r["attack"]: r for r in ok if r["vmapped_seeds"] == 1}
    ours5 = {r["attack"]: r for r in ok if r["vmapped_seeds"] > 1}
    byz = {r["attack"]: r for r in results.get("byzfl", []) if "s_per_step" in r}
    out = []
    fedavg = results.get("local_steps") is not None
    needs = ((("alie", 3.0), ("optimal_alie", 3.0)) if fedavg
             else (("optimal_alie", 6.0), ("alie", 3.0)))
    what = f"a round of {results.get('local_steps')} local steps" if fedavg else "a step"
    for attack, need in needs:
        t = {"target": f"{attack}: {what} costs >= {need:g}x less than ByzFL's",
             "ratio": None, "need": need, "met": None}
        if attack in ours1 and attack in byz:
            ratio = byz[attack]["s_per_step"] / ours1[attack]["s_per_step"]
            t.update(ratio=ratio, met=ratio >= need)
        out.append(t)
    for attack in ATTACKS:
        if attack not in ours1 and attack not in ours5:
            continue
        k = ours5[attack]["vmapped_seeds"] if attack in ours5 else "k"
        t = {"target": f"{attack}: {k} vmapped seeds cost at most {SEED_SHARE:g}x one run "
                       "per seed-step", "ratio": None, "need": SEED_SHARE, "met": None}
        if attack in ours1 and attack in ours5:
            a, b = ours5[attack]["s_per_seed_step"], ours1[attack]["s_per_step"]
            t.update(ratio=a / b, met=a <= SEED_SHARE * b)
        out.append(t)
    return out


def format_table(results: dict) -> str:
    rows = [("implementation", "attack", "seeds", "s/step", "steps/s", "s/seed-step",
             "compile s", "x vs ByzFL")]
    byz = {r["attack"]: r for r in results.get("byzfl", []) if "s_per_step" in r}
    for r in results["nnmjax"]:
        if "s_per_step" not in r:
            rows.append(("nnmjax", r["attack"], str(r["vmapped_seeds"]), "error", "", "", "",
                         r.get("error", "")[:40]))
            continue
        ratio = (f"{byz[r['attack']]['s_per_step'] / r['s_per_step']:.1f}x"
                 if r["attack"] in byz and r["vmapped_seeds"] == 1 else "")
        rows.append(("nnmjax", r["attack"], str(r["vmapped_seeds"]), f"{r['s_per_step']:.4f}",
                     f"{r['steps_per_s']:.2f}", f"{r['s_per_seed_step']:.4f}",
                     f"{r['compile_s']:.1f}", ratio))
    for r in results.get("byzfl", []):
        if "s_per_step" not in r:
            rows.append(("byzfl", r["attack"], "1", "error", "", "", "", r.get("error", "")[:40]))
            continue
        rows.append((f"byzfl {r['byzfl_attack']}", r["attack"], "1", f"{r['s_per_step']:.4f}",
                     f"{r['steps_per_s']:.2f}", f"{r['s_per_step']:.4f}", "-", "1.0x"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in results.get("byzfl", []):
        if "phase_median_s" in r:
            ph = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in r["phase_median_s"].items())
            lines.append(f"ByzFL {r['byzfl_attack']} phases (median): {ph}")
    for r in results["nnmjax"] + results.get("byzfl", []):
        if "error" in r:
            lines.append(f"{r['impl']} {r['attack']} x{r.get('vmapped_seeds', 1)}: {r['error']}"
                         f" (peak RSS {r.get('max_rss_gb')} GB)")
    for t in results["targets"]:
        met = {True: "MET", False: "NOT MET", None: "not measured"}[t["met"]]
        ratio = "" if t["ratio"] is None else f" (ratio {t['ratio']:.2f}, need {t['need']:g})"
        lines.append(f"target: {t['target']}: {met}{ratio}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="steps per timed chunk (default 30)")
    p.add_argument("--repeats", type=int, default=3, help="timed chunks per case (default 3)")
    p.add_argument("--budget-s", type=float, default=300.0,
                   help="stop timing a case's chunks once they took this long, after at "
                        "least one (default 300)")
    p.add_argument("--seeds", type=int, default=5, help="vmapped seeds for case (c) (default 5)")
    p.add_argument("--byzfl-steps", type=int, default=30,
                   help="timed ByzFL steps per attack (default 30)")
    p.add_argument("--byzfl-warmup", type=int, default=2, help="untimed ByzFL steps (default 2)")
    p.add_argument("--no-byzfl", action="store_true", help="skip ByzFL even if importable")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 3 steps, 1 repeat, 2 vmapped seeds, 2 ByzFL steps")
    p.add_argument("--attacks", default=",".join(ATTACKS), help="comma list (default both)")
    p.add_argument("--model", default=MODELS[0], choices=MODELS,
                   help="our model (default byzfl_cnn_mnist, the network ByzFL's side trains; "
                        "paper_cnn: the paper's narrower CNN, 176,050 against 431,080 "
                        "parameters)")
    p.add_argument("--local-steps", type=int, default=None, metavar="K",
                   help="time robust FedAvg rounds of K local steps on both sides instead of "
                        "D-SHB steps")
    p.add_argument("--data-dir", default=None,
                   help=f"Fashion-MNIST IDX files (default: nnmjax's search, {DEFAULT_DATA_DIR})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config overrides (TOML literals)")
    p.add_argument("--no-isolate", action="store_true",
                   help="run every case in this process (default: one child process per "
                        "case, so that a case killed for memory is recorded, not fatal)")
    p.add_argument("--mem-limit-gb", type=float, default=None,
                   help="address-space limit of each case's child process, so that a case "
                        "that needs more fails alone instead of waking the OOM killer "
                        "(default: 80%% of MemAvailable at start; 0: none)")
    p.add_argument("--out", default=None,
                   help="JSON path (default benchmarks/results/training-<backend>.json)")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: child process
    return p


def _config(args):
    from nnmjax.experiments.config import load_config

    overrides = list(SETTING) + [f"model='{args.model}'"]
    if args.local_steps is not None:
        overrides += ["algorithm='fedavg'", f"local_steps={args.local_steps}", "lr=0.1",
                      "lr_schedule='constant'", "clip=false"]
    overrides += list(args.set)
    if args.data_dir:
        overrides.append(f"data_dir='{args.data_dir}'")
    return load_config(None, overrides), overrides


_DATASET = {}


def run_case(args, case: dict) -> dict:
    """Measure one case (``{"impl": "nnmjax"|"byzfl", "attack": ..., "seeds": [...]}``)
    in this process."""
    import resource

    config, _ = _config(args)
    if case["impl"] == "nnmjax":
        if "ds" not in _DATASET:
            _DATASET["ds"] = config.load_data()
        r = time_nnmjax(config, case["attack"], case["seeds"], args.steps, args.repeats,
                        _DATASET["ds"], args.budget_s)
    else:
        r = time_byzfl(case["attack"], args.byzfl_steps, args.byzfl_warmup,
                       args.data_dir or _fashion_dir(config), n=config.n, f=config.f,
                       alpha=config.alpha, batch_size=config.batch_size,
                       local_steps=args.local_steps)
    r["max_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return r


_MARK = "TRAINING-CASE-RESULT "


def _mem_available_gb():
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def run_case_isolated(argv: list[str], case: dict, mem_limit_gb: float | None = None) -> dict:
    """:func:`run_case` in a child process (address space capped at ``mem_limit_gb``);
    a crash, kill or out-of-memory error becomes an error record."""
    import resource
    import subprocess

    def limit():
        if mem_limit_gb:
            b = int(mem_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (b, b))

    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--case", json.dumps(case)]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read()
    for line in text.splitlines():
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK):])
    rc = proc.returncode
    oom = any(m in text for m in ("RESOURCE_EXHAUSTED", "MemoryError", "Out of memory",
                                  "out of memory", "std::bad_alloc"))
    if oom:
        why = "out of memory" + (f" under the child's address-space limit of {mem_limit_gb:g} GB"
                                 if mem_limit_gb else "")
    elif rc < 0:
        why = f"killed by signal {-rc}" + (" (SIGKILL: most likely the kernel's OOM killer)"
                                           if rc == -9 else "")
    else:
        last = [line for line in text.strip().splitlines() if line.strip()][-1:]
        why = f"exit {rc}" + (f": {last[0][:200]}" if last else "")
    return {"impl": case["impl"], "attack": case["attack"],
            "vmapped_seeds": len(case.get("seeds", [1])), "seeds": case.get("seeds", [1]),
            "error": why, "returncode": rc, "mem_limit_gb": mem_limit_gb,
            "max_rss_gb": round(usage.ru_maxrss / 2**20, 2),
            "output_tail": text[-2000:]}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.seeds = 3, 1, 2
        args.byzfl_steps, args.byzfl_warmup = 2, 1
    if args.mem_limit_gb is None:
        avail = _mem_available_gb()
        args.mem_limit_gb = round(0.8 * avail, 1) if avail else 0.0
    if args.case is not None:  # child process: measure one case, print it, exit
        print(_MARK + json.dumps(run_case(args, json.loads(args.case))), flush=True)
        return 0
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]

    import jax

    config, overrides = _config(args)
    machine = machine_info()
    print(f"machine: {machine['processor']}, {machine['cpu_count']} cpus, jax {machine['jax']} "
          f"({machine['jax_backend']}, {machine['device_kind']}), byzfl {machine['byzfl']}, "
          f"torch {machine['torch']} ({machine['torch_threads']} threads), "
          f"load {machine['loadavg_at_start']}", flush=True)

    byzfl_ok = False
    if not args.no_byzfl:
        try:
            import byzfl  # noqa: F401

            byzfl_ok = True
        except Exception as e:  # noqa: BLE001
            print(f"ByzFL not importable ({e!r}); skipping it")

    kind = "training" if args.local_steps is None else f"training-fedavg{args.local_steps}"
    out = Path(args.out) if args.out else HERE / "results" / f"{kind}-{jax.default_backend()}.json"
    results: dict = {"nnmjax": [], "byzfl": [], "local_steps": args.local_steps}
    record = {
        "schema": SCHEMA, "machine": machine,
        "config": {"argv": argv, "steps": args.steps, "repeats": args.repeats,
                   "budget_s": args.budget_s, "vmapped_seeds": args.seeds,
                   "byzfl_steps": args.byzfl_steps, "byzfl_warmup": args.byzfl_warmup,
                   "quick": args.quick, "byzfl": byzfl_ok, "isolate": not args.no_isolate,
                   "mem_limit_gb": None if args.no_isolate else args.mem_limit_gb,
                   "rule": RULE, "attacks": attacks, "overrides": overrides,
                   "nnmjax_config": {k: (list(v) if isinstance(v, tuple) else v)
                                     for k, v in config.__dict__.items()}},
        "complete": False, **results,
    }

    # Compared cases run back to back (k seeds, 1 seed, ByzFL; then ByzFL, 1 seed, k seeds
    # for the next attack), so that drifting load from other processes skews ratios least.
    cases = []
    for i, attack in enumerate(attacks):
        group = [{"impl": "nnmjax", "attack": attack, "seeds": list(range(1, args.seeds + 1))},
                 {"impl": "nnmjax", "attack": attack, "seeds": [1]}]
        if byzfl_ok:
            group.append({"impl": "byzfl", "attack": attack})
        cases += group if i % 2 == 0 else group[::-1]
    child_argv = [a for a in argv if a != "--quick"]
    if args.quick:
        child_argv += ["--steps", "3", "--repeats", "1", "--byzfl-steps", "2",
                       "--byzfl-warmup", "1"]
    for case in cases:
        label = (f"nnmjax {case['attack']} x{len(case['seeds'])} seeds"
                 if case["impl"] == "nnmjax" else f"byzfl {BYZFL_ATTACKS[case['attack']][0]}")
        print(f"{label} ...", end=" ", flush=True)
        if args.no_isolate:
            try:
                r = run_case(args, case)
            except Exception as e:  # noqa: BLE001 - report, keep the other numbers
                r = {"impl": case["impl"], "attack": case["attack"],
                     "vmapped_seeds": len(case.get("seeds", [1])), "error": repr(e)}
        else:
            r = run_case_isolated(child_argv, case, args.mem_limit_gb)
        if "error" in r:
            print(f"failed: {r['error']} (peak RSS {r.get('max_rss_gb')} GB)", flush=True)
        elif case["impl"] == "nnmjax":
            print(f"{r['s_per_step']:.4f} s/step ({r['s_per_seed_step']:.4f} s/seed-step), "
                  f"first chunk {r['first_chunk_s']:.1f} s, {r['repeats']} timed chunks, "
                  f"peak RSS {r['max_rss_gb']} GB", flush=True)
        else:
            print(f"{r['s_per_step']:.4f} s/step, peak RSS {r['max_rss_gb']} GB", flush=True)
        results[case["impl"]].append(r)
        results["nnmjax"].sort(key=lambda r: (r["vmapped_seeds"], attacks.index(r["attack"])))
        results["byzfl"].sort(key=lambda r: attacks.index(r["attack"]))
        record.update(results, targets=targets(results))
        write_record(out, record)  # after every case: an interrupted run keeps what it measured

    machine["loadavg_at_end"] = list(os.getloadavg())
    record.update(complete=True)
    write_record(out, record)
    print()
    print(format_table(record))
    print(f"\nwrote {out}")
    return 0


def write_record(out, record: dict) -> None:
    """Write a benchmark's JSON record to ``out`` (its folder created), atomically: a
    temporary file, then a rename."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(out)


def interleaved_samples(fns: dict, args, repeats: int) -> dict:
    """``{name: [seconds, ...]}``: each function of ``fns`` called once on ``args`` (warm-up),
    then ``repeats`` rounds calling each in turn, every call timed to completion."""
    import jax

    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    samples = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            samples[k].append(time.perf_counter() - t)
    return samples


def _fashion_dir(config) -> str:
    """The folder nnmjax read Fashion-MNIST from, for ByzFL to read the same files."""
    candidates = [config.data_dir, os.environ.get("NNMJAX_DATA_DIR"), DEFAULT_DATA_DIR]
    for c in candidates:
        if not c:
            continue
        for sub in ("", "fashion_mnist", "fashion-mnist", "FashionMNIST/raw"):
            d = Path(c) / sub
            if all((d / n).is_file() or (d / f"{n}.gz").is_file() for n in FASHION_FILES):
                return str(d)
    raise FileNotFoundError(f"no Fashion-MNIST IDX files found under {candidates}")


if __name__ == "__main__":
    sys.exit(main())
