"""Stage 1, consume: a kafka-python consumer in a group, with manual commits and pause/resume backpressure.

Offsets are never auto-committed. The loop commits only what `OffsetTracker` reports as contiguous and
acknowledged, so a crash re-delivers (at-least-once) and never skips an event.

Rebalances. kafka-python runs rebalance listeners on its network thread, from inside `poll()`; a listener
that calls a blocking consumer method there fails ("Cannot block on net.run() from the IO thread"). So the
listener only records what changed (`RebalanceEvent`) and the loop thread handles it after `poll()`
returns. That is sound because the group uses the cooperative-sticky assignor (KIP-429): a partition is
revoked *after* the rebalance round that moves it, while this member still belongs to the current
generation, and its new owner gets it only in a follow-up round that starts with this member's next
`poll()`. Between the two the loop waits for the revoked partitions' work and commits it. Partitions
kept across a rebalance are never revoked, so their in-flight work and tracker state carry on. With the
eager protocol (everything revoked before the rebalance) no commit after the callback could be valid.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.base import MemberState
from kafka.errors import CorruptRecordError

from worker.core.settings import KafkaSettings
from worker.obs import metrics
from worker.stream.kafka_config import commit_positions, connection_config

log = logging.getLogger(__name__)

RebalanceKind = Literal["assigned", "revoked", "lost"]

#: Header of the stand-in record `EventConsumer.poll` returns for one kafka-python could not decode (the reason).
UNDECODABLE_HEADER = "dfmod-undecodable"


def undecodable_reason(record: ConsumerRecord) -> str | None:
    """The reason, when `record` stands in for one kafka-python could not decode (it carries no bytes)."""
    if record.value is not None or record.key is not None:
        return None
    for key, value in record.headers or []:
        if key == UNDECODABLE_HEADER:
            return (value or b"").decode(errors="replace")
    return None


@dataclass(frozen=True)
class RebalanceEvent:
    """What a rebalance changed. `lost`: the membership expired; nothing of these may be committed."""

    kind: RebalanceKind
    partitions: frozenset[TopicPartition]


class _Recorder(ConsumerRebalanceListener):
    """Runs on kafka-python's network thread: records, never calls the consumer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[RebalanceEvent] = []

    def _add(self, kind: RebalanceKind, tps: Iterable[TopicPartition]) -> None:
        parts = frozenset(tps)
        if parts:
            with self._lock:
                self._events.append(RebalanceEvent(kind, parts))

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._add("revoked", revoked)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._add("assigned", assigned)

    def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        self._add("lost", lost)

    def drain(self) -> list[RebalanceEvent]:
        with self._lock:
            events, self._events = self._events, []
        return events


def finish_stalled_join(coordinator: object) -> bool:
    """Ask for a rejoin when kafka-python has stopped driving a join it started; True when it did.

    kafka-python 3.0 (checked up to 3.0.12) loops `ensure_active_group` only while `need_rejoin()`. A join
    set off by new partition metadata (the usual first one: topics created just before the worker joined)
    makes the leader assign against the new metadata, which clears `need_rejoin()` before SyncGroup
    answers. When `poll()`'s timer runs out in between, no later poll ever awaits that join: the member
    sits in REBALANCING with nothing assigned, for good. Seen as a worker never ready
    (`kafka_assignment`) about once in 15 fresh groups. Requesting a rejoin makes the next poll await the
    join still in flight, or send a new one when it already finished unseen.
    """
    need_rejoin = getattr(coordinator, "need_rejoin", None)
    request_rejoin = getattr(coordinator, "request_rejoin", None)
    if getattr(coordinator, "state", None) != MemberState.REBALANCING or need_rejoin is None or request_rejoin is None:
        return False
    if need_rejoin():
        return False
    log.info("kafka-python left a group join unfinished: rejoining")
    request_rejoin()
    return True


class _UnreadJoin:
    """A join in flight or finished whose answer kafka-python has not read yet: it says "not done" so the
    next `poll()` awaits it (a finished one answers at once) instead of discarding it for a new JoinGroup."""

    is_done = False

    def __init__(self, task: Any) -> None:
        self.task = task

    def add_callback(self, fn: Callable[..., object]) -> object:
        return self.task.add_callback(fn)

    def add_errback(self, fn: Callable[..., object]) -> object:
        return self.task.add_errback(fn)


def keep_join_answer(coordinator: object) -> bool:
    """Make kafka-python read the answer of a join it started; True when a join was wrapped.

    kafka-python 3.0.12 awaits its JoinGroup+SyncGroup task for at most `poll()`'s timeout and leaves it
    running; when the task finishes between two polls (on the network thread), the next poll sees it done
    and sends a new JoinGroup, throwing the assignment away (`coordinator/base.py`, `join_group_async`:
    `if self._join_task is None or self._join_task.is_done`). With the loop's short polls while work is in
    flight that happens on most rebalances: the group re-forms every heartbeat interval and a partition
    waits seconds to move. Every path that reads the task's answer resets `_join_task` to None, so a task
    reported as not done is always read exactly once. Called after `poll()`, where the task was created:
    nothing else touches `_join_task` between polls.
    """
    task = getattr(coordinator, "_join_task", None)
    if task is None or isinstance(task, _UnreadJoin) or not hasattr(task, "add_callback"):
        return False
    coordinator._join_task = _UnreadJoin(task)  # type: ignore[attr-defined]
    return True


