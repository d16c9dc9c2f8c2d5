"""The ``agegender`` command line: one thin function per command, calling the library.

Heavy imports (torch, timm, lightning) stay inside the commands so ``--help`` is fast.

Errors: every command runs inside :class:`.base._Commands`, where a user-facing exception (bad
config, data or model file, a file that cannot be written, a full disk: see
:func:`agegender.errors.is_user_error`) becomes one line, ``error: <file>: <reason>``, on
stderr and exit status 2. ``AGEGENDER_DEBUG=1`` shows the traceback instead.

The typer :data:`app`, the stderr :data:`console` and :func:`fail` live in :mod:`.base`
(re-exported here); this module holds :func:`main`. The commands live in one module per
group and register themselves on ``app`` when imported below, in the order
``agegender --help`` lists them:
:mod:`.data` (``data folds|audit|cache``), :mod:`.catalog` (``models``, ``detectors``),
:mod:`.train` (``train``, ``sweep``), :mod:`.evaluate` (``evaluate``, ``cv``, ``report``)
and :mod:`.predict` (``predict``, ``export``, ``serve``, ``bench predict``).
"""

from __future__ import annotations

from agegender.cli.base import FORMAT_OPTION, app, console, fail

__all__ = ["FORMAT_OPTION", "app", "console", "fail", "main"]

# The command modules use app, console and fail from .base; importing them registers
# their commands. Typer lists commands in registration order (then the groups), so this
# order is the order of ``agegender --help``.
# isort: off
from agegender.cli import data, catalog, train, evaluate, predict  # noqa: E402, F401
# isort: on


def main() -> None:  # pragma: no cover - console entry point
    app()
