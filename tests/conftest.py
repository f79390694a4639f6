"""Shared test setup: make ``tests/`` importable (for ``reference``), share compiled programs,
and start the long tests first.

JAX's numerical configuration is deliberately left alone (float32, default device): every
test file runs in the same process and must see the library's defaults. The settings made
here concern compilation only, since most of the suite's time is XLA compiling small
programs:

* a persistent compilation cache in a fresh directory for this test session (unless
  ``JAX_COMPILATION_CACHE_DIR`` is already set), so that the many tests and subprocesses
  (CLI, notebooks, two-process runs) that build the same XLA program compile it once,
  across ``pytest -n`` workers too. A cached program is the same executable, so results
  are unchanged; the directory is removed when the session ends;
* XLA's lowest backend optimisation level, :data:`TEST_XLA_FLAG`, appended to
  ``XLA_FLAGS`` (which the processes the tests start inherit) unless ``XLA_FLAGS`` sets a
  level: the same programs, float rounding that may differ in the last bits from a
  default build (every comparison in the suite is between programs compiled alike, or to
  a tolerance). The benchmarks and ``experiments/`` results run at XLA's default.

Tests marked ``slow`` (end-to-end runs of a minute or more on 2 cores) are collected first,
so that ``pytest -n 2`` does not finish on one worker running a long test alone.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

# ``--doctest-modules`` (pyproject's addopts) imports every module under tests/; the
# ``*_check.py`` files are scripts run in subprocesses (they read ``sys.argv`` on import).
collect_ignore_glob = ["*_check.py"]

#: Appended to ``XLA_FLAGS`` before JAX starts, unless a level is already set there.
TEST_XLA_FLAG = "--xla_backend_optimization_level=0"
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAG}".strip()

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_owned_cache: str | None = None


def pytest_configure(config):
    """The controller (or a lone process) makes the cache directory; ``-n`` workers inherit it."""
    global _owned_cache
    if os.environ.get(_CACHE_ENV) is None and not hasattr(config, "workerinput"):
        _owned_cache = tempfile.mkdtemp(prefix="nnmjax-test-xla-cache-")
        os.environ[_CACHE_ENV] = _owned_cache
    if os.environ.get(_CACHE_ENV):
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])


def pytest_unconfigure(config):
    if _owned_cache is not None:
        shutil.rmtree(_owned_cache, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: slow first
