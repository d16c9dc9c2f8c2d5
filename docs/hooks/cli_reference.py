"""MkDocs hook: the CLI reference page, generated from the typer app at build time.

The marker ``<!-- agegender-cli -->`` in a page becomes typer's own Markdown for the whole
``agegender`` command tree (``typer.cli.get_docs_for_click``, what ``typer MODULE utils
docs`` prints), so the page shows the same usage, arguments, options and help texts as
``agegender COMMAND --help`` and cannot drift from them. It calls typer in-process: the
``typer`` command re-imports the module, which leaves this app's commands (registered by
its submodules on the first import) behind. Any error fails the build.
"""

from __future__ import annotations

import typer
import typer.main
from typer.cli import get_docs_for_click

MARKER = "<!-- agegender-cli -->"


def cli_markdown() -> str:
    """Markdown for every ``agegender`` command, one heading level below the page title."""
    from agegender.cli import app

    command = typer.main.get_command(app)
    ctx = typer.Context(command, info_name="agegender")
    return get_docs_for_click(obj=command, ctx=ctx, name="agegender", indent=1)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001
    """Put the generated reference where the page has the marker."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_markdown())
