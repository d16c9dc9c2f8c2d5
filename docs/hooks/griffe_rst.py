"""Griffe extension: the package's reStructuredText docstrings as Markdown for the API pages.

The docstrings are written for Sphinx-style readers (``>>>`` examples, ``:func:`x```
roles, double backquotes); mkdocstrings renders Markdown, where a ``>>>`` line is a
nested quote. ``docstring-to-markdown`` (python-lsp's converter) turns each docstring
into Markdown as griffe loads it; one it does not recognise as reST is left as it is.
"""

from __future__ import annotations

import contextlib
from typing import Any

import docstring_to_markdown
import griffe


class RstDocstrings(griffe.Extension):
    """Convert every loaded object's docstring from reST to Markdown."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        with contextlib.suppress(docstring_to_markdown.UnknownFormatError):
            obj.docstring.value = docstring_to_markdown.convert(obj.docstring.value)
