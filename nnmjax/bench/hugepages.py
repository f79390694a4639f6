"""Transparent huge pages for XLA's CPU buffers (Linux, glibc >= 2.35).

XLA's CPU runtime takes every call's output and temporary buffers from glibc's ``malloc``;
a large one is a fresh ``mmap`` whose first touch faults in 4 KiB at a time, and large
arrays cost TLB misses. Where the kernel's transparent-huge-page mode is ``madvise`` (a
common default), glibc marks its memory for 2 MiB pages when the process starts with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (NumPy already asks for them on its own arrays).
The tunable is read only at start-up, so the ``nnmjax`` console script re-executes itself
once with it for ``run`` and ``check`` (see :func:`nnmjax.cli.entry`);
``NNMJAX_HUGEPAGES=0`` opts out. Results are bit for bit the same; only memory placement
changes. ``nnmjax bench`` is not re-executed (it compares libraries as a plain script runs
them); with the variable set by hand both nnmjax and ByzFL get faster, ByzFL's torch
backend more (``benchmarks/README.md``).

Measured on a 2-core AMD EPYC (THP ``madvise``, glibc 2.36, jax 0.10.2): ``x * 2`` on a fresh
(17, 1e6) float32 array 25.0 -> 6.0 ms; ``nnm`` at (17, 1e6, f=4) 41.5 -> 30.8 ms; a
Fashion-MNIST D-SHB step (sign flipping vs CWTM, five seeds) 0.43 -> 0.35 s.
"""
from __future__ import annotations

import os
import sys
from typing import Mapping

__all__ = ["TUNABLE", "hugepage_env", "status"]

TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc() -> tuple[int, ...] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        return tuple(int(p) for p in version.split(".")[:2]) if name == "glibc" else None
    except (AttributeError, OSError, ValueError):
        return None


def _thp_mode() -> str | None:
    try:
        with open(_THP_MODE) as fh:
            text = fh.read()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def status() -> dict:
    """What this process runs with: the kernel's THP mode, glibc's version and
    ``GLIBC_TUNABLES`` (recorded with benchmark figures)."""
    glibc = _glibc()
    return {"thp_mode": _thp_mode(), "glibc": ".".join(map(str, glibc)) if glibc else None,
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}


def hugepage_env(environ: Mapping[str, str] | None = None, *, platform: str | None = None,
                 glibc: tuple[int, ...] | None = ..., thp_mode: str | None = ...
                 ) -> dict[str, str] | None:
    """The environment to re-execute with (``environ`` plus :data:`TUNABLE` appended to
    ``GLIBC_TUNABLES``), or ``None`` when that would change nothing or is not wanted: not
    Linux, not glibc >= 2.35, a THP mode other than ``madvise`` (``always`` already gives
    huge pages, ``never`` refuses them), the tunable already set, or ``NNMJAX_HUGEPAGES=0``.
    ``platform``, ``glibc`` and ``thp_mode`` default to this machine's."""
    environ = dict(os.environ if environ is None else environ)
    platform = sys.platform if platform is None else platform
    glibc = _glibc() if glibc is ... else glibc
    thp_mode = _thp_mode() if thp_mode is ... else thp_mode
    tunables = environ.get("GLIBC_TUNABLES", "")
    if (environ.get("NNMJAX_HUGEPAGES") == "0" or not platform.startswith("linux")
            or glibc is None or glibc < (2, 35) or thp_mode != "madvise"
            or "glibc.malloc.hugetlb" in tunables):
        return None
    environ["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    return environ
