"""User-facing errors: one line that names the file, for every command and the library.

* :class:`ModelFileError`: a file that is not a model (or weights) we can load.
* :func:`torch_load`: ``torch.load(weights_only=True)`` where every failure of a bad file
  (text, random bytes, an empty file, a pickle of other objects) is one ModelFileError.
  We never load with ``weights_only=False`` (a pickle can run code), so PyTorch's advice
  to try it is never shown.
* :func:`check_writable`: fail before any work when an output cannot be written.
* :func:`is_user_error` / :func:`error_line`: which exceptions are the user's to fix (bad
  input, a file system problem) and the ``<file>: <reason>`` line that says so; the CLI
  turns them into ``error: <line>`` and exit status 2 in one place.
"""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path
from typing import Any


class ModelFileError(ValueError):
    """A file that is not a model or weights file we can load; ``str()`` names it."""


def torch_load(path: str | os.PathLike, *, mmap: bool = False) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; a file that is not
    PyTorch weights raises :class:`ModelFileError` naming it (a missing file: the usual
    FileNotFoundError). ``mmap``: map a zip-format file instead of reading it (a cheap check
    of a large file)."""
    import warnings
    import zipfile

    import torch

    p = Path(path)
    if p.is_file() and p.stat().st_size == 0:
        raise ModelFileError(f"{p}: not a model file we can load (the file is empty)")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": not for users
            warnings.simplefilter("ignore")
            return torch.load(
                p, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(p)
            )
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise ModelFileError(
            f"{p}: not a model file we can load (not PyTorch weights saved with torch.save)"
        ) from exc


def check_writable(path: str | os.PathLike, *, folder: bool = False) -> Path:
    """Raise a one-line OSError naming ``path`` when it cannot be written: it (a folder) or
    its parent (a file) is a file, or the nearest existing folder is not writable. Missing
    folders are fine: the writers create them. Returns ``path``; creates nothing."""
    p = Path(path)
    if p.exists():
        if folder and not p.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(p))
        if not folder and p.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(p))
    here = p if folder else p.parent
    here = here if str(here) else Path(".")
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{here} is a file, not a folder", str(p))
    if not os.access(here, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"permission denied (in {here})", str(p))
    return p


_REASONS = {
    errno.ENOSPC: "no space left on device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or directory",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "already exists (and is not a folder)",
}


def is_user_error(exc: BaseException) -> bool:
    """A problem with the input or the file system, not a bug: bad configs, data, model
    files (ValueError and its kinds: ConfigError, DatasetError, ModelFileError), any
    OSError (missing or unwritable files, a full disk), unpickling errors, ONNX Runtime's
    load errors."""
    if isinstance(exc, ValueError | OSError | pickle.UnpicklingError | EOFError):
        return True
    return type(exc).__module__.startswith("onnxruntime")


def error_line(exc: BaseException) -> str:
    """One line for a user error: ``<file>: <reason>`` for an OSError with a file name,
    else the first line of the message (which, in this package, names the file)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        reason = _REASONS.get(exc.errno)
        if reason is None or (exc.strerror and exc.strerror != os.strerror(exc.errno)):
            reason = exc.strerror or reason or str(exc)  # our own wording (check_writable)
        return f"{exc.filename}: {reason}" if exc.filename is not None else reason
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


__all__ = [
    "ModelFileError",
    "check_writable",
    "error_line",
    "is_user_error",
    "torch_load",
]
