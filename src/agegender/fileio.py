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
    the old file or a whole new one, never a half-written one. An OSError while writing
    (e.g. a full disk) names ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, say: name the file the user asked for, not tmp
        if exc.errno is None or exc.filename not in (None, str(tmp), tmp):
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    finally:
        tmp.unlink(missing_ok=True)


def read_epoch_metrics(path: str | os.PathLike):
    """A run's ``metrics.csv`` as a DataFrame, one row per epoch (empty when there is no
    file). Files written before test metrics had their own place may end with a row of
    ``test/*`` metrics only: it is not an epoch and is left out, as are ``test/*`` columns."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        return pd.DataFrame()
    rows = pd.read_csv(path)
    rows = rows.drop(columns=[c for c in rows.columns if str(c).startswith("test/")])
    metrics = [c for c in rows.columns if c not in ("epoch", "step")]
    if metrics:
        rows = rows.dropna(subset=metrics, how="all")
    return rows.reset_index(drop=True)


__all__ = ["atomic_path", "read_epoch_metrics"]
