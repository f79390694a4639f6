"""Experiment configuration: a TOML file -> a validated, frozen :class:`Config`.

Every key is checked before anything is compiled; unknown keys and bad values
raise ``ValueError`` listing what is allowed. ``--set key=value`` overrides take
TOML literals (``--set steps=200 --set 'rules=["nnm+cwtm"]'``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from nnmjax._suggest import did_you_mean
from nnmjax.data import DATASETS, PARTITIONS, SOURCES
from nnmjax.models import MODELS
from nnmjax.optim import federated
from nnmjax.optim.schedules import SCHEDULES
from nnmjax.robust._checks import check_count
from nnmjax.robust.attacks import ATTACKS, SEARCHES, SEARCHING_ATTACKS

__all__ = ["Config", "RunSpec", "load_config", "load_grid", "expand_sweep", "parse_set", "QUICKSTART",
           "ATTACK_NAMES", "format_rule_options"]

#: Every attack a config may name (``attacks``): ``"none"``, the attacks of
#: :data:`nnmjax.robust.attacks.ATTACKS`, and the data attack ``"label_flipping"``.
ATTACK_NAMES = ("none", *ATTACKS, "label_flipping")
#: The algorithms of the simulator: robust D-SHB (Algorithm 3), robust D-GD (Algorithm 1),
#: robust federated averaging (:mod:`nnmjax.sim.fedavg`) and robust decentralized learning
#: (:mod:`nnmjax.sim.decentralized`).
ALGORITHMS = ("dshb", "dgd", "fedavg", "decentralized")
#: The keys of FedAvg (``algorithm = "fedavg"``) and their defaults; other algorithms
#: refuse them set to other values.
FEDAVG_KEYS = {"local_steps": 1, "participation": 1.0, "local_momentum": 0.0,
               "server_lr": 1.0, "server_lr_schedule": "constant"}
#: The keys of decentralized learning (``algorithm = "decentralized"``) and their defaults.
DECENTRALIZED_KEYS = {"topology": "ring", "degree": None, "topology_seed": 0, "adjacency": ()}


@dataclass(frozen=True)
class Config:
    """A grid of runs: every (attack, rule, seed) with the shared settings below.

    Defaults are the paper's MNIST/Fashion-MNIST setting (Table 3) on the embedded
    ``digits`` data with a small model.

    Args:
        **fields: any of the fields below, by name (each is described where it is
            declared); the others keep their defaults.

    Raises:
        ValueError: a field of the wrong type, an unknown name (dataset, model, attack,
            rule, ...) or a value out of range; the message names the key and what is
            allowed.

    Examples:
        >>> from nnmjax.experiments.config import Config
        >>> c = Config(model="logreg", n=5, f=1, attacks=("alie", "sign_flipping"),
        ...            seeds=(1, 2))
        >>> c.honest, c.rule_f, len(c.runs())
        (4, 1, 4)
        >>> Config(n=4, f=2)
        Traceback (most recent call last):
        ...
        ValueError: config key 'f': needs 2f < n; got f=2, n=4
    """

    #: The dataset, ``"digits"`` (embedded, offline), ``"mnist"``, ``"fashion_mnist"`` or
    #: ``"cifar10"`` (:func:`nnmjax.data.load_dataset`).
    dataset: str = "digits"
    #: Directory holding the dataset's files; ``None``: ``NNMJAX_DATA_DIR``, else the system
    #: location. Strict: data missing there is an error, never a fall-back.
    data_dir: str | None = None
    #: Where the dataset's files come from, ``"local"`` (files on disk, see
    #: :func:`nnmjax.data.load_dataset`) or ``"tfds"`` (tensorflow-datasets, the ``tfds``
    #: extra); part of a run's identity only when not the default.
    source: str = "local"
    #: The model (:data:`nnmjax.models.MODELS`): ``paper_cnn``, ``cifar_cnn``, ``mlp``,
    #: ``logreg``, and ByzFL's models (``byzfl_cnn_mnist``, ``resnet18``, ...).
    model: str = "mlp"
    #: ``"dshb"``: robust D-SHB (paper Algorithm 3, worker momentum); ``"dgd"``: robust D-GD
    #: (Algorithm 1); ``"fedavg"``: robust federated averaging (:mod:`nnmjax.sim.fedavg`;
    #: ``steps`` counts rounds).
    algorithm: str = "dshb"
    #: FedAvg: the SGD steps each sampled client takes per round from the global model
    #: (step size ``lr`` on ``lr_schedule`` at the round).
    local_steps: int = 1
    #: FedAvg: the fraction ``p`` of clients sampled each round, in (0, 1]:
    #: ``max(1, floor(p (n - f)))`` honest clients without replacement and ``floor(p f)``
    #: Byzantine ones, whom the rules are told of (:attr:`rule_f`).
    participation: float = 1.0
    #: FedAvg: the clients' SGD momentum within a round (``m <- mu m + g``, ``w <- w - lr
    #: m``, restarted each round); 0: plain SGD, as ByzFL's clients.
    local_momentum: float = 0.0
    #: FedAvg: the server's step size on the robust aggregate of the clients' updates
    #: (1: the aggregate replaces the model's change, as ByzFL).
    server_lr: float = 1.0
    #: FedAvg: the schedule of ``server_lr`` over rounds (as ``lr_schedule``).
    server_lr_schedule: str = "constant"
    #: Decentralized: the nodes' graph, ``"ring"``, ``"torus"`` (the most square ``rows x
    #: cols = n``), ``"complete"``, ``"random_regular"`` (``degree``, ``topology_seed``) or
    #: ``"adjacency"`` (``adjacency``); the last ``f`` nodes are Byzantine and the rules are
    #: told :attr:`rule_f` Byzantine rows per neighbourhood
    #: (:mod:`nnmjax.optim.decentralized`).
    topology: str = "ring"
    #: Decentralized: every node's number of neighbours under ``random_regular``.
    degree: int | None = None
    #: Decentralized: the seed of the ``random_regular`` graph.
    topology_seed: int = 0
    #: Decentralized: a user-given ``n x n`` 0/1 adjacency matrix (TOML array of arrays;
    #: symmetric, zero diagonal, regular, connected) under ``topology = "adjacency"``.
    adjacency: tuple = ()
    #: Number of workers, honest and Byzantine.
    n: int = 17
    #: Number of Byzantine workers (``2f < n``); ``n - f`` are honest.
    f: int = 4
    #: The ``f`` the rules are told (ByzFL's ``tolerated_f``); ``None``: the actual ``f``.
    #: Over- or under-estimating the number of Byzantine workers; part of a run's identity
    #: only when set to another value than ``f``.
    tolerated_f: int | None = None
    #: How the training set is split over the honest workers, ``"dirichlet"`` (per-worker
    #: Dir(``alpha``) class proportions, as in the paper), ``"dirichlet_per_class"`` (as
    #: ByzFL), ``"iid"``, ``"gamma_similarity"`` or ``"extreme"``.
    partition: str = "dirichlet"
    #: The Dirichlet concentration of the ``dirichlet`` partitions (smaller: more
    #: heterogeneous).
    alpha: float = 0.1
    #: The ``gamma_similarity`` partition's i.i.d. fraction, in [0, 1] (the rest is split by
    #: label into contiguous shards; 1: i.i.d.).
    gamma: float = 0.5
    #: The attacks, one run each (:data:`ATTACK_NAMES`; ``"none"``: no Byzantine rows are
    #: injected; ``"label_flipping"`` is a data attack).
    attacks: tuple[str, ...] = ("optimal_alie",)
    #: The optimal attacks' search for ``eta``: ``"grid"`` (241 candidates, refined) or
    #: ``"byzfl"`` (ByzFL's 20-evaluation line search); part of a run's identity only when
    #: not the default.
    attack_search: str = "grid"
    #: The robust rules, one run each, named ``pre+...+aggregator`` (:func:`nnmjax.robust.rules.rule`).
    rules: tuple[str, ...] = ("nnm+cwtm",)
    #: Options of rule stages, applied in every rule that has the stage (TOML
    #: ``rule_options = {gm = {nu = 0.1, max_iter = 3}, clipping = {c = 1.0}}``; ByzFL's
    #: aggregator/pre-aggregator ``parameters``); stored as sorted ``(stage, ((option,
    #: value), ...))`` pairs. Part of a run's identity only when set.
    rule_options: tuple = ()
    #: The seeds, one run each (vmapped together in one compiled program).
    seeds: tuple[int, ...] = (1,)
    #: The seed of the data partition (ByzFL's ``data_distribution_seed``); ``None``: each
    #: run's ``seed``, which otherwise draws the model's initialisation, the minibatches
    #: and the attacks' randomness. Sweep it to separate the two sources of variance; part
    #: of a run's identity only when set.
    data_seed: int | None = None
    #: Training steps per run (T).
    steps: int = 800
    #: Minibatch size per worker per step (b).
    batch_size: int = 25
    #: The base learning rate of :attr:`lr_schedule`.
    lr: float = 0.75
    #: ``"paper_mnist"``: ``lr / (1 + floor(t / 50))`` (Table 3); ``"paper_cifar"``: ``lr``
    #: then ``lr / 10`` from step 1500; ``"constant"``.
    lr_schedule: str = "paper_mnist"
    #: The workers' momentum ``beta`` of D-SHB, ``m_i <- beta m_i + (1 - beta) g_i``.
    momentum: float = 0.9
    #: Per-worker gradient clipping to this norm; ``None`` (TOML ``clip = false``): none.
    clip: float | None = 2.0
    #: The l2 regularisation weight; each worker's loss adds ``weight_decay / 2 * ||params||^2``.
    weight_decay: float = 1e-4
    #: Steps between test-accuracy evaluations (where checkpoints are saved).
    eval_every: int = 50
    #: Also run the fault-free baseline, ``mean`` over the ``n - f`` honest workers, no attack.
    baseline: bool = False
    #: Expand the training set with horizontally flipped images.
    augment_flip: bool = False
    #: Devices to run on, ``(("runs", r), ("workers", w))``: the seeds of each compiled
    #: program split over ``r`` devices and its workers (their data, gradients and the
    #: aggregation's columns) over ``w`` (TOML ``mesh = {runs = 2, workers = 4}``; either
    #: may be left out). Not part of a run's identity.
    mesh: tuple = ()

    def __post_init__(self):
        _validate(self)
        if self.tolerated_f == self.f:  # the same experiment as leaving it unset: same identity
            object.__setattr__(self, "tolerated_f", None)

    @property
    def data_source(self) -> tuple:
        """``(dataset, data_dir, augment_flip, source)``: what :meth:`load_data` reads; runs
        with the same one share the loaded data.

        Examples:
            >>> from nnmjax.experiments.config import Config
            >>> Config().data_source
            ('digits', None, False, 'local')
        """
        return (self.dataset, self.data_dir, self.augment_flip, self.source)

    def load_data(self):
        """The config's :class:`nnmjax.data.Dataset` (:func:`nnmjax.data.load_dataset`).

        Returns:
            The preprocessed :class:`nnmjax.data.Dataset` of :attr:`data_source`.

        Raises:
            nnmjax.data.DatasetNotFoundError: the dataset's files are not where
                :attr:`data_dir` (or the default locations) says.
            ImportError: ``source = "tfds"`` without ``tensorflow_datasets``.

        Examples:
            >>> from nnmjax.experiments.config import Config
            >>> ds = Config().load_data()
            >>> ds.name, ds.x_train.shape, ds.num_classes
            ('digits', (1437, 8, 8, 1), 10)
        """
        from nnmjax.data import load_dataset

        return load_dataset(self.dataset, data_dir=self.data_dir, source=self.source,
                            augment_flip=self.augment_flip)

    @property
    def honest(self) -> int:
        """The number of honest workers, ``n - f``.

        Examples:
            >>> from nnmjax.experiments.config import Config
            >>> Config(n=17, f=4).honest
            13
        """
        return self.n - self.f

    @property
    def round_sizes(self) -> tuple[int, int]:
        """``(honest, byzantine)`` workers whose rows reach the server each step:
        ``(n - f, f)``, or under FedAvg the round's sampled clients
        (:func:`nnmjax.optim.federated.round_sizes` of :attr:`participation`).

        Examples:
            >>> from nnmjax.experiments.config import Config
            >>> Config(n=17, f=4).round_sizes
            (13, 4)
            >>> Config(n=17, f=4, algorithm="fedavg", participation=0.5).round_sizes
            (6, 2)
        """
        if self.algorithm != "fedavg":
            return self.honest, self.f
        return federated.round_sizes(self.honest, self.f, self.participation)

    @property
    def rule_f(self) -> int:
        """The ``f`` the robust rules are built with: :attr:`tolerated_f`, else :attr:`f`;
        under FedAvg, ``floor(participation f)`` of it.

        Examples:
            >>> from nnmjax.experiments.config import Config
            >>> Config(f=4).rule_f, Config(f=4, tolerated_f=6).rule_f
            (4, 6)
            >>> Config(f=4, algorithm="fedavg", participation=0.5).rule_f
            2
        """
        f = self.f if self.tolerated_f is None else self.tolerated_f
        return f if self.algorithm != "fedavg" else int(self.participation * f)

    def graph(self):
        """The nodes' graph under decentralized learning
        (:func:`nnmjax.optim.decentralized.make_topology` of ``topology``, ``degree``,
        ``topology_seed``, ``adjacency``), ``None`` for the other algorithms.

        Examples:
            >>> from nnmjax.experiments.config import Config
            >>> c = Config(algorithm="decentralized", topology="torus", n=16, f=2,
            ...            tolerated_f=2)
            >>> c.graph().degree, Config().graph() is None
            (4, True)
        """
        if self.algorithm != "decentralized":
            return None
        from nnmjax.optim.decentralized import make_topology

        return make_topology(self.topology, self.n, degree=self.degree, seed=self.topology_seed,
                             adjacency=self.adjacency or None)

    def build_rule(self, name: str):
        """The :class:`nnmjax.robust.rules.Rule` ``name`` for :attr:`rule_f` inputs, with the
        :attr:`rule_options` of its stages.

        Args:
            name: the rule, ``pre+...+aggregator`` (:func:`nnmjax.robust.rules.rule`).

        Returns:
            The :class:`nnmjax.robust.rules.Rule`.

        Raises:
            ValueError: an unknown stage or option, or ``rule_f`` too large for the rule.

        Examples:
            >>> from nnmjax.experiments.config import Config
            >>> c = Config(rules=("nnm+gm",), rule_options=(("gm", (("max_iter", 3),)),))
            >>> c.build_rule("nnm+gm")
            rule('nnm+gm', f=4, max_iter=3)
        """
        from nnmjax.robust.rules import rule as make_rule

        options = {stage: dict(opts) for stage, opts in self.rule_options}
        *pre, last = name.split("+")
        pre_options = {p: options[p] for p in pre if p in options}
        return make_rule(name, self.rule_f, pre_options=pre_options, **options.get(last, {}))

    def runs(self) -> list["RunSpec"]:
        """Every (attack, rule, seed) of the grid, plus the fault-free mean baseline.

        Returns:
            One :class:`RunSpec` per run, attack-major, then rule, then seed; with
            :attr:`baseline`, one ``("none", "mean")`` run per seed on the ``n - f`` honest
            workers last (decentralized: the same graph of ``n`` nodes, all honest).

        Examples:
            >>> from nnmjax.experiments.config import Config
            >>> c = Config(n=5, f=1, attacks=("alie",), rules=("cwtm", "nnm+cwtm"),
            ...            baseline=True)
            >>> [(s.attack, s.rule, s.config.n, s.config.f) for s in c.runs()]
            [('alie', 'cwtm', 5, 1), ('alie', 'nnm+cwtm', 5, 1), ('none', 'mean', 4, 0)]
        """
        specs = [RunSpec(self, a, r, s) for a in self.attacks for r in self.rules for s in self.seeds]
        if self.baseline:
            # decentralized: the same graph with every node honest
            n = self.n if self.algorithm == "decentralized" else self.honest
            base = dataclasses.replace(self, f=0, n=n, tolerated_f=None, rule_options=())
            specs += [RunSpec(base, "none", "mean", s)
                      for s in self.seeds]
        return specs


@dataclass(frozen=True)
class RunSpec:
    """One run of a grid: the shared config with one attack, rule and seed.

    Args:
        config: the grid's :class:`Config`.
        attack: the run's attack, one of ``config.attacks`` (or ``"none"``).
        rule: the run's robust rule, one of ``config.rules`` (or ``"mean"``).
        seed: the run's seed, one of ``config.seeds``.

    Examples:
        >>> from nnmjax.experiments.config import Config
        >>> spec = Config(attacks=("alie",), seeds=(3,)).runs()[0]
        >>> spec.attack, spec.rule, spec.seed
        ('alie', 'nnm+cwtm', 3)
    """

    config: Config
    attack: str
    rule: str
    seed: int

    def record_key(self) -> dict[str, Any]:
        """The run's full config key, as stored in its record (``key``).

        The config's fields without the grid's lists (``attacks``, ``rules``, ``seeds``),
        ``baseline`` and ``mesh``, and without the optional fields left at their defaults
        (``tolerated_f``, ``data_seed``, ``rule_options``, ``source``, ``attack_search``),
        plus the run's ``attack``, ``rule`` and ``seed``.

        Returns:
            A JSON-able ``dict``; ``rule_options``, when set, as one string
            (:func:`format_rule_options`).

        Examples:
            >>> from nnmjax.experiments.config import Config
            >>> key = Config(attacks=("alie",)).runs()[0].record_key()
            >>> key["attack"], key["rule"], key["seed"], key["n"], "attacks" in key
            ('alie', 'nnm+cwtm', 1, 17, False)
        """
        base = dataclasses.asdict(self.config)
        for k in ("attacks", "rules", "seeds", "baseline", "mesh"):
            base.pop(k)
        if base["algorithm"] != "fedavg":  # runs of the other algorithms keep their hashes
            for k in FEDAVG_KEYS:
                base.pop(k)
        if base["algorithm"] != "decentralized":
            for k in DECENTRALIZED_KEYS:
                base.pop(k)
        elif not base["adjacency"]:
            base.pop("adjacency")
        for k in ("tolerated_f", "data_seed", "rule_options"):  # unset, runs keep the
            if base[k] in (None, ()):                             # hashes they had before
                base.pop(k)
        if base["source"] == "local":
            base.pop("source")
        if base["attack_search"] == "grid" or self.attack not in SEARCHING_ATTACKS:
            base.pop("attack_search")
        if "rule_options" in base:  # one string, e.g. "gm(max_iter=3, nu=0.1)"
            base["rule_options"] = format_rule_options(self.config.rule_options)
        return {**base, "attack": self.attack, "rule": self.rule, "seed": self.seed}

    def hash(self) -> str:
        """The run's identity: the first 16 hex digits of the SHA-256 of
        :meth:`record_key` as sorted JSON; its record is ``runs/<hash>.json``.

        Returns:
            A 16-character hexadecimal string.

        Examples:
            >>> from nnmjax.experiments.config import Config
            >>> a, b = Config(seeds=(1, 2)).runs()
            >>> len(a.hash()), a.hash() == b.hash()
            (16, False)
            >>> Config(seeds=(1,), mesh=(("runs", 1),)).runs()[0].hash() == a.hash()
            True
        """
        blob = json.dumps(self.record_key(), sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def format_rule_options(rule_options) -> str:
    """``(("gm", (("max_iter", 3), ("nu", 0.1))),)`` -> ``"gm(max_iter=3, nu=0.1)"``.

    Args:
        rule_options: ``(stage, ((option, value), ...))`` pairs, as
            :attr:`Config.rule_options` holds them.

    Returns:
        The stages as ``stage(option=value, ...)``, joined by ``"; "`` (``""`` for none).

    Examples:
        >>> from nnmjax.experiments.config import format_rule_options
        >>> format_rule_options((("clipping", (("c", 1.0),)), ("gm", (("max_iter", 3),))))
        'clipping(c=1.0); gm(max_iter=3)'
    """
    return "; ".join(f"{stage}(" + ", ".join(f"{k}={v!r}" for k, v in opts) + ")"
                     for stage, opts in rule_options)


def _fail(key, msg):
    raise ValueError(f"config key {key!r}: {msg}")


def _type_name(hint: str) -> str:
    return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
            "tuple[str, ...]": "a list of strings", "tuple[int, ...]": "a list of integers"}[hint]


def _has_type(value, hint: str) -> bool:
    if hint == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if hint == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint == "str":
        return isinstance(value, str)
    if hint == "bool":
        return isinstance(value, bool)
    item = hint[len("tuple["):-len(", ...]")]
    return isinstance(value, tuple) and all(_has_type(v, item) for v in value)


def _check_types(c: Config):
    """Every key against its annotation (``X | None`` also takes ``None``; a float takes an
    integer, never ``nan`` or ``inf``), before any range check compares values."""
    for field in dataclasses.fields(Config):
        if field.name in ("rule_options", "mesh", "adjacency"):  # checked in full later
            continue
        hint, value = str(field.type), getattr(c, field.name)
        optional = hint.endswith(" | None")
        hint = hint.removesuffix(" | None")
        if optional and value is None or _has_type(value, hint):
            continue
        kind = _type_name(hint) + (" (or omitted)" if optional else "")
        finite = " finite" if hint == "float" and isinstance(value, float) else ""
        _fail(field.name, f"must be {kind}{finite}; got {value!r} ({type(value).__name__})")


def _choice(key, value, choices):
    if value not in choices:
        _fail(key, f"unknown {value!r}{did_you_mean(value, choices)}; choose from {list(choices)}")


def _algorithm_keys(c: Config, algorithm: str, keys: dict) -> bool:
    """Whether ``c`` runs ``algorithm``; if not, refuse its ``keys`` set off their defaults."""
    if c.algorithm == algorithm:
        return True
    for key, default in keys.items():
        if getattr(c, key) != default:
            _fail(key, f"is a key of algorithm = {algorithm!r} only; got {getattr(c, key)!r} "
                       f"with algorithm = {c.algorithm!r}")
    return False


def _refuse_worker_mesh(c: Config):
    if dict(c.mesh).get("workers", 1) > 1:
        _fail("mesh", f"algorithm = {c.algorithm!r} splits runs over devices, not workers; "
                      f"got {dict(c.mesh)}")


def _validate_decentralized(c: Config):
    if not _algorithm_keys(c, "decentralized", DECENTRALIZED_KEYS):
        return
    from nnmjax.optim.decentralized import TOPOLOGIES, check_neighbourhood_f

    _choice("topology", c.topology, TOPOLOGIES)
    try:
        graph = c.graph()
    except ValueError as e:
        key = {"random_regular": "degree", "adjacency": "adjacency"}.get(c.topology, "topology")
        _fail("topology" if "is for" in str(e) else key, str(e))
    try:
        check_neighbourhood_f(graph, c.rule_f)
    except ValueError as e:
        _fail("tolerated_f" if c.tolerated_f is not None else "f",
              f"{e}; set tolerated_f to the rules' f per neighbourhood")
    for a in c.attacks:
        if a in ("label_flipping", "mimic"):
            _fail("attacks", f"{a!r} is not run under algorithm = 'decentralized' (label "
                             "flipping trains Byzantine nodes; Mimic keeps one state per "
                             "receiving node)")
    _refuse_worker_mesh(c)


def _validate_fedavg(c: Config):
    if not _algorithm_keys(c, "fedavg", FEDAVG_KEYS):
        return
    if isinstance(c.local_steps, bool) or not isinstance(c.local_steps, int) or c.local_steps < 1:
        _fail("local_steps", f"must be a positive integer; got {c.local_steps!r}")
    if not 0 < c.participation <= 1:
        _fail("participation", f"must be in (0, 1]; got {c.participation!r}")
    if not 0.0 <= c.local_momentum < 1.0:
        _fail("local_momentum", f"must be in [0, 1); got {c.local_momentum!r}")
    if not c.server_lr > 0:
        _fail("server_lr", f"must be > 0; got {c.server_lr!r}")
    _choice("server_lr_schedule", c.server_lr_schedule, SCHEDULES)
    if 2 * c.f < c.n:
        m_h, m_b = c.round_sizes
        if 2 * m_b >= m_h + m_b:
            _fail("participation", f"a round of {m_h} honest and {m_b} Byzantine clients "
                                   f"needs 2 f < n; raise participation or n")
    _refuse_worker_mesh(c)


def _validate(c: Config):
    _check_types(c)
    _choice("dataset", c.dataset, DATASETS)
    _choice("model", c.model, MODELS)
    _choice("source", c.source, SOURCES)
    if c.source == "tfds" and c.dataset == "digits":
        _fail("source", "'digits' is bundled with scikit-learn; 'tfds' serves mnist, "
                        "fashion_mnist and cifar10")
    _choice("algorithm", c.algorithm, ALGORITHMS)
    _validate_fedavg(c)
    _choice("partition", c.partition, PARTITIONS)
    _choice("lr_schedule", c.lr_schedule, SCHEDULES)
    for key in ("n", "steps", "batch_size", "eval_every"):
        v = getattr(c, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            _fail(key, f"must be a positive integer; got {v!r}")
    check_count(c.f, name="config key 'f':")
    if c.tolerated_f is not None:
        check_count(c.tolerated_f, name="config key 'tolerated_f':")
    if 2 * c.f >= c.n:
        _fail("f", f"needs 2f < n; got f={c.f}, n={c.n}")
    t = c.tolerated_f
    if t is not None and 2 * t >= c.n:
        _fail("tolerated_f", f"must be an integer with 0 <= tolerated_f and 2 tolerated_f < n "
                             f"(n={c.n}), or omitted; got {t!r}")
    _validate_decentralized(c)
    if not c.alpha > 0:
        _fail("alpha", f"must be > 0; got {c.alpha!r}")
    if not 0.0 <= c.gamma <= 1.0:
        _fail("gamma", f"must be in [0, 1]; got {c.gamma!r}")
    if not c.lr > 0:
        _fail("lr", f"must be > 0; got {c.lr!r}")
    if not 0.0 <= c.momentum < 1.0:
        _fail("momentum", f"must be in [0, 1); got {c.momentum!r}")
    if c.clip is not None and (isinstance(c.clip, bool) or not c.clip > 0):
        _fail("clip", f"must be > 0, or false for no clipping; got {c.clip!r}")
    if not c.weight_decay >= 0:
        _fail("weight_decay", f"must be >= 0; got {c.weight_decay!r}")
    for key in ("attacks", "rules", "seeds"):
        v = getattr(c, key)
        if not isinstance(v, tuple) or not v:
            _fail(key, "must be a non-empty list")
    _choice("attack_search", c.attack_search, SEARCHES)
    for a in c.attacks:
        _choice("attacks", a, ATTACK_NAMES)
    if not (isinstance(c.rule_options, tuple) and all(
            isinstance(p, tuple) and len(p) == 2 and isinstance(p[1], tuple)
            for p in c.rule_options)):
        _fail("rule_options", "must be (stage, ((option, value), ...)) pairs (TOML tables "
                              f"become them in from_mapping); got {c.rule_options!r}")
    for r in c.rules:
        try:
            c.build_rule(r)
        except ValueError as e:
            _fail("rule_options" if c.rule_options and "option" in str(e) else "rules", str(e))
    for stage, _ in c.rule_options:
        if not any(stage in r.split("+") for r in c.rules):
            _fail("rule_options", f"{stage!r} is a stage of none of the rules {list(c.rules)}")
    for s in c.seeds:
        if isinstance(s, bool) or not isinstance(s, int):
            _fail("seeds", f"must be integers; got {s!r}")
    if c.data_seed is not None and (isinstance(c.data_seed, bool) or not isinstance(c.data_seed, int)):
        _fail("data_seed", f"must be an integer or omitted; got {c.data_seed!r}")
    for axis, size in c.mesh:
        if axis not in ("runs", "workers"):
            _fail("mesh", f"unknown axis {axis!r}; the simulator's mesh has 'runs' and 'workers'")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            _fail("mesh", f"{axis} must be a positive integer; got {size!r}")


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(key: str, value: Any):
    if key not in _FIELDS:
        raise ValueError(f"unknown config key {key!r}{did_you_mean(key, _FIELDS)}; valid keys: "
                         f"{sorted(_FIELDS)}")
    default = _FIELDS[key].default
    if key == "rule_options":
        if not isinstance(value, dict) or not all(isinstance(o, dict) for o in value.values()):
            _fail(key, f"must be a table of tables such as {{gm = {{nu = 0.1}}}}; got {value!r}")
        for stage, opts in value.items():
            for k, v in opts.items():
                if not isinstance(v, (bool, int, float, str)):
                    _fail(key, f"{stage}.{k} must be a number, a boolean or a string; got {v!r}")
        return tuple(sorted((stage, tuple(sorted(opts.items())))
                            for stage, opts in value.items() if opts))
    if key == "clip" and value is False:  # TOML has no null: ``clip = false`` turns it off
        return None
    if key == "mesh":
        if not isinstance(value, dict):
            _fail("mesh", f"must be a table such as {{runs = 2, workers = 4}}; got {value!r}")
        return tuple(sorted(value.items()))
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            _fail(key, f"must be a list; got {value!r}")
        if key == "adjacency":
            if not all(isinstance(row, (list, tuple)) for row in value):
                _fail(key, f"must be an array of arrays (rows of 0/1); got {value!r}")
            return tuple(tuple(row) for row in value)
        return tuple(value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def from_mapping(data: dict[str, Any]) -> Config:
    """Build a :class:`Config` from a mapping (e.g. a parsed TOML file).

    Args:
        data: config keys to values as TOML gives them: lists for the tuple fields,
            tables for ``rule_options`` and ``mesh``, ``clip = false`` for no clipping.

    Returns:
        The validated :class:`Config`.

    Raises:
        ValueError: an unknown key (with a suggestion) or a bad value.

    Examples:
        >>> from nnmjax.experiments.config import from_mapping
        >>> c = from_mapping({"rules": ["nnm+gm"], "clip": False,
        ...                   "rule_options": {"gm": {"max_iter": 3}}})
        >>> c.rules, c.clip, c.rule_options
        (('nnm+gm',), None, (('gm', (('max_iter', 3),)),))
    """
    return Config(**{k: _coerce(k, v) for k, v in data.items()})


def parse_set(items: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` overrides whose values are TOML literals (bare words are strings).

    Args:
        items: the ``--set`` arguments, ``"key=value"`` each.

    Returns:
        ``{key: value}``, later items overriding earlier ones; keys are not checked here.

    Raises:
        ValueError: an item without ``=``.

    Examples:
        >>> from nnmjax.experiments.config import parse_set
        >>> parse_set(["steps=200", 'rules=["nnm+cwtm"]', "model=mlp", "clip=false"])
        {'steps': 200, 'rules': ['nnm+cwtm'], 'model': 'mlp', 'clip': False}
    """
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects key=value; got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out[key] = value
    return out


