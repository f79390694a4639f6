"""Sphinx extension: the ``config-reference`` directive.

It renders one table row per field of :class:`nnmjax.experiments.config.Config` (key, type, default
and the field's ``#:`` comment), read from the code at build time so that the reference
cannot drift from it. :func:`config_rows` is the table builder (the tests call it).
"""
from __future__ import annotations

import dataclasses
import importlib
import re

from docutils import nodes
from docutils.parsers.rst.states import RSTState
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = field.default_factory()  # type: ignore[misc]
    else:
        return "(required)"
    return repr(value)


def config_rows(module: str = "nnmjax.experiments.config", cls: str = "Config") -> list[tuple[str, str, str, str]]:
    """``(key, type, default, meaning)`` for every field of ``module.cls``, in order.

    The meaning is the field's ``#:`` doc comment (joined into one line), or ``""``.
    """
    from sphinx.pycode import ModuleAnalyzer

    klass = getattr(importlib.import_module(module), cls)
    docs = ModuleAnalyzer.for_module(module).find_attr_docs()
    rows = []
    for field in dataclasses.fields(klass):
        comment = docs.get((cls, field.name), [])
        meaning = " ".join(line.strip() for line in comment if line.strip())
        rows.append((field.name, str(field.type), _default(field), meaning))
    return rows


_ROLE = re.compile(r":(?:py:)?(\w+):`")


def _markup(text: str, markdown: bool) -> str:
    """The ``#:`` comment (reStructuredText) for the parser of the calling page: in a
    Markdown (MyST) page ``:role:`x``` becomes ``{role}`x```; double-backtick literals
    are valid in both."""
    return _ROLE.sub(lambda m: "{" + m.group(1) + "}`", text) if markdown else text


class ConfigReference(SphinxDirective):
    """``config-reference`` (optionally ``module.Class`` as its argument): the table."""

    optional_arguments = 1
    has_content = False

    def _cell(self, *children):
        entry = nodes.entry()
        entry += children
        return entry

    def _text_cell(self, text: str):
        entry = nodes.entry()
        if text:
            markdown = not isinstance(self.state, RSTState)
            self.state.nested_parse(StringList([_markup(text, markdown)], source="config-reference"),
                                    self.content_offset, entry)
        return entry

    def run(self):
        target = self.arguments[0] if self.arguments else "nnmjax.experiments.config.Config"
        module, _, cls = target.rpartition(".")
        self.env.note_dependency(importlib.import_module(module).__file__)
        widths = (14, 16, 16, 54)
        table = nodes.table(classes=["config-reference"])
        group = nodes.tgroup(cols=len(widths))
        table += group
        for width in widths:
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        row = nodes.row()
        for title in ("key", "type", "default", "meaning"):
            row += self._cell(nodes.paragraph(text=title))
        head += row
        group += head
        body = nodes.tbody()
        # Relative cross-references in the comments resolve as in the class's own docs.
        context = self.env.ref_context
        saved = {k: context.get(k) for k in ("py:module", "py:class")}
        context["py:module"], context["py:class"] = module, cls
        try:
            for key, typ, default, meaning in config_rows(module, cls):
                row = nodes.row(ids=[f"config-{key}"])
                for text in (key, typ, default):
                    row += self._cell(nodes.paragraph("", "", nodes.literal(text=text)))
                row += self._text_cell(meaning)
                body += row
        finally:
            for k, v in saved.items():
                if v is None:
                    context.pop(k, None)
                else:
                    context[k] = v
        group += body
        return [table]


def setup(app):
    app.add_directive("config-reference", ConfigReference)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
