"""What every command module shares: the typer :data:`app` (the root command, where a user
error becomes one line and exit 2), the stderr :data:`console`, :func:`fail` and the
options several commands take. The command modules import this, and
:mod:`agegender.cli` imports them, so the arrows point one way.
"""

from __future__ import annotations

import json
import os
from contextvars import ContextVar
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from agegender.errors import error_line, is_user_error

if TYPE_CHECKING:
    from agegender.data.prepare import NoRowsError

console = Console(stderr=True)

#: The rejected rows an error about a dataset with no usable row shows (``--json``: all).
SHOWN_ROWS = 5
#: The command line of the command running now (set by the root command).
_ARGS: ContextVar[tuple[str, ...]] = ContextVar("agegender_args", default=())


def fail(message: str | BaseException, code: int = 2) -> NoReturn:
    """Print a one-line error to stderr and exit non-zero (an exception: its
    :func:`~agegender.errors.error_line`).

    A dataset with no usable row (:class:`~agegender.data.prepare.NoRowsError`) also shows
    its first :data:`SHOWN_ROWS` rejected rows, one per line (``file:line: reason``), and
    with ``--json`` on the command line prints all of it (``error``, ``dataset``,
    ``row_counts``, ``rejected_rows``) as one JSON object on stdout."""
    if isinstance(message, BaseException):
        text = error_line(message)
    else:
        lines = [line.strip() for line in str(message).splitlines() if line.strip()]
        text = lines[0] if lines else "failed"
    console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
    if isinstance(message, BaseException):
        from agegender.data.prepare import NoRowsError

        if isinstance(message, NoRowsError):
            _show_rejected(message)
    raise typer.Exit(code)


def _show_rejected(exc: NoRowsError) -> None:
    as_json = "--json" in _ARGS.get()
    for problem in exc.rejected[:SHOWN_ROWS]:
        console.print(f"  {escape(str(problem))}", highlight=False, soft_wrap=True)
    more = len(exc.rejected) - SHOWN_ROWS
    if more > 0:
        console.print(f"  and {more:,} more rejected rows", highlight=False)
    if as_json:
        typer.echo(json.dumps(exc.to_dict(), indent=2))


#: ``--format``, shared by every command that reads a dataset (typer reads it per command).
FORMAT_OPTION = typer.Option("auto", "--format", "-f", help="Dataset layout (auto detects).")


class _Commands(TyperGroup):
    """The root command: the one place where user errors become one line and exit 2."""

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        _ARGS.set(tuple(args))  # what fail reads (--json)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except Exception as exc:  # click's Exit/Abort/UsageError are not user errors here
            if not is_user_error(exc) or os.environ.get("AGEGENDER_DEBUG"):
                raise
            fail(exc)


app = typer.Typer(
    name="agegender",
    help="Train, evaluate and run face gender and age classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Commands,
)