class EventConsumer:
    """Owns the KafkaConsumer. Not thread-safe (kafka-python's consumer is not): call it from the loop only."""

    def __init__(self, settings: KafkaSettings, topics: list[str] | None = None) -> None:
        self.settings = settings
        self.paused = False
        self._recorder = _Recorder()
        extra = {"group_instance_id": settings.group_instance_id} if settings.group_instance_id else {}
        self._consumer = KafkaConsumer(
            group_id=settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset=settings.auto_offset_reset,
            max_poll_records=settings.max_poll_records,
            session_timeout_ms=settings.session_timeout_ms,
            metadata_max_age_ms=settings.metadata_max_age_ms,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            partition_assignment_strategy=[CooperativeStickyAssignor],
            # Exactly-once mode: records of aborted transactions (the retry topic's) are never read.
            isolation_level="read_committed" if settings.exactly_once else "read_uncommitted",
            **extra,
            **connection_config(settings),
        )
        self._consumer.subscribe(topics or [settings.events_topic], listener=self._recorder)
        self._coordinator = getattr(self._consumer, "_coordinator", None)  # kafka-python's, for its member state

    def poll(self, timeout_ms: int, max_records: int) -> list[ConsumerRecord]:
        """Records (none when `max_records <= 0`); always drives heartbeats and rebalances."""
        if max_records <= 0:
            self.set_paused(True, "nothing wanted")  # a poll that must return nothing: paused partitions fetch nothing
        try:
            batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max(1, max_records))
        except CorruptRecordError as exc:  # a record kafka-python itself cannot decode (e.g. a non-UTF-8 header key)
            return [self._skip_undecodable(exc)]
        finish_stalled_join(self._coordinator)
        keep_join_answer(self._coordinator)
        return [record for records in batches.values() for record in records]

    def _skip_undecodable(self, exc: CorruptRecordError) -> ConsumerRecord:
        """Step past the record kafka-python failed to decode and stand in for it, so it gets a DLQ record.

        kafka-python raises from inside `poll()` and raises again on every later poll at that offset, which
        would kill each worker that owns the partition in turn. The failing partition and offset are those of
        the fetcher's in-line partition records (kafka-python 2.2-3.x: `_next_partition_records`, whose
        `next_fetch_offset` is the first record not handed out). Where they cannot be found the error stands.
        """
        fetcher = getattr(self._consumer, "_fetcher", None)
        failing = getattr(fetcher, "_next_partition_records", None)
        tp = getattr(failing, "topic_partition", None)
        offset = getattr(failing, "next_fetch_offset", None)
        if fetcher is None or failing is None or not isinstance(tp, TopicPartition) or not isinstance(offset, int):
            raise exc
        failing.drain()
        fetcher._next_partition_records = None
        self._consumer.seek(tp, offset + 1)
        reason = f"kafka-python cannot decode the record: {exc}"[:1000]
        log.error("undecodable record skipped, to the DLQ", extra={"topic": tp.topic, "partition": tp.partition,
                                                                   "offset": offset, "reason": reason})
        return ConsumerRecord(tp.topic, tp.partition, -1, offset, -1, -1, None, None,
                              [(UNDECODABLE_HEADER, reason.encode())], None, -1, -1, -1)

    def rebalance_events(self) -> list[RebalanceEvent]:
        """What the rebalances inside the last `poll()` changed, in order (then forgotten)."""
        return self._recorder.drain()

    def set_paused(self, paused: bool, reason: str = "backpressure") -> None:
        """Fetch nothing (True) or everything assigned (False); group membership stays alive either way."""
        if paused:
            self._consumer.pause(*self._consumer.assignment())  # also covers partitions assigned since
            if not self.paused:
                log.info(f"{reason}: partitions paused")
        elif self.paused:
            self._consumer.resume(*self._consumer.paused())
            log.info("partitions resumed")
        self.paused = paused
        metrics.PAUSED.set(1 if paused else 0)

    def in_group(self) -> bool:
        """Joined and stable in the group, even with no partition (a spare replica is ready too).

        kafka-python calls no listener for an empty assignment, so this reads the coordinator's member state
        (a plain string, `MemberState.STABLE`, in 2.x and 3.x); readable from any thread (nothing blocks)."""
        state = getattr(self._coordinator, "state", None)
        return state == MemberState.STABLE or bool(self._consumer.assignment())

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Synchronous commit; raises when the broker refuses (e.g. the generation moved on)."""
        if not offsets:
            return
        self._consumer.commit(commit_positions(offsets))
        metrics.COMMITS.inc()

    def group_metadata(self) -> object:
        """This member's group metadata, for a transaction's offsets (KIP-447 fences a stale generation)."""
        return self._consumer.group_metadata()

    def rewind(self, positions: Mapping[TopicPartition, int]) -> None:
        """Read these partitions again from `positions` (those still assigned: the rest went to a new owner)."""
        assigned = self._consumer.assignment()
        for tp, offset in positions.items():
            if tp in assigned:
                self._consumer.seek(tp, offset)
        log.info("partitions rewound", extra={"positions": {str(tp): off for tp, off in positions.items()}})

    def close(self) -> None:
        """Leave the group (dynamic members: the partitions move at once) and close the connections."""
        self._consumer.close(autocommit=False)

    def lag(self, timeout_ms: int = 2000) -> dict[TopicPartition, int]:
        """Per assigned partition: its end offset (asked of the broker) minus this consumer's position."""
        assigned = list(self._consumer.assignment())
        if not assigned:
            return {}
        ends = self._consumer.end_offsets(assigned, timeout_ms=timeout_ms)
        positions = {tp: self._consumer.position(tp, timeout_ms=timeout_ms) for tp in assigned}
        return {tp: max(0, ends[tp] - pos) for tp, pos in positions.items() if pos is not None and tp in ends}
