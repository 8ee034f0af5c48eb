"""The streaming worker: consume -> pipeline (asynchronous) -> publish -> commit, with backpressure.

Threads: one completion path. The loop thread alone touches Kafka: it polls, pauses, publishes verdicts, DLQ
and retry-topic records, records the broker's acks, advances and commits offsets and answers the crash-loop
guard. The other threads compute: the pipeline's `media_threads` run the CPU stages, the batcher thread and
Triton's callbacks do inference, and what they finish (a settled Future), the producer's acks and failed sends
come back to the loop through one queue (`ConsumeLoop.hand_back`), which it drains every turn. Work that must
wait (a retry not due yet, a re-send after back-off) waits on the loop's own clock (`call_later`). An offset is
committed only once it and every earlier offset of its partition have a verdict (or DLQ or retry-topic
record) acknowledged by the broker.

Delivery semantics (README, "Delivery semantics"): at least once, or exactly once with `kafka.exactly_once`.
Every record gets a verdict or a DLQ record; a verdict means the media was looked at, or that it could not be
(a `rejected`/`error` code). In exactly-once mode answers are held (`worker.stream.outbox`) and the loop
commits, every `transaction_interval_ms`, one transaction with the answers of each partition's answered
prefix and the offsets after them; a failed transaction is aborted and its partitions rewound to their last
committed offsets, so their events are answered again and published once.
Transient failures delay the verdict: a dependency outage pauses consumption while in-flight work waits
(`retry.dependency_deadline_s`), an origin's transient failure goes through the retry topic.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import CancelledError, Future
from http.server import ThreadingHTTPServer
from types import FrameType
from typing import Protocol

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from worker.core.contracts import DeadLetter, MediaData, MediaEvent, Verdict, VerdictData
from worker.core.errors import ErrorCode
from worker.core.retry import Breaker
from worker.core.settings import WorkerSettings
from worker.core.version import pipeline_version
from worker.infer.base import InferenceBackend
from worker.obs import metrics
from worker.obs.health import HealthState, serve
from worker.obs.memory import MemoryTrimmer
from worker.scoring.engine import Engine
from worker.scoring.pipeline import Stopped, TransientFailure, failure_verdict
from worker.stream.consumer import EventConsumer, RebalanceEvent, undecodable_reason
from worker.stream.crash_guard import DeliveryGuard, RecordId
from worker.stream.envelope import dead_letter, dlq_room, parse_event, salvage_id
from worker.stream.offsets import OffsetTracker
from worker.stream.outbox import Outbox
from worker.stream.publisher import ATTEMPT_HEADER, NOT_BEFORE_HEADER, Publisher, Send, TransactionAborted

log = logging.getLogger(__name__)

Ack = Callable[[], None]

#: How long one poll may block: long while nothing is in flight, short while completions may arrive (they
#: wait in the queue until the poll returns, so this bounds the latency the single completion path adds).
IDLE_POLL_MS = 100
BUSY_POLL_MS = 5


class LoopClock:
    """Callbacks the loop thread runs once their time comes; only the loop thread touches it."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cancelled: set[int] = set()

    def add(self, when: float, fn: Callable[[], None]) -> int:
        seq = next(self._seq)
        heapq.heappush(self._heap, (when, seq, fn))
        return seq

    def cancel(self, seq: int) -> None:
        self._cancelled.add(seq)

    def run_due(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _when, seq, fn = heapq.heappop(self._heap)
            if seq in self._cancelled:
                self._cancelled.discard(seq)
                continue
            fn()

    def __len__(self) -> int:
        return len(self._heap) - len(self._cancelled)


class Consumer(Protocol):
    """What the loop needs of the Kafka consumer (`worker.stream.consumer.EventConsumer`; a fake in unit tests)."""

    paused: bool

    def poll(self, timeout_ms: int, max_records: int) -> list[ConsumerRecord]: ...
    def rebalance_events(self) -> list[RebalanceEvent]: ...
    def set_paused(self, paused: bool, reason: str = "backpressure") -> None: ...
    def commit(self, offsets: dict[TopicPartition, int]) -> None: ...
    def group_metadata(self) -> object: ...
    def rewind(self, positions: Mapping[TopicPartition, int]) -> None: ...
    def lag(self) -> dict[TopicPartition, int]: ...
    def close(self) -> None: ...


class Answers(Protocol):
    """Where one record's answers go: the producer, or (exactly-once mode) the outbox's `HeldSender`."""

    def publish_verdict(self, verdict: Verdict, on_ack: Ack) -> None: ...
    def publish_dead_letter(self, record: DeadLetter, on_ack: Ack) -> None: ...
    def publish_retry(self, record: ConsumerRecord, attempt: int, not_before_ms: int, on_ack: Ack) -> None: ...


class Sender(Answers, Protocol):
    """What the loop needs of the producer (`worker.stream.publisher.Publisher`)."""

    def commit_transaction(self, sends: Iterable[Send], offsets: Mapping[TopicPartition, int],
                           group_metadata: object) -> None: ...
    def flush(self, timeout_s: float) -> None: ...
    def close(self) -> None: ...


class Processor(Protocol):
    """What the loop needs of the pipeline (`worker.scoring.pipeline.MediaPipeline`): a Future per event, at once."""

    def submit(self, data: MediaData, final_attempt: bool = True) -> Future[VerdictData]: ...


def _header(record: ConsumerRecord, name: str, default: int) -> int:
    for key, value in record.headers or []:
        if key == name:
            try:
                return int((value or b"").decode())
            except ValueError:
                return default
    return default


class ConsumeLoop:
    """The loop thread's state machine: take records, hand them to the pipeline, commit what is answered.

    Everything it needs is injected, so it runs in unit tests against fakes.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        consumer: Consumer,
        publisher: Sender,
        pipeline: Processor,
        model: object,
        breaker: Breaker | None = None,
        guard: DeliveryGuard | None = None,
        probe: Callable[[], bool] = lambda: True,
        health: HealthState | None = None,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.publisher = publisher
        self.pipeline = pipeline
        self.model = model  # ModelInfo for failure verdicts (object: fakes pass None)
        self.pipeline_version = pipeline_version(settings.decode.sampling)  # the one successes carry too
        self.breaker = breaker or Breaker("inference")
        self.guard = guard
        self.probe = probe
        self.health = health or HealthState(settings.liveness_stall_s)
        self.tracker = OffsetTracker()
        self.exactly_once = settings.kafka.exactly_once
        self.outbox = Outbox()  # exactly-once mode: answers held for the transaction that commits their offsets
        self.stop_requested = threading.Event()
        self.assigned = threading.Event()
        self._abandon = threading.Event()   # set once the loop lets go: late results are not published
        self._lock = threading.Lock()
        self._bytes_in_flight = 0
        self._answered: list[RecordId] = []  # for the guard, drained by the loop thread
        self._completions: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()  # the one way back
        self._clock = LoopClock()
        self._timers: dict[RecordId, tuple[int, Ack]] = {}  # retries not due yet: their clock entry and drop
        self._last_commit = 0.0
        self._last_probe = 0.0
        self._wanted_pause = False
        self._paused_for = ""

    # -- the loop -----------------------------------------------------------------------------------

    def _failure(self, code: ErrorCode, message: str) -> VerdictData:
        """A failure verdict with this worker's model and pipeline version (the ones its successes carry)."""
        return failure_verdict(code, message, self.model, pipeline_version=self.pipeline_version)  # type: ignore[arg-type]

    def hand_back(self, fn: Callable[[], None]) -> None:
        """Any thread: have the loop thread run `fn` on its next turn (finished work, acks, failed sends)."""
        self._completions.put(fn)

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> None:
        """Any thread: have the loop thread run `fn` once `delay_s` has passed."""
        when = time.monotonic() + delay_s

        def schedule() -> None:
            self._clock.add(when, fn)

        self.hand_back(schedule)

    def _run_completions(self) -> None:
        """Run what the other threads handed back and what is due: the only place answers are published."""
        while True:
            try:
                fn = self._completions.get_nowait()
            except queue.Empty:
                break
            fn()
        self._clock.run_due(time.monotonic())
        self._forget_answered()

    def _poll_ms(self) -> int:
        if not self._completions.empty():
            return 0
        busy = self.tracker.in_flight() or len(self._clock) or len(self.outbox)
        return BUSY_POLL_MS if busy else IDLE_POLL_MS

    def run(self) -> None:
        """Turn until stop is requested, then drain and leave the group."""
        try:
            while not self.stop_requested.is_set():
                self.turn()
            self.drain()
        finally:
            self._abandon.set()
            self._timers.clear()
            self.consumer.close()  # work still in the pipeline is abandoned: never answered, never committed

    def turn(self) -> None:
        self.health.beat()
        self._probe_if_down()
        reason = self._pause_reason()
        self._set_paused(reason is not None, reason or "")
        free = self.settings.max_in_flight - self.tracker.in_flight()
        records = self.consumer.poll(timeout_ms=self._poll_ms(), max_records=0 if self.consumer.paused else free)
        self._handle_rebalances()
        self._take_all(records)
        self._run_completions()
        self._commit_if_due()
        metrics.observe_lag(self.consumer)

    def drain(self) -> None:
        """SIGTERM: stop taking work, let in-flight work finish within the grace period, commit.

        What does not finish in time is left, unanswered and uncommitted, to the next owner: never an
        `error` verdict for work that was merely interrupted.
        """
        deadline = time.monotonic() + self.settings.drain_timeout_s
        self._set_paused(True, "stopping")
        while self.tracker.in_flight() and time.monotonic() < deadline:
            self.health.beat()
            self.consumer.poll(timeout_ms=self._poll_ms(), max_records=0)  # heartbeats; rebalances still handled
            self._handle_rebalances()
            self._run_completions()
            self._commit_if_due(force=True)
        self._abandon.set()
        self.publisher.flush(timeout_s=max(1.0, deadline - time.monotonic()))
        self._run_completions()  # the acks of what the flush delivered
        self._commit_if_due(force=True)
        self._forget_answered()
        left = self._unanswered()
        if self.guard is not None and left:
            self.guard.handed_back(left)
        log.info("drained", extra={"left_in_flight": len(left)})

    # -- pausing ------------------------------------------------------------------------------------
    def _pause_reason(self) -> str | None:
        """Why to take no new work now: stopping, a dependency down, or in flight (count or bytes) full."""
        if self.stop_requested.is_set():
            return "stopping"
        if self.breaker.is_open:
            return f"{self.breaker.name} down"
        count, size = self.tracker.in_flight(), self._bytes_in_flight
        if count >= self.settings.max_in_flight or size >= self.settings.max_in_flight_bytes:
            return "backpressure"
        half = count > self.settings.max_in_flight // 2 or size > self.settings.max_in_flight_bytes // 2
        if self.consumer.paused and half:  # resume at half, so the partitions do not flap
            return "backpressure"
        return None

    def _set_paused(self, paused: bool, reason: str = "") -> None:
        self._wanted_pause, self._paused_for = paused, reason
        if paused or self.consumer.paused:
            self.consumer.set_paused(paused, reason)  # re-pausing also covers partitions assigned meanwhile

    def _probe_if_down(self) -> None:
        now = time.monotonic()
        if self.breaker.is_open and now - self._last_probe >= self.settings.retry.probe_interval_s:
            self._last_probe = now
            if self.probe():
                self.breaker.success()

    # -- rebalances (recorded on kafka-python's thread, handled here) ---------------------------------
    def _handle_rebalances(self) -> None:
        for event in self.consumer.rebalance_events():
            parts = sorted(event.partitions)
            if event.kind == "assigned":
                self.assigned.set()
                if self._wanted_pause:  # new partitions start unpaused: keep taking no work
                    self.consumer.set_paused(True, self._paused_for)
                log.info("partitions assigned", extra={"partitions": [str(tp) for tp in parts]})
            elif event.kind == "revoked":
                self._release(event.partitions, commit=True)
            else:
                self._release(event.partitions, commit=False)

    def _release(self, tps: frozenset[TopicPartition], commit: bool) -> None:
        """Let partitions go: wait (bounded) for their in-flight work, commit what is contiguous-acked,
        then forget them, so nothing answered after this moves their commit."""
        deadline = time.monotonic() + (self.settings.kafka.revoke_wait_s if commit else 0.0)
        while commit and time.monotonic() < deadline and any(self.tracker.pending(tp) for tp in tps):
            with contextlib.suppress(queue.Empty):  # their answers and acks come back through the queue
                self._completions.get(timeout=0.02)()
            self._run_completions()
        offsets = {tp: off for tp, off in self.tracker.committable().items() if tp in tps}
        if commit and offsets:  # a failure: the group moved on, the next owner redoes the uncommitted part
            self._commit(offsets, rewind=False)  # aborted: nothing to read again here, the partitions are going
        left = self._forget(tps)
        log.info(
            "partitions revoked" if commit else "partitions lost",
            extra={"partitions": [str(tp) for tp in sorted(tps)], "committed": {str(k): v for k, v in offsets.items()},
                   "left_to_next_owner": len(left)},
        )

    def _forget(self, tps: frozenset[TopicPartition]) -> list[RecordId]:
        """Drop every trace of these partitions' work (retries waiting, held answers, offsets), so nothing
        answered later moves their commit; the records left unanswered are handed to the guard."""
        left = [(tp.topic, tp.partition, off) for tp in tps for off in self.tracker.unacked(tp)]
        for rid in left:
            waiting = self._timers.pop(rid, None)
            if waiting is not None:
                self._clock.cancel(waiting[0])
                waiting[1]()
        self.tracker.revoke(tps)
        self.outbox.drop(tps)
        if self.guard is not None and left:
            self.guard.handed_back(left)
        return left

    # -- per record ---------------------------------------------------------------------------------
    def _take_all(self, records: list[ConsumerRecord]) -> None:
        if not records:
            return
        counts = self.guard.begin((r.topic, r.partition, r.offset) for r in records) if self.guard else {}
        for record in records:
            try:
                self._take(record, counts.get((record.topic, record.partition, record.offset)))
            except Exception:  # before it was tracked (bookkeeping itself failed): nothing to ack, still a DLQ record
                log.exception("tracking a record failed", extra={"partition": record.partition,
                                                                 "offset": record.offset})
                self._dead_letter_raw(record, "internal error while taking the record", lambda: None)

    def _take(self, record: ConsumerRecord, deliveries: int | None) -> None:
        tp = TopicPartition(record.topic, record.partition)
        epoch = self.tracker.track(tp, record.offset)
        size = len(record.value or b"")
        rid: RecordId = (record.topic, record.partition, record.offset)
        with self._lock:
            self._bytes_in_flight += size
        metrics.IN_FLIGHT.set(self.tracker.in_flight())
        received = time.monotonic()
        settled = threading.Lock()  # answered or dropped, once

        def on_loop() -> None:
            if not settled.acquire(blocking=False):
                return
            with self._lock:
                self._bytes_in_flight -= size
                self._answered.append(rid)
            self.tracker.ack(tp, record.offset, epoch)
            metrics.IN_FLIGHT.set(self.tracker.in_flight())
            metrics.EVENT_SECONDS.observe(time.monotonic() - received)

        def acked() -> None:  # the producer's I/O thread: the ack is recorded on the loop thread
            self.hand_back(on_loop)

        def dropped() -> None:  # left to the next owner: only the byte count is given back
            if settled.acquire(blocking=False):
                with self._lock:
                    self._bytes_in_flight -= size

        ctx = {"partition": record.partition, "offset": record.offset, "topic": record.topic}
        try:
            self._route(record, deliveries, rid, tp, epoch, acked, dropped, ctx)
        except Exception:  # one record must never stop the loop, nor hold its partition: it gets a DLQ record
            log.exception("taking a record failed", extra=ctx)
            self._dead_letter_raw(record, "internal error while taking the record", acked)

    def _route(self, record: ConsumerRecord, deliveries: int | None, rid: RecordId, tp: TopicPartition, epoch: int,
               acked: Ack, dropped: Ack, ctx: dict[str, object]) -> None:
        """Where a tracked record goes: DLQ (crash-loop guard, undecodable), a verdict now, or the pipeline."""
        if self.guard is not None and self.guard.poisoned(deliveries):
            metrics.CRASH_GUARD.inc()
            log.error("record was in flight each time a worker died: dead-lettered unprocessed",
                      extra={**ctx, "deliveries": deliveries})
            self._dead_letter_raw(record, f"crash-loop guard: delivered {deliveries} times, a worker died "
                                          "each time", acked)
            return

        undecodable = undecodable_reason(record)
        if undecodable is not None:  # kafka-python could not decode it: nothing of it but its place is known
            self._dead_letter_raw(record, undecodable, acked)
            return

        event_or_reason = parse_event(record.value, record.headers)
        if isinstance(event_or_reason, str):
            event_id = salvage_id(record.value, record.headers)
            if event_id is None:
                log.warning("unparseable event to DLQ", extra={**ctx, "reason": event_or_reason})
                self._dead_letter_raw(record, event_or_reason, acked)
                return
            # We know whom to answer: an invalid event still gets its verdict.
            data = self._failure(ErrorCode.INVALID_EVENT, event_or_reason)
            self._publish(record, event_id, data, acked, ctx)
            return

        event = event_or_reason
        attempt = _header(record, ATTEMPT_HEADER, 1) if record.topic == self.settings.kafka.retry_topic else 1
        final = attempt >= max(1, self.settings.retry.item_attempts)

        def start() -> None:
            self._timers.pop(rid, None)
            if self._abandon.is_set() or not self.tracker.owns(tp, epoch):
                dropped()
                return
            try:
                future = self.pipeline.submit(event.data, final)
            except RuntimeError:  # the pipeline shut down meanwhile
                dropped()
                return
            future.add_done_callback(  # a worker thread settles it; the loop thread answers
                lambda f: self.hand_back(lambda: self._done(f, record, event, attempt, tp, epoch, acked, dropped, ctx))
            )

        wait_s = (_header(record, NOT_BEFORE_HEADER, 0) / 1000.0 - time.time()) if attempt > 1 else 0.0
        if wait_s > 0:  # a retry that is not due yet waits here, counted in flight
            self._timers[rid] = (self._clock.add(time.monotonic() + wait_s, start), dropped)
        else:
            start()

    def _done(self, future: Future[VerdictData], record: ConsumerRecord, event: MediaEvent, attempt: int,
              tp: TopicPartition, epoch: int, acked: Ack, dropped: Ack, ctx: dict[str, object]) -> None:
        if self._abandon.is_set() or not self.tracker.owns(tp, epoch):
            dropped()  # shutting down or revoked: the next owner answers it
            return
        ctx = {**ctx, "event_id": event.id}
        try:
            data = future.result()
        except (CancelledError, Stopped):
            dropped()
            return
        except TransientFailure as exc:
            delays = self.settings.retry.item_delays_s or [0.0]
            delay = delays[min(attempt - 1, len(delays) - 1)]
            log.info("transient failure, retrying later", extra={**ctx, "attempt": attempt,
                                                                  "retry_in_s": delay, "error": str(exc)})
            try:
                self._answers(record).publish_retry(record, attempt + 1, int((time.time() + delay) * 1000), acked)
                return
            except Exception:  # e.g. no retry topic: answer now rather than leave the partition stuck
                log.exception("could not park the event on the retry topic; answering now", extra=ctx)
                data = self._failure(exc.error.code, exc.error.message)
        except BaseException as exc:  # a bug outside the pipeline's guard
            data = self._failure(ErrorCode.INTERNAL_ERROR, repr(exc))
        if attempt > 1 and data.status == "error":
            # The last attempt of a transient failure: the verdict says so, and the DLQ keeps the record.
            both = _after(2, acked)
            self._publish(record, event.id, data, both, ctx)
            why = data.error.message if data.error else data.status
            self._dead_letter_raw(record, f"failed after {attempt} attempts: {why}", both)
            return
        self._publish(record, event.id, data, acked, ctx)

    def _publish(self, record: ConsumerRecord, event_id: str, data: VerdictData, acked: Ack,
                 ctx: dict[str, object]) -> None:
        metrics.observe_verdict(data)
        try:
            verdict = Verdict(id=event_id, source=self.settings.source, subject=data.media_sha256, data=data)
            self._answers(record).publish_verdict(verdict, acked)
        except Exception as exc:  # a verdict that cannot be sent: the raw record goes to the DLQ instead
            log.exception("verdict could not be published", extra=ctx)
            self._dead_letter_raw(record, f"verdict could not be published: {type(exc).__name__}", acked)
            return
        log.info(
            "verdict",
            extra={**ctx, "event_id": event_id, "status": data.status, "label": data.label,
                   "score": data.score, "cached": data.cached,
                   "code": data.error.code.value if data.error else None},
        )

    def _dead_letter_raw(self, record: ConsumerRecord, reason: str, acked: Ack) -> None:
        room = dlq_room(self.settings.kafka.max_message_bytes)
        self._answers(record).publish_dead_letter(dead_letter(record, reason, room), acked)

    def _answers(self, record: ConsumerRecord) -> Answers:
        """Where `record`'s answers go: straight to the producer, or held for their transaction."""
        if self.exactly_once:
            return self.outbox.sender(TopicPartition(record.topic, record.partition), record.offset)
        return self.publisher

    # -- commits ------------------------------------------------------------------------------------
    def _unanswered(self) -> list[RecordId]:
        return [(tp.topic, tp.partition, off) for tp, off in self.tracker.in_flight_records()]

    def _forget_answered(self) -> None:
        with self._lock:
            answered, self._answered = self._answered, []
        if self.guard is not None and answered:
            self.guard.done(answered)

    def _commit_if_due(self, force: bool = False) -> None:
        now = time.monotonic()
        kafka = self.settings.kafka
        if self.exactly_once:
            due = (now - self._last_commit >= kafka.transaction_interval_ms / 1000
                   or len(self.outbox) >= kafka.transaction_max_records)
        else:
            due = now - self._last_commit >= kafka.commit_interval_s
        if not (force or due):
            return
        self._last_commit = now
        self._commit(self.tracker.committable())

    def _commit(self, offsets: dict[TopicPartition, int], rewind: bool = True) -> None:
        """Commit `offsets` (contiguous-answered positions): plainly, or in exactly-once mode in one
        transaction with the held answers below them (aborted: their partitions `rewind`, unless they are
        being let go)."""
        if not offsets:
            return
        if not self.exactly_once:
            try:
                self.consumer.commit(offsets)
                self.tracker.mark_committed(offsets)
            except Exception as exc:  # a rebalance in progress: the next turn commits again
                log.warning("commit failed", extra={"error": repr(exc)})
            return
        try:
            self.publisher.commit_transaction(self.outbox.ready(offsets), offsets, self.consumer.group_metadata())
        except TransactionAborted as exc:
            metrics.TRANSACTIONS.labels(outcome="aborted").inc()
            log.warning("transaction aborted: its partitions rewind to their last commit",
                        extra={"error": str(exc), "partitions": [str(tp) for tp in sorted(offsets)]})
            if rewind:
                self._rewind(offsets)
            return
        metrics.TRANSACTIONS.labels(outcome="committed").inc()
        self.outbox.forget_below(offsets)
        self.tracker.mark_committed(offsets)

    def _rewind(self, tps: Iterable[TopicPartition]) -> None:
        """Exactly-once mode, after an abort: forget these partitions' work and read them again from their
        last committed offsets, so every event whose answer was aborted is answered again."""
        tps = frozenset(tps)
        positions = self.tracker.committed_positions(tps)
        self._forget(tps)
        self.consumer.rewind(positions)


def _after(n: int, then: Ack) -> Ack:
    """An ack that calls `then` once it has been called `n` times (a verdict and its DLQ record)."""
    lock = threading.Lock()
    left = [n]

    def ack() -> None:
        with lock:
            left[0] -= 1
            fire = left[0] == 0
        if fire:
            then()

    return ack


class Worker:
    """`dfmod worker`: the engine, the Kafka clients, the guard and the ops server around one `ConsumeLoop`."""

    def __init__(self, settings: WorkerSettings, backend: InferenceBackend, health: HealthState | None = None,
                 server: ThreadingHTTPServer | None = None) -> None:
        """`health`/`server`: the operations server `dfmod worker` started before its start-up checks."""
        self.settings = settings
        self.engine = Engine(settings, backend)
        self.model = self.engine.model
        self.health = health or HealthState(settings.liveness_stall_s)
        self._server = server
        self.publisher = Publisher(settings.kafka)  # its re-sends are scheduled on the loop below
        kafka = settings.kafka
        self.consumer = EventConsumer(kafka, [kafka.events_topic, kafka.retry_topic])
        self.guard = DeliveryGuard(settings.cache, kafka.group_id, settings.retry.max_deliveries,
                                   ttl_s=settings.retry.guard_ttl_s)
        self.loop = ConsumeLoop(
            settings, self.consumer, self.publisher, self.engine.pipeline, self.model,
            breaker=self.engine.breaker, guard=self.guard, probe=backend.is_ready, health=self.health,
        )
        self.publisher.schedule = self.loop.call_later
        self.health.ready_checks["inference"] = lambda: not self.engine.breaker.is_open
        self.health.ready_checks["triton"] = backend.is_ready
        if self.engine.cache is not None:
            cache = self.engine.cache
            self.health.degraded["cache"] = lambda: cache.problem if cache.enabled else None
        self.health.ready_checks["kafka_assignment"] = lambda: self.loop.assigned.is_set() or self.consumer.in_group()
        self.stop_requested = self.loop.stop_requested

    def install_signal_handlers(self) -> None:
        def request_stop(signum: int, _frame: FrameType | None) -> None:
            log.info("stop requested", extra={"signal": signum})
            self.stop_requested.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    def run(self) -> None:
        server = self._server or serve(self.health, self.settings.http_host, self.settings.http_port)
        trimmer = MemoryTrimmer(self.settings.malloc_trim_interval_s).start()
        log.info("worker started", extra={"model": self.model.model_dump(), "topic": self.settings.kafka.events_topic})
        try:
            self.loop.run()  # drains and leaves the group on stop
        finally:
            trimmer.stop()
            self.engine.close()
            self.publisher.close()
            self.guard.close()
            server.shutdown()
            log.info("worker stopped")
