"""Many cheap timers on one thread: the asynchronous pipeline's deadlines and retry delays.

Each media item in flight has a deadline and, during an outage, a retry delay. A `threading.Timer` per
item would be a thread per item; this is one thread and a heap, so hundreds of waiting items cost
nothing but their heap entries.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class TimerHandle:
    """What `TimerQueue.call_at` returns; `cancel()` makes the callback not run (if it has not started)."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class TimerQueue:
    """`call_at(monotonic_time, fn)` runs `fn` on the queue's thread at that time; callbacks must be quick."""

    def __init__(self, name: str = "timers") -> None:
        self._heap: list[tuple[float, int, TimerHandle, Callable[[], object]]] = []
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_at(self, when: float, fn: Callable[[], object]) -> TimerHandle:
        handle = TimerHandle()
        with self._cond:
            if self._closed:
                handle.cancelled = True
                return handle
            heapq.heappush(self._heap, (when, next(self._ids), handle, fn))
            if self._heap[0][2] is handle:  # the new earliest: the thread must wake sooner
                self._cond.notify()
        return handle

    def call_later(self, delay_s: float, fn: Callable[[], object]) -> TimerHandle:
        return self.call_at(time.monotonic() + max(0.0, delay_s), fn)

    def __len__(self) -> int:
        with self._cond:
            return sum(1 for entry in self._heap if not entry[2].cancelled)

    def close(self) -> None:
        """Drop every pending timer without running it, and stop the thread."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                    if self._heap and self._heap[0][0] <= time.monotonic():
                        break
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                if self._closed:
                    return
                _when, _id, handle, fn = heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            try:
                fn()
            except Exception:  # one callback must not stop every other timer
                log.exception("timer callback raised")
