"""A memory ceiling by size: media threads hold the bytes of the item they decode and score.

Counting events in flight does not bound memory (one 200 MB video weighs as much as a thousand photos),
so the pipeline takes the item's size from this budget before decoding and gives it back after scoring.
An item larger than the whole budget still runs, alone, so nothing is refused for being big here (the
fetch and decode limits do that).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ByteBudget:
    """A counting semaphore in bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._used = 0
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        return self._used

    @contextmanager
    def hold(self, size: int) -> Iterator[None]:
        size = max(0, size)
        with self._cond:
            # Wait for room; an item larger than the limit waits for an empty budget instead.
            self._cond.wait_for(lambda: self._used == 0 or self._used + size <= self.limit)
            self._used += size
        try:
            yield
        finally:
            with self._cond:
                self._used -= size
                self._cond.notify_all()
