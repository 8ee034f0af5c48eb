"""Crash-loop guard: a record that was in flight each time a worker died is dead-lettered, not retried.

Before a record is processed its delivery count is incremented in Redis (one pipelined INCR + EXPIRE per
poll batch); once it is answered the counter is deleted. A worker killed mid-record leaves the counter
behind, so the next owner sees how many deliveries died with it. Above `max_deliveries` the record goes
to the DLQ unprocessed and the partition moves on. Work handed back on purpose (shutdown, revocation)
is decremented, so only deaths count.

Redis down: the guard fails open (records are processed, counts are not kept) and says so once; the
worker's own defences (bounded parser, limits before allocation) are what stop a poison record then.
Redis is the shared store because the next owner is usually another pod.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from worker.core.retry import Breaker
from worker.core.settings import CacheSettings
from worker.scoring.cache import redis_client

log = logging.getLogger(__name__)

#: One record: (topic, partition, offset).
RecordId = tuple[str, int, int]


class DeliveryGuard:
    """Counts deliveries per record in Redis. Call from the loop thread only."""

    def __init__(self, settings: CacheSettings, group_id: str, max_deliveries: int, ttl_s: int = 7 * 86400,
                 client: Any | None = None) -> None:
        self.max_deliveries = max_deliveries
        self._prefix = f"dfmod:deliveries:{group_id}:"
        self._ttl_s = ttl_s
        self.breaker = Breaker("redis", retry_after_s=settings.retry_after_s)
        self._client = client
        if client is None and max_deliveries > 0:
            self._client = redis_client(settings)

    @property
    def enabled(self) -> bool:
        return self.max_deliveries > 0 and self._client is not None

    def _key(self, rid: RecordId) -> str:
        return f"{self._prefix}{rid[0]}:{rid[1]}:{rid[2]}"

    def _run(self, op: str, commands: list[tuple[str, tuple[Any, ...]]]) -> list[Any] | None:
        client = self._client
        if client is None or self.max_deliveries <= 0 or not commands or not self.breaker.allows():
            return None
        try:
            pipe = client.pipeline(transaction=False)
            for name, args in commands:
                getattr(pipe, name)(*args)
            result = list(pipe.execute())
        except Exception as exc:
            if self.breaker.failure():
                log.warning("crash-loop guard: redis %s failed, guard off for %.0f s: %s",
                            op, self.breaker.retry_after_s, exc)
            return None
        if self.breaker.success():
            log.info("crash-loop guard: redis is back, delivery counts kept again")
        return result

    def begin(self, records: Iterable[RecordId]) -> dict[RecordId, int]:
        """Count one more delivery of each record; returns the counts (empty while Redis is unreachable)."""
        rids = list(records)
        commands: list[tuple[str, tuple[Any, ...]]] = []
        for rid in rids:
            commands += [("incr", (self._key(rid),)), ("expire", (self._key(rid), self._ttl_s))]
        result = self._run("INCR", commands)
        if result is None:
            return {}
        return {rid: int(result[2 * i]) for i, rid in enumerate(rids)}

    def poisoned(self, count: int | None) -> bool:
        """Whether a record with this many deliveries died with its worker too often to try again."""
        return self.enabled and count is not None and count > self.max_deliveries

    def done(self, records: Iterable[RecordId]) -> None:
        """The records are answered: forget them."""
        self._run("DEL", [("delete", (self._key(rid),)) for rid in records])

    def handed_back(self, records: Iterable[RecordId]) -> None:
        """The records are left to the next owner on purpose: this delivery did not die with them."""
        self._run("DECR", [("decr", (self._key(rid),)) for rid in records])

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception as exc:
                log.debug("closing the guard's redis client: %s", exc)
