"""Provenance of results: which code produced them (git commit, dirty flag, source digest)."""
from __future__ import annotations

import os

__all__ = ["code_info", "source_digest"]


def source_digest() -> str:
    """sha256 over the ``nnmjax`` package's ``.py`` files (what produced a timing or a record)."""
    import hashlib

    root = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()


def code_info() -> dict:
    """nnmjax version, git commit and dirty flag of its checkout (when it is one), and
    :func:`source_digest`."""
    import subprocess

    import nnmjax

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    info = {"nnmjax": nnmjax.__version__, "git_commit": None, "git_dirty": None,
            "source_sha256": source_digest()}
    try:
        run = lambda *a: subprocess.run(["git", "-C", root, *a], capture_output=True,  # noqa: E731
                                        text=True, timeout=10)
        head = run("rev-parse", "HEAD")
        if head.returncode == 0:
            info["git_commit"] = head.stdout.strip()
            status = run("status", "--porcelain", "--", "nnmjax")
            info["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return info
