"""The one retry helper: capped exponential back-off, give-up at the deadline, the breaker, and the byte budget."""

from __future__ import annotations

import itertools
import random
import threading
import time

import pytest

from worker.core import retry
from worker.core.retry import Backoff, Breaker, GaveUp, retry_call
from worker.scoring.budget import Budget


def test_backoff_grows_and_is_capped() -> None:
    delays = list(itertools.islice(Backoff(0.5, 2.0, 4.0, jitter=0.0).delays(), 6))
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    jittered = list(itertools.islice(Backoff(1.0, 2.0, 8.0, jitter=0.5).delays(random.Random(1)), 50))
    assert all(0.5 * min(2.0**i, 8.0) <= d <= min(2.0**i, 8.0) for i, d in enumerate(jittered))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_retry_call_retries_until_success() -> None:
    clock, calls = Clock(), []

    def flaky() -> str:
        calls.append(clock.now)
        if len(calls) < 4:
            raise ConnectionError("down")
        return "up"

    assert retry_call(flaky, retry_on=lambda e: isinstance(e, ConnectionError), backoff=Backoff(1, 2, 3, 0),
                      deadline_s=100, sleep=clock.sleep, clock=lambda: clock.now) == "up"
    assert clock.slept == [1, 2, 3]


def test_retry_call_gives_up_at_the_deadline_and_never_sleeps_past_it() -> None:
    clock = Clock()

    def down() -> None:
        raise ConnectionError("still down")

    with pytest.raises(GaveUp) as info:
        retry_call(down, retry_on=lambda e: True, backoff=Backoff(1, 2, 10, 0), deadline_s=5,
                   sleep=clock.sleep, clock=lambda: clock.now)
    assert clock.now == 5 and clock.slept == [1, 2, 2]
    assert isinstance(info.value.last, ConnectionError) and info.value.attempts == 4


def test_retry_call_does_not_retry_what_retry_on_refuses() -> None:
    calls = []

    def bad() -> None:
        calls.append(1)
        raise ValueError("wrong answer")

    with pytest.raises(ValueError):
        retry_call(bad, retry_on=lambda e: isinstance(e, ConnectionError), backoff=Backoff(), deadline_s=10)
    assert calls == [1]


def test_byte_budget_bounds_what_is_held_and_lets_a_big_item_run_alone() -> None:
    budget, seen, lock = Budget(100), [], threading.Lock()

    def work(size: int) -> None:
        with budget.hold(size):
            with lock:
                seen.append((size, budget.used))
            time.sleep(0.02)

    threads = [threading.Thread(target=work, args=(s,)) for s in [60, 60, 30, 30, 250, 10]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert budget.used == 0 and len(seen) == 6
    for size, used in seen:
        assert used == 250 if size == 250 else used <= 100, (size, used)


def test_an_optional_dependency_is_skipped_while_open_and_tried_again_after_the_cool_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(retry.time, "monotonic", lambda: now[0])
    breaker = Breaker("redis", retry_after_s=5.0)
    assert breaker.allows()
    assert breaker.failure() and not breaker.allows(), "the first failure opens it: skip"
    now[0] += 4.9
    assert not breaker.allows()
    now[0] += 0.2
    assert breaker.allows(), "past the cool-off: one probe"
    assert not breaker.failure() and not breaker.allows(), "a failed probe restarts the cool-off, stays open"
    now[0] += 5.0
    assert breaker.success() and breaker.allows() and not breaker.is_open
    assert not breaker.success(), "closing twice says so once"
