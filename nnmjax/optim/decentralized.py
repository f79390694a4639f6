"""Robust decentralized learning: graphs of nodes, each mixing its neighbourhood robustly.

No server: ``n`` nodes sit on an undirected graph, the last ``f`` of them Byzantine. Each
step every honest node ``i`` takes a local step (its own gradient and momentum) to a
half-step vector ``x_i``, then replaces it by a robust aggregate of its neighbourhood
``N_i`` (itself, first, and its ``k`` neighbours):

    ``x_i <- F(x_i, x_j : j in N_i \\ {i})``

with any rule of the library told ``f`` Byzantine rows per neighbourhood (MoNNA,
Farhadkhani et al. 2023, is ``F = monna`` with the node's own vector trusted). A Byzantine
neighbour may send each node a different vector: the attack is computed per receiving
node from that node's honest neighbourhood (the optimal attacks search against the rule
per node), all nodes in one ``jax.vmap``.

Graphs (:class:`Topology`) are ``k``-regular so that every neighbourhood has one shape:
:func:`ring`, :func:`torus`, :func:`complete`, :func:`random_regular` (networkx), or any
regular, connected adjacency matrix (:func:`from_adjacency`).

Examples:
    >>> import jax, jax.numpy as jnp, nnmjax
    >>> from nnmjax.optim import decentralized as dec
    >>> x = jax.random.normal(jax.random.key(0), (5, 3))     # 5 nodes, all honest
    >>> mixed = dec.robust_gossip(x, dec.complete(5), nnmjax.rule("mean", 0), byzantine=0)
    >>> bool(jnp.allclose(mixed, x.mean(0)))                  # complete graph: the mean
    True
    >>> float(dec.consensus_distance(mixed)) < 1e-12
    True
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from nnmjax.optim import transforms
from nnmjax.optim.tree import ravel_workers

__all__ = ["Topology", "TOPOLOGIES", "ring", "torus", "complete", "random_regular",
           "from_adjacency", "make_topology", "check_neighbourhood_f", "robust_gossip",
           "consensus_distance"]


class Topology(NamedTuple):
    """A ``k``-regular undirected graph of ``n`` nodes.

    Attributes:
        name: how it was made (``"ring"``, ``"torus"``, ``"complete"``, ``"random_regular"``,
            ``"adjacency"``).
        neighbours: ``int[n, k]`` each node's neighbours, sorted, the node itself excluded.
    """

    name: str
    neighbours: np.ndarray

    @property
    def n(self) -> int:
        """The number of nodes."""
        return int(self.neighbours.shape[0])

    @property
    def degree(self) -> int:
        """``k``, every node's number of neighbours."""
        return int(self.neighbours.shape[1])

    def neighbourhoods(self) -> np.ndarray:
        """``int[n, k + 1]``: each node first, then its neighbours."""
        return np.concatenate([np.arange(self.n)[:, None], self.neighbours], axis=1)

    def adjacency(self) -> np.ndarray:
        """The ``bool[n, n]`` adjacency matrix."""
        adj = np.zeros((self.n, self.n), bool)
        adj[np.repeat(np.arange(self.n), self.degree), self.neighbours.ravel()] = True
        return adj


def from_adjacency(adjacency, *, name: str = "adjacency") -> Topology:
    """The :class:`Topology` of a user-given adjacency matrix.

    Args:
        adjacency: ``(n, n)`` 0/1 (or boolean) symmetric matrix, zero diagonal.
        name: the topology's name.

    Raises:
        ValueError: a matrix that is not square, not symmetric, not 0/1, has self-loops,
            is not regular (nodes of different degrees: neighbourhoods need one shape), has
            a node without neighbours, or is disconnected.

    Examples:
        >>> from nnmjax.optim.decentralized import from_adjacency
        >>> from_adjacency([[0, 1, 1], [1, 0, 1], [1, 1, 0]]).neighbours.tolist()
        [[1, 2], [0, 2], [0, 1]]
        >>> from_adjacency([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]])
        Traceback (most recent call last):
        ...
        ValueError: topology: the graph is disconnected (2 components: [0, 1], [2, 3]); every honest node must be reachable
    """
    a = np.asarray(adjacency)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 2:
        raise ValueError(f"topology: the adjacency must be a square (n, n) matrix with n >= 2; "
                         f"got shape {a.shape}")
    if not np.isin(a, (0, 1)).all():
        raise ValueError("topology: the adjacency must hold only 0/1 (or booleans)")
    a = a.astype(bool)
    if not (a == a.T).all():
        raise ValueError("topology: the adjacency must be symmetric (undirected links)")
    if a.diagonal().any():
        raise ValueError(f"topology: self-loops at nodes {np.flatnonzero(a.diagonal()).tolist()}; "
                         "a node is always in its own neighbourhood, leave the diagonal 0")
    degrees = a.sum(1)
    if degrees.min() == 0:
        raise ValueError(f"topology: nodes {np.flatnonzero(degrees == 0).tolist()} have no "
                         "neighbours")
    if degrees.min() != degrees.max():
        raise ValueError(f"topology: every node needs the same degree (neighbourhoods of one "
                         f"shape); got degrees {sorted(set(degrees.tolist()))}")
    components = _components(a)
    if len(components) > 1:
        parts = ", ".join(str(c) for c in components[:4])
        raise ValueError(f"topology: the graph is disconnected ({len(components)} components: "
                         f"{parts}); every honest node must be reachable")
    neighbours = np.stack([np.flatnonzero(row) for row in a]).astype(np.int32)
    return Topology(name, neighbours)


