"""TimerQueue: one thread runs many timers in time order; cancelled ones never run."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Callable

from worker.scoring.timers import COMPACT_AFTER, TimerQueue


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


def _returning(value: object) -> Callable[[], object]:
    return lambda: value


def test_a_cancelled_timer_lets_go_of_its_callback_at_once() -> None:
    """The pipeline's deadline timers close over an item's crops and event: a cancelled one that kept them until
    its deadline (minutes away) made the worker's memory grow with its throughput."""

    class Payload:
        pass

    timers = TimerQueue()
    try:
        payload = Payload()
        alive = weakref.ref(payload)
        handle = timers.call_later(600, _returning(payload))
        del payload  # the callback's closure is the only reference left
        gc.collect()
        assert alive() is not None  # pending: the queue holds the callback
        handle.cancel()
        gc.collect()
        assert alive() is None
        assert handle.cancelled
    finally:
        timers.close()


def test_cancelled_entries_do_not_pile_up_in_the_heap() -> None:
    timers = TimerQueue()
    try:
        keep = timers.call_later(600, lambda: None)
        for _ in range(10 * COMPACT_AFTER):
            timers.call_later(600, lambda: None).cancel()
        assert timers.held <= 2 * COMPACT_AFTER + 2
        assert len(timers) == 1 and not keep.cancelled
    finally:
        timers.close()


def test_cancelling_a_timer_that_already_ran_changes_nothing() -> None:
    timers = TimerQueue()
    ran = threading.Event()
    try:
        handle = timers.call_later(0.0, ran.set)
        assert ran.wait(5)
        handle.cancel()  # too late: a no-op
        second = threading.Event()
        timers.call_later(0.0, second.set)
        assert second.wait(5)
        assert timers.held == 0
    finally:
        timers.close()
