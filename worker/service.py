"""The streaming worker: consume -> pipeline (thread pool) -> publish -> commit, with backpressure.

Threads: the loop thread owns the Kafka consumer (poll, pause/resume, commit); `media_threads` workers run
`MediaPipeline.process`; the batcher thread and Triton's callbacks do inference; the producer's I/O thread
acknowledges sends. The `OffsetTracker` is where they meet: an offset is committed only once it and every
earlier offset of its partition have a verdict (or DLQ record) acknowledged by the broker.
"""

from __future__ import annotations

import base64
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from types import FrameType

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from pydantic import ValidationError

from worker import metrics
from worker.batch import MicroBatcher
from worker.cache import VerdictCache
from worker.consume import EventConsumer
from worker.contracts import DeadLetter, DeadLetterData, MediaEvent, Verdict, VerdictData
from worker.errors import ErrorCode
from worker.health import HealthState, serve
from worker.infer.base import InferenceBackend
from worker.model_config import check_preprocessing
from worker.offsets import OffsetTracker
from worker.pipeline import MediaPipeline, failure_verdict
from worker.publish import Publisher
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: WorkerSettings, backend: InferenceBackend, health: HealthState | None = None,
                 server: ThreadingHTTPServer | None = None) -> None:
        """`health`/`server`: the operations server `dfmod worker` started before its start-up checks."""
        self.settings = settings
        self.backend = backend
        self.model = backend.model_info()
        check_preprocessing(self.model)  # a model trained on other crops would give meaningless scores
        self.stop_requested = threading.Event()
        self.health = health or HealthState()
        self._server = server
        self.tracker = OffsetTracker()
        self.batcher = MicroBatcher(backend, settings.batch, on_batch=self._on_batch)
        self.cache = VerdictCache(settings.cache, on_event=lambda kind: metrics.CACHE.labels(kind).inc())
        self.pipeline = MediaPipeline(settings, self.batcher, self.model, self.cache)
        self.publisher = Publisher(settings.kafka)
        self.pool = ThreadPoolExecutor(settings.media_threads, thread_name_prefix="media")
        self._assigned = threading.Event()
        self.consumer = EventConsumer(settings.kafka, self._on_revoked, self._on_assigned)
        self.health.ready_checks["triton"] = getattr(backend, "is_ready", lambda: True)
        self.health.ready_checks["kafka_assignment"] = self._assigned.is_set
        self._last_commit = 0.0

    # -- lifecycle ----------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def request_stop(signum: int, _frame: FrameType | None) -> None:
            log.info("stop requested", extra={"signal": signum})
            self.stop_requested.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    def run(self) -> None:
        server = self._server or serve(self.health, self.settings.http_host, self.settings.http_port)
        log.info(
            "worker started",
            extra={"model": self.model.model_dump(), "topic": self.settings.kafka.events_topic},
        )
        try:
            while not self.stop_requested.is_set():
                self._turn()
            self._drain()
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.batcher.close()
            self.publisher.close()
            self.consumer.close()
            self.backend.close()
            server.shutdown()
            log.info("worker stopped")

    def _turn(self) -> None:
        self.health.beat()
        free = self.settings.max_in_flight - self.tracker.in_flight()
        records = self.consumer.poll(timeout_ms=100, max_records=free)
        for record in records:
            self._take(record)
        self._apply_backpressure()
        self._commit_if_due()
        metrics.observe_lag(self.consumer)

    def _drain(self) -> None:
        """On stop: wait for in-flight events, commit what is done; the rest is re-delivered to the next owner."""
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while self.tracker.in_flight() and time.monotonic() < deadline:
            self.consumer.poll(timeout_ms=100, max_records=0)
            self._commit_if_due(force=True)
        self.publisher.flush(timeout_s=max(1.0, deadline - time.monotonic()))
        self._commit_if_due(force=True)
        log.info("drained", extra={"left_in_flight": self.tracker.in_flight()})

    # -- per record ---------------------------------------------------------------------------------
    def _take(self, record: ConsumerRecord) -> None:
        tp = TopicPartition(record.topic, record.partition)
        self.tracker.track(tp, record.offset)
        metrics.IN_FLIGHT.set(self.tracker.in_flight())
        received = time.monotonic()

        def acked() -> None:
            self.tracker.ack(tp, record.offset)
            metrics.IN_FLIGHT.set(self.tracker.in_flight())
            metrics.EVENT_SECONDS.observe(time.monotonic() - received)

        ctx = {"partition": record.partition, "offset": record.offset}
        event_or_reason = parse_event(record.value)
        if isinstance(event_or_reason, str):
            event_id = salvage_id(record.value)
            if event_id is None:
                log.warning("unparseable event to DLQ", extra={**ctx, "reason": event_or_reason})
                room = self.settings.kafka.max_message_bytes * 3 // 4 - 16_384  # base64 and envelope overhead
                self.publisher.publish_dead_letter(dead_letter(record, event_or_reason, room), acked)
                return
            # We know whom to answer: an invalid event still gets its verdict.
            data = failure_verdict(ErrorCode.INVALID_EVENT, event_or_reason, self.model)
            self._publish(event_id, data, acked, ctx)
            return

        event = event_or_reason
        future = self.pool.submit(self.pipeline.process, event.data)

        def done(_f: object) -> None:
            try:
                data = future.result()
            except BaseException as exc:  # cancelled on shutdown, or a bug outside the pipeline's guard
                data = failure_verdict(ErrorCode.INTERNAL_ERROR, repr(exc), self.model)
            self._publish(event.id, data, acked, {**ctx, "event_id": event.id})

        future.add_done_callback(done)

    def _publish(self, event_id: str, data: VerdictData, acked: Callable[[], None], ctx: dict[str, object]) -> None:
        metrics.observe_verdict(data)
        verdict = Verdict(id=event_id, source=self.settings.source, subject=data.media_sha256, data=data)
        log.info(
            "verdict",
            extra={**ctx, "event_id": event_id, "status": data.status, "label": data.label,
                   "score": data.score, "cached": data.cached,
                   "code": data.error.code.value if data.error else None},
        )
        self.publisher.publish_verdict(verdict, acked)

    # -- backpressure and commits -------------------------------------------------------------------
    def _apply_backpressure(self) -> None:
        in_flight = self.tracker.in_flight()
        if in_flight >= self.settings.max_in_flight:
            self.consumer.pause()
        elif self.consumer.paused and in_flight <= self.settings.max_in_flight // 2:
            self.consumer.resume()

    def _commit_if_due(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < self.settings.kafka.commit_interval_s:
            return
        self._last_commit = now
        offsets = self.tracker.committable()
        if offsets:
            try:
                self.consumer.commit(offsets)
                self.tracker.mark_committed(offsets)
            except Exception as exc:  # a rebalance in progress: the next turn commits again
                log.warning("commit failed", extra={"error": repr(exc)})

    def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        offsets = {tp: off for tp, off in self.tracker.committable().items() if tp in revoked}
        if offsets:
            try:
                self.consumer.commit(offsets)
                self.tracker.mark_committed(offsets)
            except Exception as exc:
                log.warning("commit on revoke failed", extra={"error": repr(exc)})
        self.tracker.revoke(revoked)
        log.info("partitions revoked", extra={"partitions": [tp.partition for tp in revoked]})

    def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        self._assigned.set()
        self.consumer.reapply_pause()  # keep backpressure across a rebalance
        log.info("partitions assigned", extra={"partitions": [tp.partition for tp in assigned]})

    def _on_batch(self, size: int, seconds: float) -> None:
        metrics.BATCH_SIZE.observe(size)
        metrics.INFER_SECONDS.observe(seconds)


# -- parsing helpers (pure functions, unit-tested) ----------------------------------------------------
def parse_event(value: bytes | None) -> MediaEvent | str:
    """The event, or the reason it cannot be used."""
    if value is None:
        return "empty record (tombstone)"
    try:
        return MediaEvent.model_validate_json(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"invalid event: {where}: {first.get('msg')}" if where else f"invalid event: {first.get('msg')}"


def salvage_id(value: bytes | None) -> str | None:
    """The CloudEvent id of an invalid event, when it has one we can answer to."""
    if not value:
        return None
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    event_id = doc.get("id") if isinstance(doc, dict) else None
    return event_id if isinstance(event_id, str) and 0 < len(event_id) <= 512 else None


def dead_letter(record: ConsumerRecord, reason: str, max_value_bytes: int = 768 * 1024) -> DeadLetter:
    """The DLQ record; a value too big to fit the DLQ topic is cut (flagged) so the record can always be sent."""
    value = record.value or b""
    return DeadLetter(
        data=DeadLetterData(
            reason=reason,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            key_b64=base64.b64encode(record.key).decode() if record.key else None,
            value_b64=base64.b64encode(value[:max_value_bytes]).decode(),
            value_size=len(value),
            value_truncated=len(value) > max_value_bytes,
            headers={k: base64.b64encode(v or b"").decode() for k, v in (record.headers or [])},
        )
    )
