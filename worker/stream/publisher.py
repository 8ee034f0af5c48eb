"""Stage 9, publish: verdicts to `media.verdicts` and unparseable records to `media.events.dlq`.

Sends use acks=all and idempotence; the callback fires only after the broker has the record, and only
then may its offset be committed. A send that fails after the producer's own retries is sent again after a
back-off (nothing is dropped while the worker runs; if it dies, the uncommitted offset brings the event back).
Both are CloudEvents in structured mode and say so in a `content-type: application/cloudevents+json` header
(the Kafka protocol binding's rule), so consumers using a CloudEvents SDK need not guess the mode. A DLQ
record always fits the topic and always serialises (`worker.stream.envelope.dead_letter_value`).

Exactly-once mode (`kafka.exactly_once`): the producer is transactional. The loop hands `commit_transaction`
the answers of each partition's answered prefix and the offsets that follow them; both land in one
transaction or neither does. A failed send then fails the transaction: it is not re-sent on its own.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kafka import KafkaProducer, TopicPartition
from kafka import errors as Errors
from kafka.consumer.fetcher import ConsumerRecord
from prometheus_client import Counter

from worker.core.contracts import DeadLetter, Verdict
from worker.core.retry import Backoff
from worker.core.settings import KafkaSettings
from worker.obs import metrics
from worker.stream.envelope import STRUCTURED_HEADERS, dead_letter_value
from worker.stream.kafka_config import commit_positions, connection_config, transactional_id

#: Headers of a record on the retry topic: which attempt comes next, and not before when (epoch ms).
ATTEMPT_HEADER = "dfmod-attempt"
NOT_BEFORE_HEADER = "dfmod-not-before-ms"

log = logging.getLogger(__name__)


def verdict_value(verdict: Verdict) -> bytes:
    """The verdict's JSON; should a string in it not encode as UTF-8, the same JSON with escapes (ASCII)."""
    try:
        return verdict.model_dump_json().encode()
    except Exception:
        log.error("verdict not serialisable as UTF-8, sent ASCII-escaped", extra={"event_id": repr(verdict.id)})
        return json.dumps(verdict.model_dump(mode="json"), ensure_ascii=True).encode("ascii")


class TransactionAborted(Exception):
    """A transaction failed and was aborted: none of its records and offsets count; the loop rewinds."""


#: A deferred send: called with the publisher that makes it (exactly-once mode, inside a transaction).
Send = Callable[["Publisher"], None]


