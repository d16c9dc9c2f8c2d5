"""The ``agegender`` command line: one thin function per command, calling the library.

Heavy imports (torch, timm, lightning) stay inside the commands so ``--help`` is fast.

Errors: every command runs inside :class:`_Commands`, where a user-facing exception (bad
config, data or model file, a file that cannot be written, a full disk: see
:func:`agegender.errors.is_user_error`) becomes one line, ``error: <file>: <reason>``, on
stderr and exit status 2. ``AGEGENDER_DEBUG=1`` shows the traceback instead.

This module holds the typer :data:`app`, the stderr :data:`console`, :func:`fail` and
:func:`main`; the commands live in one module per group and register themselves on
``app`` when imported below, in the order ``agegender --help`` lists them:
:mod:`.data` (``data folds|audit|cache``), :mod:`.catalog` (``models``, ``detectors``),
:mod:`.train` (``train``, ``sweep``), :mod:`.evaluate` (``evaluate``, ``cv``, ``report``)
and :mod:`.predict` (``predict``, ``export``, ``serve``, ``bench predict``).
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


# The command modules use app, console and fail from above; importing them registers
# their commands. Typer lists commands in registration order (then the groups), so this
# order is the order of ``agegender --help``.
# isort: off
from agegender.cli import data, catalog, train, evaluate, predict  # noqa: E402, F401
# isort: on


def main() -> None:  # pragma: no cover - console entry point
    app()
