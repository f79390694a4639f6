"""No file of the repository cites a file that does not exist."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: A relative path to a file of a kind the repository holds, as text cites it.
PATH = re.compile(r"(?<![\w/.:~<$-])((?:\.{1,2}/)?(?:[\w.-]+/)+[\w.-]+"
                  r"\.(?:py|md|toml|ipynb|sh|json|csv|png|pdf|txt))\b")
#: Paths that name what a command writes (``DIR/``, ``out/``, ``plots/``, ``runs/`` in an output
#: directory) or a file of another package (ByzFL's sources), not a file of this repository.
NOT_HERE = ("DIR/", "out/", "plots/", "runs/", "byzfl/")


def _tracked() -> list[str]:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [f for f in listed if f.endswith((".md", ".py", ".toml", ".ipynb", ".sh"))]


def test_every_cited_file_exists():
    missing = []
    for name in _tracked():
        text = (ROOT / name).read_text(errors="ignore")
        for cited in PATH.findall(text):
            if cited.startswith(NOT_HERE):
                continue
            if not ((ROOT / cited).exists() or ((ROOT / name).parent / cited).exists()):
                missing.append(f"{name} cites {cited}")
    assert not missing, missing