def _components(adjacency: np.ndarray) -> list[list[int]]:
    """The connected components of a boolean adjacency matrix (networkx), by first node."""
    import networkx as nx

    parts = nx.connected_components(nx.from_numpy_array(adjacency.astype(np.int8)))
    return sorted(sorted(int(i) for i in c) for c in parts)


def ring(n: int) -> Topology:
    """The cycle ``0 - 1 - ... - (n - 1) - 0`` (degree 2; ``n >= 3``).

    Examples:
        >>> from nnmjax.optim.decentralized import ring
        >>> ring(5).neighbours[0].tolist()
        [1, 4]
    """
    _check_nodes(n, 3, "ring")
    i = np.arange(n)
    return from_adjacency(_from_edges(n, i, (i + 1) % n), name="ring")


def torus(rows: int, cols: int) -> Topology:
    """The ``rows x cols`` wrap-around grid (degree 4; ``rows, cols >= 3``); node
    ``r cols + c`` is linked to its four grid neighbours.

    Examples:
        >>> from nnmjax.optim.decentralized import torus
        >>> t = torus(3, 4)
        >>> t.n, t.degree, t.neighbours[0].tolist()
        (12, 4, [1, 3, 4, 8])
    """
    if min(rows, cols) < 3:
        raise ValueError(f"torus: rows and cols must be >= 3 (smaller wraps onto itself); "
                         f"got {rows} x {cols}")
    r, c = np.divmod(np.arange(rows * cols), cols)
    right = r * cols + (c + 1) % cols
    down = ((r + 1) % rows) * cols + c
    i = np.arange(rows * cols)
    return from_adjacency(_from_edges(rows * cols, np.r_[i, i], np.r_[right, down]),
                          name="torus")


def complete(n: int) -> Topology:
    """Every node linked to every other (degree ``n - 1``; ``n >= 2``).

    Examples:
        >>> from nnmjax.optim.decentralized import complete
        >>> complete(4).neighbours[2].tolist()
        [0, 1, 3]
    """
    _check_nodes(n, 2, "complete")
    return from_adjacency(~np.eye(n, dtype=bool), name="complete")


def random_regular(n: int, degree: int, *, seed: int) -> Topology:
    """A uniformly drawn connected ``degree``-regular graph (``networkx``), redrawn from
    the next seed until connected (at most 100 draws).

    Raises:
        ValueError: ``n degree`` odd, ``degree >= n``, ``degree < 1``, or no connected
            draw in 100 seeds.

    Examples:
        >>> from nnmjax.optim.decentralized import random_regular
        >>> t = random_regular(10, 3, seed=0)
        >>> t.n, t.degree
        (10, 3)
    """
    import networkx as nx

    _check_nodes(n, 2, "random_regular")
    if not 1 <= degree < n or (n * degree) % 2:
        raise ValueError(f"random_regular: needs 1 <= degree < n and n * degree even; got "
                         f"n={n}, degree={degree}")
    for s in range(seed, seed + 100):
        g = nx.random_regular_graph(degree, n, seed=s)
        if nx.is_connected(g):
            return from_adjacency(nx.to_numpy_array(g, nodelist=range(n)) > 0,
                                  name="random_regular")
    raise ValueError(f"random_regular: no connected {degree}-regular graph on {n} nodes in "
                     f"100 draws from seed {seed}; raise the degree")


