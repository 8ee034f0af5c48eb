"""Stage 1, consume: a kafka-python consumer in a group, with manual commits and pause/resume backpressure.

Offsets are never auto-committed. The service commits only what `OffsetTracker` reports as contiguous and
acknowledged, so a crash re-delivers (at-least-once) and never skips an event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from worker import metrics
from worker.kafka_config import connection_config
from worker.settings import KafkaSettings

log = logging.getLogger(__name__)


class _Listener(ConsumerRebalanceListener):
    def __init__(
        self,
        on_revoked: Callable[[list[TopicPartition]], None],
        on_assigned: Callable[[list[TopicPartition]], None],
    ) -> None:
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._on_revoked(list(revoked))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._on_assigned(list(assigned))


class EventConsumer:
    """Owns the KafkaConsumer. Not thread-safe (kafka-python's consumer is not): call it from the loop only."""

    def __init__(
        self,
        settings: KafkaSettings,
        on_revoked: Callable[[list[TopicPartition]], None],
        on_assigned: Callable[[list[TopicPartition]], None],
    ) -> None:
        self.settings = settings
        self.paused = False
        self._consumer = KafkaConsumer(
            group_id=settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset=settings.auto_offset_reset,
            max_poll_records=settings.max_poll_records,
            session_timeout_ms=settings.session_timeout_ms,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            **connection_config(settings),
        )
        self._consumer.subscribe([settings.events_topic], listener=_Listener(on_revoked, on_assigned))

    def poll(self, timeout_ms: int, max_records: int) -> list[ConsumerRecord]:
        if max_records <= 0:
            # Still call poll: it drives heartbeats, rebalances and (for paused partitions) returns nothing.
            self._consumer.poll(timeout_ms=timeout_ms, max_records=1, update_offsets=True)
            return []
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        return [record for records in batches.values() for record in records]

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment())

    def pause(self) -> None:
        """Stop fetching from every assigned partition (the group membership stays alive)."""
        if not self.paused:
            self._consumer.pause(*self._consumer.assignment())
            self.paused = True
            metrics.PAUSED.set(1)
            log.info("backpressure: partitions paused")

    def resume(self) -> None:
        if self.paused:
            self._consumer.resume(*self._consumer.paused())
            self.paused = False
            metrics.PAUSED.set(0)
            log.info("backpressure: partitions resumed")

    def reapply_pause(self) -> None:
        """After a rebalance the new assignment starts unpaused; pause it again if we were paused."""
        if self.paused:
            self._consumer.pause(*self._consumer.assignment())

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        self._consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()})
        metrics.COMMITS.inc()

    def close(self) -> None:
        self._consumer.close(autocommit=False)

    def lag(self, timeout_ms: int = 2000) -> dict[TopicPartition, int]:
        """Per assigned partition: its end offset (asked of the broker) minus this consumer's position."""
        assigned = list(self._consumer.assignment())
        if not assigned:
            return {}
        ends = self._consumer.end_offsets(assigned, timeout_ms=timeout_ms)
        positions = {tp: self._consumer.position(tp, timeout_ms=timeout_ms) for tp in assigned}
        return {tp: max(0, ends[tp] - pos) for tp, pos in positions.items() if pos is not None and tp in ends}
