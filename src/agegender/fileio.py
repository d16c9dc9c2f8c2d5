"""Atomic file writes shared by every writer of run files.

>>> with atomic_path("runs/x/results.json") as tmp:
...     tmp.write_text("{}")
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block
    ends without error, removed when it fails. The name carries the process id, so several
    processes (``cv --fold`` runs, DDP ranks) may write the same file at once: readers see
    the old file or a whole new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["atomic_path"]