#: Topology name -> how :func:`make_topology` builds it.
TOPOLOGIES = ("ring", "torus", "complete", "random_regular", "adjacency")


def make_topology(name: str, n: int, *, degree: int | None = None, seed: int = 0,
                  adjacency=None, shape: tuple[int, int] | None = None) -> Topology:
    """The topology ``name`` on ``n`` nodes (config keys ``topology``, ``degree``,
    ``topology_seed``, ``adjacency``).

    ``torus`` takes ``shape = (rows, cols)``, default the most square factorisation of
    ``n`` with both factors >= 3.

    Raises:
        ValueError: an unknown name, a missing or unused argument, or a graph the
            builders refuse.

    Examples:
        >>> from nnmjax.optim.decentralized import make_topology
        >>> make_topology("torus", 12).degree, make_topology("ring", 6).degree
        (4, 2)
    """
    if name not in TOPOLOGIES:
        raise ValueError(f"topology: unknown {name!r}; known: {', '.join(TOPOLOGIES)}")
    if (degree is not None) != (name == "random_regular"):
        raise ValueError("topology: degree is for 'random_regular' only, and it needs one")
    if (adjacency is not None) != (name == "adjacency"):
        raise ValueError("topology: adjacency is for 'adjacency' only, and it needs one")
    if name == "adjacency":
        t = from_adjacency(adjacency)
        if t.n != n:
            raise ValueError(f"topology: the adjacency has {t.n} nodes, the run has n={n}")
        return t
    if name == "ring":
        return ring(n)
    if name == "complete":
        return complete(n)
    if name == "random_regular":
        return random_regular(n, degree, seed=seed)
    if shape is None:
        shapes = [(r, n // r) for r in range(3, int(n ** 0.5) + 1) if n % r == 0 and n // r >= 3]
        if not shapes:
            raise ValueError(f"topology: a torus needs n = rows x cols with both >= 3; "
                             f"n={n} has no such factorisation")
        shape = shapes[-1]
    if shape[0] * shape[1] != n:
        raise ValueError(f"topology: torus shape {shape} does not hold n={n} nodes")
    return torus(*shape)


def _check_nodes(n, least, name):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < least:
        raise ValueError(f"{name}: needs an integer n >= {least}; got {n!r}")


def _from_edges(n, i, j) -> np.ndarray:
    adj = np.zeros((n, n), bool)
    adj[i, j] = adj[j, i] = True
    return adj


def check_neighbourhood_f(topology: Topology, f: int) -> None:
    """Refuse a rule ``f`` a neighbourhood cannot hold: ``2 f < k + 1`` rows.

    Raises:
        ValueError: naming the degree and the largest ``f`` it allows.

    Examples:
        >>> from nnmjax.optim.decentralized import check_neighbourhood_f, ring
        >>> check_neighbourhood_f(ring(6), 2)
        Traceback (most recent call last):
        ...
        ValueError: a neighbourhood of ring has 3 rows (the node and its 2 neighbours), too few for f=2 (needs 2f < 3; at most f=1)
    """
    rows = topology.degree + 1
    if 2 * f >= rows:
        raise ValueError(f"a neighbourhood of {topology.name} has {rows} rows (the node and its "
                         f"{topology.degree} neighbours), too few for f={f} (needs 2f < {rows}; "
                         f"at most f={(rows - 1) // 2})")


def _groups(topology: Topology, honest: int):
    """The honest nodes grouped by their number ``b`` of Byzantine neighbours (nodes
    ``>= honest``): ``{b: (nodes, honest members)}``, members with the node first."""
    hood = topology.neighbourhoods()[:honest]
    out: dict[int, tuple[list, list]] = {}
    for i, members in enumerate(hood):
        good = [int(j) for j in members if j < honest]
        nodes, rows = out.setdefault(len(members) - len(good), ([], []))
        nodes.append(i)
        rows.append(good)
    return {b: (np.asarray(nodes), np.asarray(rows, np.int32)) for b, (nodes, rows) in out.items()}


def robust_gossip(x, topology: Topology, rule: Callable, *, byzantine: int,
                  attack: str | Callable = "none", key: PRNGKeyArray | None = None,
                  **attack_options):
    """Every honest node's robust aggregate of its neighbourhood.

    The last ``byzantine`` nodes of ``topology`` are Byzantine. Honest node ``i`` gathers
    its own vector (row 0), its honest neighbours' vectors and, from each of its ``b_i``
    Byzantine neighbours, the attack's vector computed from the rows it gathered (the
    attack told ``f = b_i``; the optimal attacks search against ``rule`` for this node),
    and applies ``rule`` (told its own ``f``). Nodes with the same ``b_i`` are one
    ``jax.vmap``.

    Args:
        x: the honest nodes' vectors: a pytree whose leaves have a leading axis of
            ``n - byzantine`` nodes (e.g. every node's parameters after its local step).
        topology: the graph (:class:`Topology`) of all ``n`` nodes.
        rule: the rule each node applies, ``(k + 1, d) -> (d,)`` (e.g. ``nnmjax.rule``).
        byzantine: the number of Byzantine nodes (the last ones of the graph).
        attack: an attack name of :func:`nnmjax.optim.transforms.inject_attack` (not the
            stateful ``mimic``); ``"none"`` only without Byzantine nodes.
        key: ``jax.random`` key, keyword-only, split per node for randomized attacks and
            rules (default: a fixed key).
        **attack_options: the attack's options (e.g. ``eta``).

    Returns:
        A pytree like ``x``: each honest node's new vector.

    Raises:
        ValueError: ``x`` without ``n - byzantine`` nodes, ``attack = "none"`` with
            Byzantine nodes, or ``mimic``.

    Examples:
        >>> import jax, jax.numpy as jnp, nnmjax
        >>> from nnmjax.optim import decentralized as dec
        >>> x = jnp.arange(5.0)[:, None] * jnp.ones((5, 2))   # nodes 0..4 honest, 5 Byzantine
        >>> out = dec.robust_gossip(x, dec.ring(6), nnmjax.rule("cwmed", 1), byzantine=1,
        ...                         attack="sign_flipping")
        >>> out[:, 0].tolist()                # node 0: median(0, 1, -0.5); 4: (4, 3, -3.5)
        [0.0, 1.0, 2.0, 3.0, 3.0]
    """
    rows, unravel = ravel_workers(x)
    honest = topology.n - byzantine
    if rows.shape[0] != honest:
        raise ValueError(f"x: needs the {honest} honest nodes' vectors (n={topology.n}, "
                         f"byzantine={byzantine}); got {rows.shape[0]}")
    if byzantine and attack == "none":
        raise ValueError("attack: 'none' with Byzantine nodes; name what they send")
    if attack == "mimic":
        raise ValueError("attack: 'mimic' keeps one state per receiver over steps, which "
                         "robust_gossip does not hold; use another attack")
    key = jax.random.key(0) if key is None else key
    out = jnp.zeros_like(rows)
    for b, (nodes, members) in sorted(_groups(topology, honest).items()):
        k_b = jax.random.split(jax.random.fold_in(key, b), len(nodes))
        gathered = rows[members]  # (g, k + 1 - b, d), the node first
        if b:
            tx = transforms.inject_attack(attack, b, rule=rule, key=jax.random.key(0),
                                          **attack_options)
            state = tx.init(rows[0])

            def attacked(r, k, tx=tx, state=state):
                full, _ = tx.update(r, state._replace(key=k))
                return full
            gathered = jax.vmap(attacked)(gathered, k_b)
        if getattr(rule, "randomized", False):
            k_rule = jax.random.split(jax.random.fold_in(key, topology.n + b), len(nodes))
            mixed = jax.vmap(lambda r, k: rule(r, key=k))(gathered, k_rule)
        else:
            mixed = jax.vmap(rule)(gathered)
        out = out.at[nodes].set(mixed.astype(rows.dtype))
    return jax.vmap(unravel)(out)


def consensus_distance(x) -> Float[Array, ""]:
    """The spread of the honest nodes' vectors, ``(1/h) sum_i ||x_i - xbar||^2`` (``xbar``
    their mean): zero when they agree.

    Examples:
        >>> import jax.numpy as jnp
        >>> from nnmjax.optim.decentralized import consensus_distance
        >>> float(consensus_distance(jnp.array([[0.0, 0.0], [2.0, 0.0]])))
        1.0
    """
    rows, _ = ravel_workers(x)
    return jnp.mean(jnp.sum(jnp.square(rows - jnp.mean(rows, 0)), axis=1))
