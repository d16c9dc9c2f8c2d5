"""What every command module shares: the typer :data:`app` (the root command, where a user
error becomes one line and exit 2), the stderr :data:`console`, :func:`fail` and the
options several commands take. The command modules import this, and
:mod:`agegender.cli` imports them, so the arrows point one way.
"""

from __future__ import annotations

import os

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from agegender.errors import error_line, is_user_error

console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error to stderr and exit non-zero."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    text = escape(lines[0] if lines else "failed")
    console.print(f"[bold red]error:[/] {text}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


#: ``--format``, shared by every command that reads a dataset (typer reads it per command).
FORMAT_OPTION = typer.Option("auto", "--format", "-f", help="Dataset layout (auto detects).")


class _Commands(TyperGroup):
    """The root command: the one place where user errors become one line and exit 2."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except Exception as exc:  # click's Exit/Abort/UsageError are not user errors here
            if not is_user_error(exc) or os.environ.get("AGEGENDER_DEBUG"):
                raise
            fail(error_line(exc))


app = typer.Typer(
    name="agegender",
    help="Train, evaluate and run face gender and age classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Commands,
)
