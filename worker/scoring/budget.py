"""Ceilings on work in flight, by size: media bytes being decoded and scored, face crops awaiting scores.

Counting events in flight does not bound memory (one 200 MB video weighs as much as a thousand photos,
one crowd photo carries 200 faces), so the pipeline takes an item's size from a budget before the stage
that holds it and gives it back when the item is done with it. An item larger than the whole budget still
runs, alone, so nothing is refused for being big here (the fetch, decode and face limits do that).

Waiting for room is the asynchronous pipeline's backpressure: a CPU stage waits only when the budget is
full, never for its own item's inference.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class BudgetClosed(Exception):
    """The budget was closed (shutdown) while waiting for room."""


class Budget:
    """A counting semaphore in arbitrary units (bytes, faces) that remembers its high-water mark."""

    def __init__(self, limit: int, unit: str = "bytes") -> None:
        self.limit = max(1, limit)
        self.unit = unit
        self._used = 0
        self._peak = 0
        self._closed = False
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        return self._used

    @property
    def peak(self) -> int:
        """The most ever held at once."""
        return self._peak

    def acquire(self, size: int) -> int:
        """Wait for room for `size`, take it, return what to `release`. `BudgetClosed` once closed.

        An item larger than the limit waits for an empty budget instead.
        """
        size = max(0, size)
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._used == 0 or self._used + size <= self.limit)
            if self._closed:
                raise BudgetClosed(f"the {self.unit} budget closed")
            self._used += size
            self._peak = max(self._peak, self._used)
        return size

    def release(self, size: int) -> None:
        with self._cond:
            self._used -= size
            self._cond.notify_all()

    @contextmanager
    def hold(self, size: int) -> Iterator[None]:
        taken = self.acquire(size)
        try:
            yield
        finally:
            self.release(taken)

    def close(self) -> None:
        """Wake every waiter with `BudgetClosed`; holders may still release."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
