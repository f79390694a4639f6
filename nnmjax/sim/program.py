"""Which runs share one compiled program: the settings that change no shape.

Runs whose configs differ only in :data:`VMAPPED_KEYS` (and the seed), with the same attack
and rule, are one program vmapped over runs; :func:`program_key` is a config with those keys
set to fixed values, the identity of the program.

Examples:
    >>> import dataclasses
    >>> from nnmjax.experiments.config import Config
    >>> a = Config(alpha=0.1, lr=0.5)
    >>> program_key(a) == program_key(dataclasses.replace(a, alpha=1.0, lr=0.1))
    True
    >>> program_key(a) == program_key(dataclasses.replace(a, n=9, f=2))
    False
"""
from __future__ import annotations

import dataclasses

from nnmjax.experiments.config import Config

__all__ = ["VMAPPED_KEYS", "STEP_KEYS", "program_key"]

#: Config keys that change no shape: runs differing only in these (and the seed) share one
#: compiled program, vmapped (``clip`` only between numbers, not to or from ``None``).
VMAPPED_KEYS = ("alpha", "gamma", "data_seed", "lr", "momentum", "weight_decay", "clip")
#: Hyperparameters of the step itself (the rest of :data:`VMAPPED_KEYS` shape the data only).
STEP_KEYS = ("lr", "momentum", "weight_decay", "clip")


def program_key(config: Config) -> Config:
    """``config`` with the :data:`VMAPPED_KEYS` set to fixed values: runs whose configs have
    the same key (and the same attack and rule) can be one vmapped program.

    Args:
        config: a run's config.

    Returns:
        The config with ``alpha``, ``lr``, ... at their defaults and ``clip`` at ``1.0`` (or
        ``None`` when ``config.clip`` is ``None``).
    """
    neutral = {k: Config.__dataclass_fields__[k].default for k in VMAPPED_KEYS}
    neutral["clip"] = None if config.clip is None else 1.0
    return dataclasses.replace(config, **neutral)
