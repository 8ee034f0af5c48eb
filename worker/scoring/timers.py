"""Many cheap timers on one thread: the asynchronous pipeline's deadlines and retry delays.

Each media item in flight has a deadline and, during an outage, a retry delay. A `threading.Timer` per
item would be a thread per item; this is one thread and a heap, so hundreds of waiting items cost
nothing but their heap entries.

Nearly every deadline is cancelled (the item was answered in time), long before it is due. A cancelled
entry lets go of its callback at once, and the heap is rebuilt without cancelled entries once they are
most of it: a callback's closure holds the item's crops and event, and keeping those until a deadline
minutes away made the worker's memory grow with its throughput (about 30 MB per 46 events).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Cancelled entries tolerated in the heap before it may be rebuilt (when they are also more than half of it).
COMPACT_AFTER = 64


class TimerHandle:
    """What `TimerQueue.call_at` returns; `cancel()` makes the callback not run (if it has not started) and
    drops the queue's reference to it."""

    __slots__ = ("_queue", "fn")

    def __init__(self, fn: Callable[[], object] | None, queue: TimerQueue | None = None) -> None:
        self.fn = fn
        self._queue = queue

    @property
    def cancelled(self) -> bool:
        """True once the callback can no longer run: cancelled, dropped by `close()`, or already run."""
        return self.fn is None

    def cancel(self) -> None:
        queue = self._queue
        if queue is None:
            self.fn = None
        else:
            queue._cancel(self)


class TimerQueue:
    """`call_at(monotonic_time, fn)` runs `fn` on the queue's thread at that time; callbacks must be quick."""

    def __init__(self, name: str = "timers") -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._cancelled = 0  # cancelled entries still in the heap
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_at(self, when: float, fn: Callable[[], object]) -> TimerHandle:
        with self._cond:
            if self._closed:
                return TimerHandle(None)
            handle = TimerHandle(fn, self)
            heapq.heappush(self._heap, (when, next(self._ids), handle))
            if self._heap[0][2] is handle:  # the new earliest: the thread must wake sooner
                self._cond.notify()
        return handle

    def call_later(self, delay_s: float, fn: Callable[[], object]) -> TimerHandle:
        return self.call_at(time.monotonic() + max(0.0, delay_s), fn)

    def __len__(self) -> int:
        with self._cond:
            return sum(1 for entry in self._heap if not entry[2].cancelled)

    @property
    def held(self) -> int:
        """Entries in the heap, cancelled ones not yet dropped included (what the queue costs in memory)."""
        with self._cond:
            return len(self._heap)

    def _cancel(self, handle: TimerHandle) -> None:
        """Drop the callback; once cancelled entries are most of the heap, rebuild it without them."""
        with self._cond:
            if handle.fn is None:
                return
            handle.fn = None
            handle._queue = None
            self._cancelled += 1
            if self._cancelled > COMPACT_AFTER and 2 * self._cancelled > len(self._heap):
                self._heap = [entry for entry in self._heap if entry[2].fn is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def close(self) -> None:
        """Drop every pending timer without running it, and stop the thread."""
        with self._cond:
            self._closed = True
            for _when, _id, handle in self._heap:
                handle.fn = handle._queue = None
            self._heap.clear()
            self._cancelled = 0
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    while self._heap and self._heap[0][2].fn is None:
                        heapq.heappop(self._heap)
                        self._cancelled -= 1
                    if self._heap and self._heap[0][0] <= time.monotonic():
                        break
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                if self._closed:
                    return
                _when, _id, handle = heapq.heappop(self._heap)
                fn, handle.fn, handle._queue = handle.fn, None, None  # ran: a later cancel() is a no-op
            if fn is None:
                continue
            try:
                fn()
            except Exception:  # one callback must not stop every other timer
                log.exception("timer callback raised")
