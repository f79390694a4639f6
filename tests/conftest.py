"""Shared test setup: make ``tests/`` importable (for ``reference``) and nothing else global.

JAX configuration is deliberately left alone (float32, default device): every test file
runs in the same process and must see the library's defaults.
"""
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