def _read(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return dict(QUICKSTART)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    with open(path, "rb") as fh:
        try:
            return tomllib.load(fh)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config file {str(path)!r} is not valid TOML: {e}") from None


def expand_sweep(base: dict[str, Any], sweep) -> list[dict[str, Any]]:
    """The points of a sweep: ``sweep`` is a table ``{key: value or [values]}`` or a list of
    such tables; each table contributes the product of its lists (scalars are one value),
    applied on top of ``base``; the grid is the union of the tables' points, in order.

    A list given to a key that is itself a list (``attacks``, ``rules``, ``seeds``) is one
    value, not swept.

    Args:
        base: the keys every point shares.
        sweep: a table ``{key: value or [values]}``, or a list of such tables.

    Returns:
        One mapping per point (``base`` updated with the point's values), unvalidated.

    Raises:
        ValueError: a table that is not a table, or an unknown key.

    Examples:
        >>> from nnmjax.experiments.config import expand_sweep
        >>> expand_sweep({"steps": 10}, {"f": [1, 2], "alpha": [0.1, 1.0]})
        [{'steps': 10, 'f': 1, 'alpha': 0.1}, {'steps': 10, 'f': 1, 'alpha': 1.0},
         {'steps': 10, 'f': 2, 'alpha': 0.1}, {'steps': 10, 'f': 2, 'alpha': 1.0}]
        >>> expand_sweep({}, [{"f": 1, "rules": ["cwtm", "gm"]}, {"f": [2, 3]}])
        [{'f': 1, 'rules': ['cwtm', 'gm']}, {'f': 2}, {'f': 3}]
    """
    import itertools

    tables = [sweep] if isinstance(sweep, dict) else list(sweep)
    points = []
    for table in tables:
        if not isinstance(table, dict):
            raise ValueError(f"config key 'sweep': expected a table of key = [values]; got {table!r}")
        for key in table:
            if key not in _FIELDS:
                raise ValueError(f"config key 'sweep': unknown key {key!r}"
                                 f"{did_you_mean(key, _FIELDS)}; valid keys: {sorted(_FIELDS)}")
        keys = list(table)
        values = [v if isinstance(v, list) and not isinstance(_FIELDS[k].default, tuple)
                  else [v] for k, v in table.items()]
        for combo in itertools.product(*values):
            points.append({**base, **dict(zip(keys, combo))})
    return points


def load_grid(path: str | Path | None = None, overrides: list[str] | None = None) -> list[Config]:
    """Every :class:`Config` of a TOML file: its scalar keys, expanded over its optional
    ``sweep`` (a ``[sweep]`` table or ``[[sweep]]`` tables, see :func:`expand_sweep`).

    ``--set key=value`` overrides apply to every point and take the key out of the sweep
    (``--set f=4`` on a file sweeping ``f`` runs ``f = 4`` only); ``--set 'sweep=[...]'``
    replaces the sweep. Duplicate points are dropped.

    Args:
        path: the TOML file; ``None``: :data:`QUICKSTART`.
        overrides: ``--set`` items, ``"key=value"`` with TOML literal values
            (:func:`parse_set`).

    Returns:
        The distinct configs, in sweep order (one when there is no sweep).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: invalid TOML, an unknown key or a bad value.

    Examples:
        >>> import pathlib, tempfile
        >>> from nnmjax.experiments.config import load_grid
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = pathlib.Path(d) / "grid.toml"
        ...     _ = path.write_text('model = "logreg"\\n'
        ...                         '[sweep]\\nf = [1, 2]\\nalpha = [0.1, 1]\\n')
        ...     swept, pinned = load_grid(path), load_grid(path, ["f=3"])
        >>> [(c.f, c.alpha) for c in swept]
        [(1, 0.1), (1, 1.0), (2, 0.1), (2, 1.0)]
        >>> [(c.model, c.f, c.alpha) for c in pinned]
        [('logreg', 3, 0.1), ('logreg', 3, 1.0)]
    """
    data = _read(path)
    sweep = data.pop("sweep", None)
    extra = parse_set(overrides or [])
    if "sweep" in extra:
        sweep = extra.pop("sweep")
    data.update(extra)
    if sweep is None:
        return [from_mapping(data)]
    if isinstance(sweep, dict):
        sweep = [sweep]
    sweep = [{k: v for k, v in t.items() if k not in extra} if isinstance(t, dict) else t
             for t in sweep]
    configs = [from_mapping(point) for point in expand_sweep(data, sweep)]
    return list(dict.fromkeys(configs))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (TOML; ``None`` gives the quickstart) and apply ``--set`` overrides; a file
    whose sweep has several points needs :func:`load_grid`.

    Args:
        path: the TOML file; ``None``: :data:`QUICKSTART`.
        overrides: ``--set`` items, ``"key=value"`` with TOML literal values.

    Returns:
        The one :class:`Config` the file describes.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: invalid TOML, an unknown key, a bad value, or a sweep of several points.

    Examples:
        >>> from nnmjax.experiments.config import load_config
        >>> c = load_config(None, ["steps=10", "model=logreg"])
        >>> c.steps, c.model, c.attacks
        (10, 'logreg', ('optimal_alie', 'sign_flipping'))
        >>> load_config(None, ['sweep={f = [1, 2]}'])
        Traceback (most recent call last):
        ...
        ValueError: None sweeps 2 settings; use load_grid
    """
    configs = load_grid(path, overrides)
    if len(configs) > 1:
        raise ValueError(f"{path} sweeps {len(configs)} settings; use load_grid")
    return configs[0]


#: ``nnmjax run`` with no config: the paper's setting on the embedded digits data.
QUICKSTART: dict[str, Any] = {
    "dataset": "digits", "model": "mlp", "algorithm": "dshb", "n": 17, "f": 4,
    "partition": "dirichlet", "alpha": 0.1, "attacks": ["optimal_alie", "sign_flipping"],
    "rules": ["cwtm", "bucketing+cwtm", "nnm+cwtm"], "seeds": [1], "steps": 300,
    "batch_size": 25, "lr": 0.5, "lr_schedule": "paper_mnist", "momentum": 0.9, "clip": 2.0,
    "weight_decay": 1e-4, "eval_every": 25, "baseline": True,
}
