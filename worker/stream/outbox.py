"""Answers held for the next transaction (exactly-once mode).

Events of a partition finish out of order, but a transaction may carry only answers whose offsets it also
commits: an answer published past the committed offset would be published again when a crash redelivers
its event. So each answer is held here under its record's (partition, offset) and counts as answered at
once; at commit time the loop takes the answers below each partition's committable position, in offset
order, and publishes them in the same transaction as that position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from worker.core.contracts import DeadLetter, Verdict
from worker.stream.publisher import Send


def _no_ack() -> None:
    """Inside a transaction the commit, not a record's ack, says the broker has it."""


class Outbox:
    """Held answers per partition and offset. Loop thread only."""

    def __init__(self) -> None:
        self._held: dict[TopicPartition, dict[int, list[Send]]] = {}
        self._count = 0  # the loop asks `len()` every turn: kept, not recounted

    def sender(self, tp: TopicPartition, offset: int) -> HeldSender:
        """A `Sender` whose sends are held for (`tp`, `offset`) and acked at once."""
        return HeldSender(self, tp, offset)

    def hold(self, tp: TopicPartition, offset: int, send: Send) -> None:
        self._held.setdefault(tp, {}).setdefault(offset, []).append(send)
        self._count += 1

    def _below(self, tp: TopicPartition, position: int) -> list[int]:
        return sorted(o for o in self._held.get(tp, {}) if o < position)

    def ready(self, positions: Mapping[TopicPartition, int]) -> list[Send]:
        """The held sends below each partition's `positions` entry, partition by partition in offset order."""
        return [send for tp, pos in positions.items() for o in self._below(tp, pos) for send in self._held[tp][o]]

    def forget_below(self, positions: Mapping[TopicPartition, int]) -> None:
        """Their transaction committed: drop what `ready(positions)` returned."""
        for tp, position in positions.items():
            for offset in self._below(tp, position):
                self._count -= len(self._held[tp].pop(offset))

    def drop(self, tps: Iterable[TopicPartition]) -> None:
        """The partitions were lost or rewound: their held answers are never published."""
        for tp in tps:
            self._count -= sum(len(sends) for sends in self._held.pop(tp, {}).values())

    def __len__(self) -> int:
        return self._count


class HeldSender:
    """The loop's `Sender` for one record in exactly-once mode: records the sends, acks them at once."""

    def __init__(self, outbox: Outbox, tp: TopicPartition, offset: int) -> None:
        self._outbox, self._tp, self._offset = outbox, tp, offset

    def _hold(self, send: Send, on_ack: Callable[[], None]) -> None:
        self._outbox.hold(self._tp, self._offset, send)
        on_ack()

    def publish_verdict(self, verdict: Verdict, on_ack: Callable[[], None]) -> None:
        self._hold(lambda p: p.publish_verdict(verdict, _no_ack), on_ack)

    def publish_dead_letter(self, record: DeadLetter, on_ack: Callable[[], None]) -> None:
        self._hold(lambda p: p.publish_dead_letter(record, _no_ack), on_ack)

    def publish_retry(self, record: ConsumerRecord, attempt: int, not_before_ms: int,
                      on_ack: Callable[[], None]) -> None:
        self._hold(lambda p: p.publish_retry(record, attempt, not_before_ms, _no_ack), on_ack)

