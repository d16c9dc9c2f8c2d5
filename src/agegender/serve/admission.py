"""Admission control for the service: bounded work lanes that say "busy" instead of stalling.

Each request's images are counted in decoded pixels from their headers before anything is
decoded. A request over the per-request budget is refused (413). The others go to one of
two :class:`Lane` s by their pixel count, so a few expensive requests cannot take the CPU
from ordinary ones:

- ``light``: ordinary photos (at most ``heavy_pixels`` per request); ``max_concurrency``
  requests run at once and ``max_queue`` more may wait.
- ``heavy``: pixel-heavy requests; one runs at a time (with its own decode thread) and
  ``heavy_queue`` more may wait.

When a lane is full the request is answered at once with ``503`` and a ``Retry-After``
header estimated from the lane's recent service times. A request's work is skipped or
stopped (between images and batches) when its time is up or its client went away, and the
lane's slot is held until the work has really stopped, so abandoned work never piles up.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Busy(Exception):
    """A lane is full: answer 503 with ``Retry-After: retry_after`` seconds."""

    def __init__(self, lane: str, retry_after: int) -> None:
        super().__init__(f"server busy ({lane} lane full)")
        self.lane, self.retry_after = lane, retry_after


class Lane:
    """``slots`` jobs running at once in their own threads, at most ``queue`` waiting."""

    def __init__(self, name: str, slots: int, queue: int) -> None:
        self.name = name
        self.slots = max(1, int(slots))
        self.capacity = self.slots + max(0, int(queue))
        self.pending = 0  # submitted and not finished (running + waiting)
        self.refused = 0
        self.mean_s = 0.5  # moving average of a job's run time, for Retry-After
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.slots, thread_name_prefix=f"serve-{name}")

    def retry_after(self) -> int:
        """Seconds until a slot is likely free (at least 1)."""
        return max(1, math.ceil(self.mean_s * (self.pending + 1) / self.slots))

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` in the lane, or raise :class:`Busy` when the lane is full."""
        with self._lock:
            if self.pending >= self.capacity:
                self.refused += 1
                raise Busy(self.name, self.retry_after())
            self.pending += 1

        def timed() -> T:
            start = time.perf_counter()
            try:
                return fn()
            finally:
                self.mean_s = 0.8 * self.mean_s + 0.2 * (time.perf_counter() - start)

        future = self._pool.submit(timed)
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: Future[Any]) -> None:
        with self._lock:
            self.pending -= 1

    def stats(self) -> dict[str, Any]:
        return {
            "slots": self.slots,
            "queue": self.capacity - self.slots,
            "pending": self.pending,
            "refused": self.refused,
            "mean_s": round(self.mean_s, 3),
        }

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
