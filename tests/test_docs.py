"""The documentation: the Sphinx build passes with warnings as errors, and the
configuration reference lists every :class:`nnmjax.experiments.config.Config` field.

Both need the ``docs`` extra (``pip install -e ".[docs]"``) and are skipped without it.
"""
import dataclasses
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _config_reference():
    pytest.importorskip("sphinx")
    spec = importlib.util.spec_from_file_location("config_reference",
                                                  DOCS / "_ext" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_lists_every_config_field():
    from nnmjax.experiments.config import Config

    rows = _config_reference().config_rows()
    fields = dataclasses.fields(Config)
    assert [r[0] for r in rows] == [f.name for f in fields]
    by_key = {key: (typ, default, meaning) for key, typ, default, meaning in rows}
    for field in fields:
        typ, default, meaning = by_key[field.name]
        assert typ == str(field.type)
        assert default == repr(field.default)
        assert meaning, f"Config.{field.name} has no #: comment to document it"
    assert by_key["steps"][1] == "800" and "Training steps" in by_key["steps"][2]


def test_sphinx_build_has_no_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert (tmp_path / "html" / "configuration.html").exists()
    page = (tmp_path / "html" / "configuration.html").read_text()
    assert "rule_options" in page and "tolerated_f" in page


_PAGES = sorted(Path(__file__).resolve().parents[1].glob("docs/**/*.md"))
_BLOCKS = [(page, i, block) for page in _PAGES
           for i, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))]


@pytest.mark.parametrize("page, i, block", _BLOCKS,
                         ids=[f"{p.parent.name}/{p.name}[{i}]" for p, i, _ in _BLOCKS])
def test_docs_python_blocks_run(page, i, block):
    """Every Python block of the documentation pages runs as written (those importing
    ByzFL only where it is installed)."""
    if re.search(r"^import .*\bbyzfl\b", block, re.M):
        pytest.importorskip("byzfl")
    exec(compile(block, f"{page.name}[python block {i}]", "exec"), {})