class Publisher:
    def __init__(self, settings: KafkaSettings, backoff: Backoff | None = None) -> None:
        self.settings = settings
        self.transactional = settings.exactly_once
        txn = ({"transactional_id": transactional_id(settings),
                "transaction_timeout_ms": settings.transaction_timeout_ms} if self.transactional else {})
        self.backoff = backoff or Backoff(initial_s=settings.resend_backoff_initial_s,
                                          max_s=settings.resend_backoff_max_s)
        #: Runs a re-send later: the worker points it at its loop (`ConsumeLoop.call_later`), so sends stay on the
        #: loop thread; standalone, a timer thread.
        self.schedule: Callable[[float, Callable[[], None]], None] = _timer_thread
        self._closing = threading.Event()
        #: Counters of the open transaction's records: they count once it commits (an aborted one is sent again).
        self._txn_counts: list[Counter] = []
        self._producer = KafkaProducer(
            acks="all",
            enable_idempotence=True,
            linger_ms=settings.producer_linger_ms,
            retries=settings.producer_retries,
            delivery_timeout_ms=120_000,  # Kafka default; must exceed linger_ms + request_timeout_ms
            max_in_flight_requests_per_connection=5,
            max_request_size=settings.max_message_bytes,
            **txn,
            **connection_config(settings),
        )
        if self.transactional:
            # Fences an earlier producer with this transactional.id and aborts what it left open (KIP-98).
            self._producer.init_transactions()

    def commit_transaction(self, sends: Iterable[Send], offsets: Mapping[TopicPartition, int],
                           group_metadata: object) -> None:
        """Publish `sends` and commit `offsets` for the consumer group in one transaction.

        Raises `TransactionAborted` when it failed and was aborted (nothing of it counts); any other error
        (fenced by a newer producer with this id, abort impossible) is fatal to this producer.
        """
        self._producer.begin_transaction()
        self._txn_counts = []
        try:
            for send in sends:
                send(self)
            self._producer.send_offsets_to_transaction(commit_positions(offsets), group_metadata)
            self._producer.commit_transaction()
        except (Errors.ProducerFencedError, Errors.TransactionalIdAuthorizationFailedError):
            raise
        except Exception as exc:
            self._producer.abort_transaction()  # raises when the producer is in a fatal state
            raise TransactionAborted(repr(exc)) from exc
        finally:
            counts, self._txn_counts = self._txn_counts, []
        for counter in counts:
            counter.inc()

    def publish_verdict(self, verdict: Verdict, on_ack: Callable[[], None]) -> None:
        self._send(self.settings.verdicts_topic, verdict.id, verdict_value(verdict), on_ack)

    def publish_dead_letter(self, record: DeadLetter, on_ack: Callable[[], None]) -> None:
        value = dead_letter_value(record, self.settings.max_message_bytes)
        self._send(self.settings.dlq_topic, record.id, value, self._counted(metrics.DLQ, on_ack))

    def publish_retry(self, record: ConsumerRecord, attempt: int, not_before_ms: int,
                      on_ack: Callable[[], None]) -> None:
        """The record, byte for byte, to the retry topic for its `attempt`-th try after `not_before_ms`."""
        on_ack = self._counted(metrics.ITEM_RETRIES, on_ack)
        ours = {ATTEMPT_HEADER, NOT_BEFORE_HEADER}
        headers = [(k, v or b"") for k, v in (record.headers or []) if k not in ours]
        headers += [(ATTEMPT_HEADER, str(attempt).encode()), (NOT_BEFORE_HEADER, str(not_before_ms).encode())]
        self._send_raw(self.settings.retry_topic, record.key, record.value or b"", on_ack, headers)

    def _counted(self, counter: Counter, on_ack: Callable[[], None]) -> Callable[[], None]:
        """`on_ack`, counting the record in `counter` once the broker has it: at its ack, or in a transaction
        when that commits (an aborted transaction's records are sent again and must not count twice)."""
        if self.transactional:
            self._txn_counts.append(counter)
            return on_ack

        def acked() -> None:
            counter.inc()
            on_ack()

        return acked

    def _send(self, topic: str, key: str, value: bytes, on_ack: Callable[[], None]) -> None:
        self._send_raw(topic, key.encode(), value, on_ack, STRUCTURED_HEADERS)

    def _send_raw(
        self, topic: str, key: bytes | None, value: bytes, on_ack: Callable[[], None],
        headers: list[tuple[str, bytes]] | None = None, tries: int = 0,
    ) -> None:
        future = self._producer.send(topic, key=key, value=value, headers=headers or None)

        def ok(_meta: Any) -> None:
            on_ack()

        def failed(exc: BaseException) -> None:
            if self.transactional:  # the transaction fails with it and is aborted; the loop redoes its records
                log.warning("send failed in a transaction", extra={"key": key, "topic": topic, "error": repr(exc)})
                return
            if not getattr(exc, "retriable", True) and not isinstance(exc, Errors.KafkaTimeoutError):
                # Retrying cannot help (e.g. a record over the broker's size limit): say so loudly. The offset
                # stays uncommitted, so the event is re-delivered after the cause is fixed; nothing is lost.
                log.error("send failed permanently", extra={"key": key, "topic": topic, "error": repr(exc)})
                return
            if self._closing.is_set():
                log.error("send failed while closing; offset stays uncommitted", extra={"key": key})
                return
            metrics.PUBLISH_RETRIES.inc()
            delay = next(itertools.islice(self.backoff.delays(), tries, None))
            log.warning("send failed, retrying", extra={"key": key, "topic": topic, "error": repr(exc),
                                                         "retry_in_s": round(delay, 2)})
            self.schedule(delay, lambda: self._send_raw(topic, key, value, on_ack, headers, tries + 1))

        future.add_callback(ok)
        future.add_errback(failed)

    def flush(self, timeout_s: float) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        self._closing.set()
        self._producer.close(timeout=timeout_s)


def _timer_thread(delay_s: float, fn: Callable[[], None]) -> None:
    timer = threading.Timer(delay_s, fn)
    timer.daemon = True
    timer.start()
