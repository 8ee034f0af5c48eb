"""One way to retry: capped exponential back-off, and the breaker that says a dependency is down.

`Backoff` paces the pipeline's inference retries while Triton restarts (with `RetrySettings`' bounds), the
publisher's re-sends of what the producer gave up on, and the Triton backend's readiness wait (`retry_call`);
`Breaker` says the inference dependency is down, so the consume loop takes no new work meanwhile.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Delays `initial_s * factor**n`, capped at `max_s`, each scaled by a random factor in [1-jitter, 1]."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 10.0
    jitter: float = 0.2

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """An endless series of delays (jitter spreads the retries of many workers after one outage)."""
        rand = rng or random.Random()
        delay = self.initial_s
        while True:
            yield max(0.0, min(delay, self.max_s) * (1.0 - self.jitter * rand.random()))
            delay = min(delay * self.factor, self.max_s)


class GaveUp(Exception):
    """Retrying stopped at the deadline; `last` is the failure of the final attempt."""

    def __init__(self, last: BaseException, attempts: int) -> None:
        super().__init__(f"gave up after {attempts} attempts: {last}")
        self.last = last
        self.attempts = attempts


def retry_call(
    fn: Callable[[], T],
    *,
    retry_on: Callable[[BaseException], bool],
    backoff: Backoff,
    deadline_s: float,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """`fn()`, called again after each failure `retry_on` accepts, until it succeeds or `deadline_s` passes.

    Failures `retry_on` rejects propagate at once. At the deadline (or when `should_stop()` says so) the
    last failure is raised wrapped in `GaveUp`. `on_retry(error, attempt, delay)` runs before each sleep.
    """
    end = clock() + deadline_s
    for attempt, delay in enumerate(backoff.delays(), start=1):
        try:
            return fn()
        except Exception as exc:
            if not retry_on(exc):
                raise
            left = end - clock()
            if left <= 0 or (should_stop is not None and should_stop()):
                raise GaveUp(exc, attempt) from exc
            wait = min(delay, left)
            if on_retry is not None:
                on_retry(exc, attempt, wait)
            sleep(wait)
    raise AssertionError("Backoff.delays() is endless")  # pragma: no cover


class Breaker:
    """Whether a dependency the verdict needs is down, as seen by the work that uses it.

    Any failure opens it; the first success closes it. While it is open the consume loop takes no new
    work and /readyz fails; in-flight work keeps retrying with `Backoff` and closes it when the
    dependency answers again. `on_change(open)` feeds the breaker-state metric.

    An optional dependency (Redis) is skipped while the breaker is open, and tried again `retry_after_s`
    after its last failure (`allows`): an outage costs one timeout per cool-off, not one per event.
    """

    def __init__(self, name: str, on_change: Callable[[bool], None] | None = None,
                 retry_after_s: float = 0.0) -> None:
        self.name = name
        self.retry_after_s = retry_after_s
        self._on_change = on_change
        self._lock = threading.Lock()
        self._open_since: float | None = None
        self._last_failure = 0.0

    @property
    def is_open(self) -> bool:
        return self._open_since is not None

    def allows(self) -> bool:
        """Whether to use the dependency now: closed, or `retry_after_s` past its last failure (a probe)."""
        return self._open_since is None or time.monotonic() - self._last_failure >= self.retry_after_s

    def failure(self) -> bool:
        """Record a failure; True when it opened the breaker (the first failure of an outage)."""
        with self._lock:
            changed = self._open_since is None
            self._last_failure = time.monotonic()
            if changed:
                self._open_since = self._last_failure
        if changed and self._on_change is not None:
            self._on_change(True)
        return changed

    def success(self) -> bool:
        """Record a success; True when it closed the breaker (the dependency is back)."""
        with self._lock:
            changed = self._open_since is not None
            self._open_since = None
        if changed and self._on_change is not None:
            self._on_change(False)
        return changed
