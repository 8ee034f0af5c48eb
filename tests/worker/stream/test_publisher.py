"""The publisher counts a DLQ or retry-topic record once the broker has it, never once per attempt.

The Kafka producer is replaced by a recording fake: what is under test is the publisher's bookkeeping
around it (the real producer is exercised by the integration and soak tests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kafka import TopicPartition
from kafka import errors as Errors
from kafka.consumer.fetcher import ConsumerRecord

from worker.core.contracts import DeadLetter, DeadLetterData
from worker.core.settings import KafkaSettings
from worker.obs import metrics
from worker.stream import publisher as publisher_module
from worker.stream.publisher import Publisher, TransactionAborted


class FakeFuture:
    def __init__(self) -> None:
        self.callbacks: list[Callable[[Any], None]] = []

    def add_callback(self, fn: Callable[[Any], None]) -> None:
        self.callbacks.append(fn)

    def add_errback(self, fn: Callable[[BaseException], None]) -> None:
        pass

    def succeed(self) -> None:
        for fn in self.callbacks:
            fn(None)


class FakeProducer:
    def __init__(self, **_config: Any) -> None:
        self.futures: list[FakeFuture] = []
        self.fail_next_commit = False

    def init_transactions(self) -> None: ...
    def begin_transaction(self) -> None: ...
    def send_offsets_to_transaction(self, _offsets: Any, _group: object) -> None: ...
    def abort_transaction(self) -> None: ...

    def commit_transaction(self) -> None:
        if self.fail_next_commit:
            self.fail_next_commit = False
            raise Errors.KafkaTimeoutError("coordinator went away")

    def send(self, _topic: str, **_kwargs: Any) -> FakeFuture:
        future = FakeFuture()
        self.futures.append(future)
        return future


@pytest.fixture
def fake_producer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publisher_module, "KafkaProducer", FakeProducer)


def _dead_letter() -> DeadLetter:
    return DeadLetter(data=DeadLetterData(reason="bad", topic="media.events", partition=0, offset=7, value_b64=""))


def _record() -> ConsumerRecord:
    return ConsumerRecord("media.events", 0, -1, 7, 0, 0, None, b"{}", [], None, 2, -1, -1)


def _count(counter: Any) -> float:
    return float(counter._value.get())


@pytest.mark.usefixtures("fake_producer")
def test_at_least_once_counts_a_dead_letter_at_its_ack_not_at_its_send() -> None:
    pub = Publisher(KafkaSettings())
    before = _count(metrics.DLQ)
    acks: list[int] = []
    pub.publish_dead_letter(_dead_letter(), lambda: acks.append(1))
    assert _count(metrics.DLQ) == before
    producer: FakeProducer = pub._producer  # type: ignore[assignment]
    producer.futures[-1].succeed()
    assert (_count(metrics.DLQ), acks) == (before + 1, [1])


@pytest.mark.usefixtures("fake_producer")
def test_exactly_once_counts_records_only_with_the_transaction_that_commits_them() -> None:
    pub = Publisher(KafkaSettings(exactly_once=True, transactional_id="t-1"))
    producer: FakeProducer = pub._producer  # type: ignore[assignment]
    dlq, retries = _count(metrics.DLQ), _count(metrics.ITEM_RETRIES)
    sends = [lambda p: p.publish_dead_letter(_dead_letter(), lambda: None),
             lambda p: p.publish_retry(_record(), 1, 0, lambda: None)]
    offsets = {TopicPartition("media.events", 0): 8}

    producer.fail_next_commit = True
    with pytest.raises(TransactionAborted):
        pub.commit_transaction(sends, offsets, object())
    assert (_count(metrics.DLQ), _count(metrics.ITEM_RETRIES)) == (dlq, retries)  # aborted: nothing counts

    pub.commit_transaction(sends, offsets, object())  # the loop's redo after its rewind
    assert (_count(metrics.DLQ), _count(metrics.ITEM_RETRIES)) == (dlq + 1, retries + 1)
