"""TimerQueue: one thread runs many timers in time order; cancelled ones never run."""

from __future__ import annotations

import threading
import time

from worker.timers import TimerQueue


def test_timers_run_in_time_order_and_cancelled_ones_do_not() -> None:
    timers = TimerQueue()
    ran: list[str] = []
    done = threading.Event()
    try:
        now = time.monotonic()
        timers.call_at(now + 0.15, lambda: ran.append("late"))
        timers.call_at(now + 0.05, lambda: ran.append("early"))
        timers.call_at(now + 0.10, lambda: ran.append("cancelled")).cancel()
        timers.call_later(0.0, lambda: ran.append("now"))
        timers.call_at(now + 0.2, done.set)
        assert done.wait(5)
        assert ran == ["now", "early", "late"]
        assert len(timers) == 0
    finally:
        timers.close()


def test_a_raising_callback_does_not_stop_the_others() -> None:
    timers = TimerQueue()
    done = threading.Event()
    try:
        timers.call_later(0.0, lambda: 1 / 0)
        timers.call_later(0.01, done.set)
        assert done.wait(5)
    finally:
        timers.close()


def test_closing_drops_pending_timers() -> None:
    timers = TimerQueue()
    ran: list[int] = []
    timers.call_later(0.2, lambda: ran.append(1))
    timers.close()
    handle = timers.call_later(0.0, lambda: ran.append(2))
    time.sleep(0.3)
    assert ran == [] and handle.cancelled
