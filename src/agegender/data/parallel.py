"""Map a function over many files in parallel processes, in order, with a progress bar.

Used by the audit and the image cache: both do a little CPU-bound work per file
(decode, hash, resize), so items are sent to a :class:`~concurrent.futures.ProcessPoolExecutor`
in chunks (one task per chunk keeps the inter-process overhead small) and the results come
back in input order. Small inputs and ``workers=1`` run in this process, which keeps tests
fast and tracebacks simple.

``fn`` must be picklable (a module-level function or a :func:`functools.partial` of one)
and should not raise for a bad item: return the error as part of the result instead, so one
bad file never loses the others' results.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
R = TypeVar("R")

#: Below this many items the work runs in the calling process (no pool start-up cost).
SERIAL_BELOW = 64


def default_workers() -> int:
    """CPU cores this process may use (``sched_getaffinity`` where available)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def _run_chunk(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    return [fn(item) for item in items]


def make_progress(console: Console | None = None) -> Progress:
    """A rich progress bar on stderr (transient: it disappears when done)."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        transient=True,
    )


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
    description: str = "working",
    console: Console | None = None,
) -> list[R]:
    """``[fn(x) for x in items]`` computed by ``workers`` processes, results in input order.

    ``workers=None`` uses every available core. ``chunk_size`` items go to a process at a
    time (default: about 8 chunks per worker, between 8 and 512 items). The progress bar
    shows only when ``progress`` is true and the console is a terminal.
    """
    n = len(items)
    workers = default_workers() if workers is None else max(1, int(workers))
    workers = min(workers, max(1, n))
    console = console or Console(stderr=True)
    show = progress and console.is_terminal and n > 0
    if chunk_size is None:
        chunk_size = min(512, max(8, -(-n // (workers * 8))))
    starts = range(0, n, chunk_size)

    bar = make_progress(console) if show else None
    task = bar.add_task(description, total=n) if bar else None
    results: list[list[R] | None] = [None] * len(starts)
    try:
        if bar:
            bar.start()
        if workers == 1 or n < SERIAL_BELOW:
            for k, s in enumerate(starts):
                results[k] = _run_chunk(fn, items[s : s + chunk_size])
                if bar:
                    bar.advance(task, len(results[k]))
        else:
            pool = ProcessPoolExecutor(max_workers=workers)
            try:
                futures = {
                    pool.submit(_run_chunk, fn, list(items[s : s + chunk_size])): k
                    for k, s in enumerate(starts)
                }
                for fut in as_completed(futures):
                    k = futures[fut]
                    results[k] = fut.result()
                    if bar:
                        bar.advance(task, len(results[k]))
            except BaseException:  # Ctrl-C or a crashed worker: drop the queued chunks
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
    finally:
        if bar:
            bar.stop()
    return [r for chunk in results for r in chunk]  # type: ignore[union-attr]
