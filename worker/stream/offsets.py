"""Which Kafka offsets may be committed: at-least-once with many events in flight (DESIGN.md 1, stage 9).

Events of one partition finish out of order (a still image overtakes a long video), but an offset may be
committed only when every earlier offset taken from that partition has its verdict (or DLQ record)
acknowledged by the broker. So per partition we keep the offsets taken and not yet acknowledged; the next
offset to commit is the smallest of them, or (none left) one past the highest offset taken. This does not
assume offsets are consecutive: compacted topics and transaction markers leave gaps in offsets.

Partition keys: kafka-python's `TopicPartition`. It is a namedtuple, so a plain `(topic, partition)` tuple
may be passed anywhere instead; keys are normalised to `TopicPartition`, which is what `committable()`
returns, ready for `KafkaConsumer.commit`. Offsets returned are Kafka commit positions: the offset of the
next record to read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from kafka import TopicPartition

PartitionKey: TypeAlias = "TopicPartition | tuple[str, int]"


def _key(tp: PartitionKey) -> TopicPartition:
    return tp if isinstance(tp, TopicPartition) else TopicPartition(tp[0], tp[1])


@dataclass
class _Partition:
    tp: TopicPartition
    epoch: int               # which ownership of the partition this is (a re-assignment starts a new one)
    unacked: set[int] = field(default_factory=set)
    high: int = 0            # one past the highest offset taken
    committed: int = 0       # the last commit position reported through mark_committed (or the start)

    def position(self) -> int:
        return min(self.unacked) if self.unacked else self.high


class OffsetTracker:
    """Written by the loop thread only (acks come back to it); locked so other threads may read it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[TopicPartition, _Partition] = {}
        self._epochs = 0

    def track(self, tp: PartitionKey, offset: int) -> int:
        """A record was taken from `tp` at `offset` and is now in flight. Returns the ownership epoch to
        pass to `ack`, so an answer from before a revocation can never acknowledge a redelivery."""
        tp = _key(tp)
        with self._lock:
            part = self._parts.get(tp)
            if part is None:
                # The consumer starts a partition at its committed position, so that is the baseline:
                # nothing to commit until something past it is acknowledged.
                self._epochs += 1
                part = self._parts[tp] = _Partition(tp=tp, epoch=self._epochs, high=offset, committed=offset)
            part.unacked.add(offset)
            part.high = max(part.high, offset + 1)
            return part.epoch

    def ack(self, tp: PartitionKey, offset: int, epoch: int | None = None) -> bool:
        """The answer for `offset` is on the broker. False when it was not tracked, or tracked under another
        epoch (the partition was revoked since): such a late answer never moves a commit."""
        with self._lock:
            part = self._parts.get(_key(tp))
            if part is None or offset not in part.unacked or (epoch is not None and epoch != part.epoch):
                return False
            part.unacked.discard(offset)
            return True

    def owns(self, tp: PartitionKey, epoch: int) -> bool:
        """Whether `tp` is still tracked under `epoch` (work of a revoked partition is not answered)."""
        with self._lock:
            part = self._parts.get(_key(tp))
            return part is not None and part.epoch == epoch

    def committable(self) -> dict[TopicPartition, int]:
        """Per partition, the next commit position, only where it advanced past the last `mark_committed`."""
        with self._lock:
            out: dict[TopicPartition, int] = {}
            for part in self._parts.values():
                pos = part.position()
                if pos > part.committed:
                    out[part.tp] = pos
            return out

    def mark_committed(self, offsets: Mapping[TopicPartition, int] | Mapping[tuple[str, int], int]) -> None:
        """The broker accepted these commit positions. Partitions no longer tracked are ignored."""
        with self._lock:
            for tp, offset in offsets.items():
                part = self._parts.get(_key(tp))
                if part is not None:
                    part.committed = max(part.committed, offset)

    def committed_positions(self, tps: Iterable[PartitionKey]) -> dict[TopicPartition, int]:
        """The last commit position of each tracked partition among `tps` (where a rewind restarts it)."""
        with self._lock:
            return {part.tp: part.committed for tp in tps if (part := self._parts.get(_key(tp))) is not None}

    def pending(self, tp: PartitionKey | None = None) -> int:
        """Records taken and not acknowledged: of one partition, or of all of them."""
        with self._lock:
            if tp is not None:
                part = self._parts.get(_key(tp))
                return len(part.unacked) if part is not None else 0
            return sum(len(p.unacked) for p in self._parts.values())

    def in_flight(self) -> int:
        """Records taken and not acknowledged, all partitions together (the backpressure measure)."""
        return self.pending()

    def revoke(self, tps: Iterable[PartitionKey]) -> None:
        """Forget partitions lost in a rebalance (only those: the others keep their state); late acks for
        them are then ignored."""
        with self._lock:
            for tp in tps:
                self._parts.pop(_key(tp), None)

    def in_flight_records(self) -> list[tuple[TopicPartition, int]]:
        """Every (partition, offset) taken and not acknowledged."""
        with self._lock:
            return [(p.tp, off) for p in self._parts.values() for off in sorted(p.unacked)]

    def unacked(self, tp: PartitionKey) -> list[int]:
        """The offsets of `tp` still in flight, ascending."""
        with self._lock:
            part = self._parts.get(_key(tp))
            return sorted(part.unacked) if part is not None else []
