"""The consume loop against fakes of its three collaborators: consumer, publisher, pipeline (no servers)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from worker.core.contracts import DeadLetter, MediaData, Verdict, VerdictData
from worker.core.errors import ErrorCode, MediaError
from worker.core.retry import Breaker
from worker.core.settings import CacheSettings, WorkerSettings
from worker.core.version import pipeline_version
from worker.scoring.pipeline import Stopped, TransientFailure
from worker.stream.consumer import RebalanceEvent
from worker.stream.crash_guard import DeliveryGuard
from worker.stream.loop import ConsumeLoop
from worker.stream.publisher import ATTEMPT_HEADER, Send, TransactionAborted

TOPIC = "events"
TP0, TP1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


def record(offset: int, partition: int = 0, event_id: str | None = None, topic: str = TOPIC,
           headers: list[tuple[str, bytes]] | None = None, value: bytes | None = None) -> ConsumerRecord:
    body = value if value is not None else json.dumps({
        "specversion": "1.0", "id": event_id or f"e{partition}-{offset}", "source": "t", "type": "media.event",
        "data": {"uri": f"https://example.com/{partition}/{offset}.png"},
    }).encode()
    return ConsumerRecord(topic, partition, -1, offset, 0, 0, None, body, headers or [], None,
                          len(body), -1, -1)


class FakeConsumer:
    def __init__(self) -> None:
        self.paused = False
        self.queue: list[ConsumerRecord] = []
        self.events: list[RebalanceEvent] = []
        self.commits: list[dict[TopicPartition, int]] = []
        self.closed = False
        self.on_poll: Callable[[], None] | None = None
        self.per_poll = 1000
        self.reasons: list[str] = []
        self.rewinds: list[dict[TopicPartition, int]] = []

    def poll(self, timeout_ms: int, max_records: int) -> list[ConsumerRecord]:
        if self.on_poll is not None:
            self.on_poll()
        if self.paused or max_records <= 0:
            time.sleep(0.005)
            return []
        n = min(max_records, self.per_poll)
        out, self.queue = self.queue[:n], self.queue[n:]
        return out

    def rebalance_events(self) -> list[RebalanceEvent]:
        out, self.events = self.events, []
        return out

    def set_paused(self, paused: bool, reason: str = "backpressure") -> None:
        self.paused = paused
        self.reasons.append(reason if paused else "resumed")

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def close(self) -> None:
        self.closed = True

    def group_metadata(self) -> object:
        return "group-metadata"

    def rewind(self, positions: Mapping[TopicPartition, int]) -> None:
        self.rewinds.append(dict(positions))

    def committed(self, tp: TopicPartition) -> int | None:
        values = [c[tp] for c in self.commits if tp in c]
        return max(values) if values else None


class FakePublisher:
    """Acks every send at once (the broker has it)."""

    def __init__(self) -> None:
        self.verdicts: list[Verdict] = []
        self.dead: list[DeadLetter] = []
        self.retries: list[tuple[ConsumerRecord, int, int]] = []
        self.lock = threading.Lock()
        self.transactions: list[tuple[list[str], dict[TopicPartition, int]]] = []
        self.abort_next = 0

    def publish_verdict(self, verdict: Verdict, on_ack: Callable[[], None]) -> None:
        with self.lock:
            self.verdicts.append(verdict)
        on_ack()

    def publish_dead_letter(self, rec: DeadLetter, on_ack: Callable[[], None]) -> None:
        with self.lock:
            self.dead.append(rec)
        on_ack()

    def publish_retry(self, rec: ConsumerRecord, attempt: int, not_before_ms: int,
                      on_ack: Callable[[], None]) -> None:
        with self.lock:
            self.retries.append((rec, attempt, not_before_ms))
        on_ack()

    def commit_transaction(self, sends: Iterable[Send], offsets: Mapping[TopicPartition, int],
                           group_metadata: object) -> None:
        """All of `sends` and `offsets`, or (`abort_next`) none of them."""
        assert group_metadata == "group-metadata"
        before = len(self.verdicts), len(self.dead), len(self.retries)
        for send in sends:
            send(self)  # type: ignore[arg-type]
        if self.abort_next:
            self.abort_next -= 1
            del self.verdicts[before[0]:], self.dead[before[1]:], self.retries[before[2]:]
            raise TransactionAborted("broker said no")
        self.transactions.append(([v.id for v in self.verdicts[before[0]:]], dict(offsets)))

    def flush(self, timeout_s: float) -> None:
        pass

    def close(self) -> None:
        pass

    def ids(self) -> list[str]:
        return [v.id for v in self.verdicts]


def ok() -> VerdictData:
    return VerdictData(status="ok", label="real", score=0.1)


class ScriptedPipeline:
    """Answers `ok` at once, except for URIs that `hold` names (released later) or `script` maps."""

    def __init__(self, threads: int = 2) -> None:
        self.hold: dict[str, threading.Event] = {}
        self.script: dict[str, Callable[[bool], VerdictData]] = {}
        self.calls: list[tuple[str, bool]] = []
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="scripted")

    def submit(self, data: MediaData, final_attempt: bool = True) -> Future[VerdictData]:
        return self.pool.submit(self.process, data, final_attempt)

    def process(self, data: MediaData, final_attempt: bool = True) -> VerdictData:
        uri = str(data.uri)
        self.calls.append((uri, final_attempt))
        gate = self.hold.get(uri)
        if gate is not None and not gate.wait(10):
            raise Stopped()
        if uri in self.script:
            return self.script[uri](final_attempt)
        return ok()


def uri(partition: int, offset: int) -> str:
    return f"https://example.com/{partition}/{offset}.png"


def make(**overrides: Any) -> tuple[ConsumeLoop, FakeConsumer, FakePublisher, ScriptedPipeline]:
    settings = WorkerSettings(media_threads=2, drain_timeout_s=2.0)
    settings.kafka.commit_interval_s = 0.0
    settings.kafka.revoke_wait_s = 2.0
    for key, value in overrides.items():
        setattr(settings, key, value)
    consumer, publisher, pipeline = FakeConsumer(), FakePublisher(), ScriptedPipeline(settings.media_threads)
    loop = ConsumeLoop(settings, consumer, publisher, pipeline, None)
    return loop, consumer, publisher, pipeline


def shutdown(loop: ConsumeLoop) -> None:
    pipeline = loop.pipeline
    assert isinstance(pipeline, ScriptedPipeline)
    pipeline.pool.shutdown()


def turn_until(loop: ConsumeLoop, done: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "condition not reached"
        loop.turn()


def test_every_record_answered_and_committed_contiguously() -> None:
    loop, consumer, publisher, _ = make()
    consumer.queue = [record(o) for o in range(5)] + [record(o, 1) for o in range(3)]
    turn_until(loop, lambda: len(publisher.verdicts) == 8 and loop.tracker.in_flight() == 0)
    loop.turn()
    assert consumer.committed(TP0) == 5 and consumer.committed(TP1) == 3
    shutdown(loop)


def test_a_slow_event_holds_the_commit_of_its_partition_only() -> None:
    loop, consumer, publisher, pipeline = make()
    pipeline.hold[uri(0, 1)] = gate = threading.Event()
    consumer.queue = [record(o) for o in range(4)] + [record(0, 1)]
    # four answered AND acknowledged (a verdict is recorded just before its ack runs on the media thread)
    turn_until(loop, lambda: len(publisher.verdicts) == 4 and loop.tracker.in_flight() == 1)
    loop.turn()
    assert consumer.committed(TP0) == 1, "offset 1 is still in flight: nothing past it is committed"
    assert consumer.committed(TP1) == 1
    gate.set()
    turn_until(loop, lambda: consumer.committed(TP0) == 4)
    shutdown(loop)


def test_revocation_waits_for_in_flight_work_then_commits_before_letting_go() -> None:
    loop, consumer, publisher, pipeline = make()
    pipeline.hold[uri(0, 2)] = gate = threading.Event()
    consumer.queue = [record(o) for o in range(4)] + [record(o, 1) for o in range(2)]
    turn_until(loop, lambda: len(publisher.verdicts) == 5)
    threading.Timer(0.3, gate.set).start()  # the slow one finishes while the loop waits for it
    consumer.events = [RebalanceEvent("revoked", frozenset({TP0}))]
    loop.turn()
    assert consumer.committed(TP0) == 4, "the revoked partition's finished work is committed on revoke"
    assert loop.tracker.pending(TP0) == 0 and TP0 not in loop.tracker.committable()
    # The retained partition keeps its state: new records continue from where it was.
    consumer.queue = [record(2, 1)]
    turn_until(loop, lambda: consumer.committed(TP1) == 3)
    shutdown(loop)


def test_work_of_a_revoked_partition_that_outlives_the_wait_is_never_committed_nor_answered() -> None:
    loop, consumer, publisher, pipeline = make()
    loop.settings.kafka.revoke_wait_s = 0.1
    pipeline.hold[uri(0, 5)] = gate = threading.Event()
    consumer.queue = [record(o) for o in range(5, 10)]
    turn_until(loop, lambda: len(publisher.verdicts) == 4)
    consumer.events = [RebalanceEvent("revoked", frozenset({TP0}))]
    loop.turn()
    assert consumer.committed(TP0) is None, "offset 5 never finished: the commit must not pass it"
    gate.set()
    time.sleep(0.2)
    loop.turn()
    assert "e0-5" not in publisher.ids(), "the next owner answers it"
    # Re-assigned and redelivered from the committed position: answered now.
    consumer.events = [RebalanceEvent("assigned", frozenset({TP0}))]
    consumer.queue = [record(o) for o in range(5, 10)]
    turn_until(loop, lambda: consumer.committed(TP0) == 10)
    assert publisher.ids().count("e0-5") == 1
    shutdown(loop)


def test_lost_partitions_commit_nothing() -> None:
    loop, consumer, publisher, pipeline = make()
    pipeline.hold[uri(0, 0)] = threading.Event()
    consumer.queue = [record(0), record(1)]
    turn_until(loop, lambda: len(publisher.verdicts) == 1)
    consumer.events = [RebalanceEvent("lost", frozenset({TP0}))]
    loop.turn()
    assert consumer.commits == [] and loop.tracker.in_flight() == 0
    pipeline.hold[uri(0, 0)].set()
    shutdown(loop)


def test_an_open_breaker_pauses_consumption_until_the_probe_says_the_backend_is_back() -> None:
    loop, consumer, publisher, _ = make()
    back = threading.Event()
    loop.probe = back.is_set
    loop.breaker.failure()
    consumer.queue = [record(0)]
    loop.turn()
    assert consumer.paused and publisher.verdicts == [] and consumer.queue, "no new work while it is down"
    assert consumer.reasons[-1] == "inference down"
    back.set()
    loop._last_probe = 0.0
    turn_until(loop, lambda: publisher.ids() == ["e0-0"])
    assert not loop.breaker.is_open and not consumer.paused
    shutdown(loop)


def test_backpressure_by_bytes() -> None:
    loop, consumer, publisher, pipeline = make(max_in_flight_bytes=600)
    pipeline.hold[uri(0, 0)] = gate = threading.Event()
    big = record(2, value=json.dumps({"specversion": "1.0", "id": "big", "source": "t", "type": "media.event",
                                       "data": {"uri": uri(0, 0)}, "pad": "x" * 700}).encode())
    consumer.queue = [big, record(3)]
    consumer.per_poll = 1
    loop.turn()
    loop.turn()
    assert consumer.paused and len(consumer.queue) == 1, "one record over the byte budget: paused"
    assert consumer.reasons[-1] == "backpressure"
    gate.set()
    turn_until(loop, lambda: len(publisher.verdicts) == 2)
    shutdown(loop)


def test_a_transient_failure_goes_to_the_retry_topic_then_ends_in_an_error_and_a_dlq_record() -> None:
    loop, consumer, publisher, pipeline = make()
    loop.settings.retry.item_attempts = 2
    loop.settings.retry.item_delays_s = [0.2]

    def origin_503(final: bool) -> VerdictData:
        error = MediaError(ErrorCode.FETCH_FAILED, "HTTP 503 from origin", transient=True)
        if not final:
            raise TransientFailure(error)
        from worker.scoring.pipeline import failure_verdict

        return failure_verdict(error.code, error.message, None, pipeline_version=pipeline_version())

    pipeline.script[uri(0, 0)] = origin_503
    consumer.queue = [record(0)]
    turn_until(loop, lambda: len(publisher.retries) == 1)
    first, attempt, not_before = publisher.retries[0]
    assert attempt == 2 and not_before > time.time() * 1000 and publisher.verdicts == []
    loop.turn()
    assert consumer.committed(TP0) == 1, "parked on the retry topic: the source offset may move on"
    retry_tp = TopicPartition(loop.settings.kafka.retry_topic, 0)
    consumer.queue = [record(0, topic=retry_tp.topic, event_id="e0-0", headers=[
        (ATTEMPT_HEADER, b"2"), ("dfmod-not-before-ms", str(not_before).encode())])]
    consumer.queue[0] = consumer.queue[0]._replace(value=first.value)
    turn_until(loop, lambda: len(publisher.verdicts) == 1 and len(publisher.dead) == 1)
    assert pipeline.calls == [(uri(0, 0), False), (uri(0, 0), True)]
    assert publisher.verdicts[0].data.error is not None and publisher.verdicts[0].data.status == "error"
    turn_until(loop, lambda: consumer.committed(retry_tp) == 1)
    shutdown(loop)


def test_sigterm_drains_in_flight_work_and_answers_nothing_unfinished() -> None:
    loop, consumer, publisher, pipeline = make()
    loop.settings.drain_timeout_s = 0.5
    pipeline.hold[uri(0, 1)] = gate = threading.Event()  # never released: it outlives the grace period
    consumer.queue = [record(o) for o in range(3)]
    turn_until(loop, lambda: len(publisher.verdicts) == 2)
    loop.stop_requested.set()
    loop.run()
    assert consumer.closed and consumer.paused
    assert sorted(publisher.ids()) == ["e0-0", "e0-2"], "no verdict, and no error, for the unfinished one"
    assert consumer.committed(TP0) == 1, "committed up to the unfinished one; the next owner redoes it"
    gate.set()
    time.sleep(0.1)
    assert sorted(publisher.ids()) == ["e0-0", "e0-2"], "a late result after the drain is not published"


class FakeRedisPipe:
    def __init__(self, store: dict[str, int]) -> None:
        self.store, self.ops = store, []  # type: ignore[var-annotated]

    def incr(self, key: str) -> None:
        self.ops.append(("incr", key))

    def expire(self, key: str, _ttl: int) -> None:
        self.ops.append(("expire", key))

    def delete(self, key: str) -> None:
        self.ops.append(("delete", key))

    def decr(self, key: str) -> None:
        self.ops.append(("decr", key))

    def execute(self) -> list[Any]:
        out: list[Any] = []
        for op, key in self.ops:
            if op == "incr":
                self.store[key] = self.store.get(key, 0) + 1
                out.append(self.store[key])
            elif op == "decr":
                self.store[key] = self.store.get(key, 0) - 1
                out.append(self.store[key])
            elif op == "delete":
                out.append(int(self.store.pop(key, None) is not None))
            else:
                out.append(True)
        return out


class FakeRedis:
    def __init__(self) -> None:
        self.store: dict[str, int] = {}

    def pipeline(self, transaction: bool = False) -> FakeRedisPipe:
        return FakeRedisPipe(self.store)

    def close(self) -> None:
        pass


def test_crash_loop_guard_dead_letters_a_record_that_was_in_flight_at_each_death() -> None:
    redis = FakeRedis()
    for _death in range(2):  # two workers took offset 0 and died without answering it
        guard = DeliveryGuard(CacheSettings(), "g", max_deliveries=2, client=redis)
        guard.begin([(TOPIC, 0, 0)])
    guard = DeliveryGuard(CacheSettings(), "g", max_deliveries=2, client=redis)
    loop, consumer, publisher, pipeline = make()
    loop.guard = guard
    consumer.queue = [record(0), record(1)]
    turn_until(loop, lambda: len(publisher.dead) == 1 and len(publisher.verdicts) == 1)
    assert "crash-loop guard" in publisher.dead[0].data.reason
    assert [c[0] for c in pipeline.calls] == [uri(0, 1)], "the poison record is not processed again"
    turn_until(loop, lambda: consumer.committed(TP0) == 2)
    assert redis.store == {}, "answered records are forgotten"
    shutdown(loop)


def test_crash_loop_guard_fails_open_without_redis() -> None:
    class Down(FakeRedis):
        def pipeline(self, transaction: bool = False) -> FakeRedisPipe:
            raise ConnectionError("redis down")

    loop, consumer, publisher, _ = make()
    loop.guard = DeliveryGuard(CacheSettings(), "g", max_deliveries=1, client=Down())
    consumer.queue = [record(0)]
    turn_until(loop, lambda: publisher.ids() == ["e0-0"])
    shutdown(loop)


def test_an_unparseable_record_gets_a_dlq_record_and_the_next_one_its_verdict() -> None:
    loop, consumer, publisher, _ = make()
    consumer.queue = [record(0, value=b"\x00not json"), record(1)]
    turn_until(loop, lambda: len(publisher.dead) == 1 and len(publisher.verdicts) == 1)
    turn_until(loop, lambda: consumer.committed(TP0) == 2)
    shutdown(loop)


def test_a_record_that_breaks_taking_gets_a_dlq_record_and_does_not_hold_its_partition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug while routing one record (here: the event parser raises) dead-letters it and lets the offset advance."""
    import worker.stream.loop as loop_module

    real_parse = loop_module.parse_event

    def parse_or_break(value: bytes | None, headers: object) -> object:
        if value == b"breaks the parser":
            raise ValueError("a parser bug")
        return real_parse(value, headers)  # type: ignore[arg-type]

    monkeypatch.setattr(loop_module, "parse_event", parse_or_break)
    loop, consumer, publisher, _ = make()
    consumer.queue = [record(0, value=b"breaks the parser"), record(1)]
    turn_until(loop, lambda: len(publisher.dead) == 1 and len(publisher.verdicts) == 1)
    turn_until(loop, lambda: consumer.committed(TP0) == 2)
    assert publisher.dead[0].data.reason == "internal error while taking the record"
    assert loop.tracker.in_flight() == 0
    shutdown(loop)


def test_breaker_opens_once_and_closes_once() -> None:
    seen: list[bool] = []
    breaker = Breaker("x", on_change=seen.append)
    breaker.failure()
    breaker.failure()
    breaker.success()
    breaker.success()
    assert seen == [True, False]


def test_the_rebalance_listener_only_records_and_never_calls_the_consumer() -> None:
    from worker.stream.consumer import _Recorder

    recorder = _Recorder()
    recorder.on_partitions_assigned({TP0, TP1})
    recorder.on_partitions_revoked({TP1})
    recorder.on_partitions_revoked(set())  # nothing changed: nothing recorded
    recorder.on_partitions_lost({TP0})
    assert [(e.kind, set(e.partitions)) for e in recorder.drain()] == [
        ("assigned", {TP0, TP1}), ("revoked", {TP1}), ("lost", {TP0})]
    assert recorder.drain() == []


def test_without_a_retry_topic_a_transient_failure_is_answered_at_once() -> None:
    loop, consumer, publisher, pipeline = make()

    def no_topic(*_args: object) -> None:
        raise RuntimeError("KafkaTimeoutError: topic media.events.retry not in metadata")

    publisher.publish_retry = no_topic  # type: ignore[method-assign,assignment]

    def origin_503(final: bool) -> VerdictData:
        raise TransientFailure(MediaError(ErrorCode.FETCH_FAILED, "HTTP 503", transient=True))

    pipeline.script[uri(0, 0)] = origin_503
    consumer.queue = [record(0)]
    turn_until(loop, lambda: consumer.committed(TP0) == 1)
    (verdict,) = publisher.verdicts
    assert verdict.data.status == "error" and verdict.data.error is not None
    assert verdict.data.error.code == "fetch_failed"
    shutdown(loop)


def test_a_failure_the_loop_answers_carries_the_pipeline_version_its_successes_carry() -> None:
    """Under `decode.sampling=keyframes` successes carry `+sampling-keyframes`: the loop's failures must too."""
    loop, consumer, publisher, pipeline = make()
    loop.settings.decode.sampling = "keyframes"
    loop = ConsumeLoop(loop.settings, consumer, publisher, pipeline, None)

    def bug(final: bool) -> VerdictData:
        raise RuntimeError("a bug outside the pipeline's guard")

    pipeline.script[uri(0, 0)] = bug
    consumer.queue = [record(0)]
    turn_until(loop, lambda: consumer.committed(TP0) == 1)
    (verdict,) = publisher.verdicts
    assert verdict.data.error is not None and verdict.data.error.code == "internal_error"
    assert verdict.data.pipeline_version == pipeline_version("keyframes")
    assert verdict.data.pipeline_version.endswith("+sampling-keyframes")
    shutdown(loop)


class IOThreadPublisher(FakePublisher):
    """Acks from another thread, as kafka-python's I/O thread does; records which thread each send came from."""

    def __init__(self) -> None:
        super().__init__()
        self.send_threads: set[str] = set()
        self.io = ThreadPoolExecutor(1, thread_name_prefix="producer-io")

    def _sent(self, on_ack: Callable[[], None]) -> None:
        self.send_threads.add(threading.current_thread().name)
        self.io.submit(on_ack)

    def publish_verdict(self, verdict: Verdict, on_ack: Callable[[], None]) -> None:
        with self.lock:
            self.verdicts.append(verdict)
        self._sent(on_ack)

    def publish_dead_letter(self, rec: DeadLetter, on_ack: Callable[[], None]) -> None:
        with self.lock:
            self.dead.append(rec)
        self._sent(on_ack)


def test_only_the_loop_thread_publishes_and_records_acks() -> None:
    """Verdicts settle on the pipeline's threads and acks arrive on the producer's: both come back to the loop."""
    loop, consumer, _, _pipeline = make()
    publisher = IOThreadPublisher()
    loop.publisher = publisher
    ack_threads: set[str] = set()
    real_ack = loop.tracker.ack

    def ack(*args: Any) -> Any:
        ack_threads.add(threading.current_thread().name)
        return real_ack(*args)

    loop.tracker.ack = ack  # type: ignore[method-assign]
    consumer.queue = [record(o) for o in range(6)] + [record(0, 1, value=b"\x00not json")]
    loop_thread = threading.current_thread().name
    turn_until(loop, lambda: consumer.committed(TP0) == 6 and consumer.committed(TP1) == 1)
    assert len(publisher.verdicts) == 6 and len(publisher.dead) == 1
    assert publisher.send_threads == {loop_thread}
    assert ack_threads == {loop_thread}
    publisher.io.shutdown()
    shutdown(loop)


def exactly_once() -> tuple[ConsumeLoop, FakeConsumer, FakePublisher, ScriptedPipeline]:
    loop, consumer, publisher, pipeline = make()
    loop.settings.kafka.exactly_once = loop.exactly_once = True
    loop.settings.kafka.transaction_interval_ms = 1
    return loop, consumer, publisher, pipeline


def test_exactly_once_publishes_answers_only_in_the_transaction_that_commits_their_offsets() -> None:
    loop, consumer, publisher, pipeline = exactly_once()
    pipeline.hold[uri(0, 1)] = gate = threading.Event()
    consumer.queue = [record(o) for o in range(4)]
    turn_until(loop, lambda: loop.tracker.in_flight() == 1 and len(loop.outbox) == 2 and
               bool(publisher.transactions))
    for _ in range(5):
        time.sleep(0.002)
        loop.turn()
    # offsets 2 and 3 are answered, but 1 is not: their verdicts wait, unpublished, for 1
    assert publisher.transactions == [(["e0-0"], {TP0: 1})]
    assert publisher.ids() == ["e0-0"] and len(loop.outbox) == 2
    gate.set()
    turn_until(loop, lambda: loop.tracker.committable() == {} and len(loop.outbox) == 0 and
               loop.tracker.in_flight() == 0)
    assert publisher.ids() == ["e0-0", "e0-1", "e0-2", "e0-3"]
    assert publisher.transactions[-1] == (["e0-1", "e0-2", "e0-3"], {TP0: 4})
    assert consumer.commits == [], "exactly-once mode commits offsets only inside transactions"
    shutdown(loop)


def test_an_aborted_transaction_rewinds_its_partitions_and_their_events_are_answered_once() -> None:
    loop, consumer, publisher, _ = exactly_once()
    publisher.abort_next = 1
    records = [record(o) for o in range(3)] + [record(0, 1)]
    consumer.queue = list(records)
    loop.settings.kafka.transaction_interval_ms = 60_000  # all four answered before the first transaction
    loop._last_commit = time.monotonic()
    turn_until(loop, lambda: len(loop.outbox) == 4)
    loop.settings.kafka.transaction_interval_ms = 1
    turn_until(loop, lambda: bool(consumer.rewinds))
    assert consumer.rewinds == [{TP0: 0, TP1: 0}], "back to the last commit (the first offsets taken)"
    assert publisher.ids() == [] and len(loop.outbox) == 0 and loop.tracker.in_flight() == 0
    consumer.queue = list(records)  # what the seek makes the consumer read again
    turn_until(loop, lambda: publisher.transactions and loop.tracker.committable() == {} and
               loop.tracker.in_flight() == 0)
    assert sorted(publisher.ids()) == ["e0-0", "e0-1", "e0-2", "e1-0"]
    assert publisher.transactions == [(publisher.ids(), {TP0: 3, TP1: 1})]
    shutdown(loop)


def test_exactly_once_late_answers_of_a_rewound_partition_are_never_published() -> None:
    loop, consumer, publisher, pipeline = exactly_once()
    pipeline.hold[uri(0, 1)] = gate = threading.Event()
    publisher.abort_next = 1
    consumer.queue = [record(0), record(1)]
    turn_until(loop, lambda: bool(consumer.rewinds))
    gate.set()  # offset 1 finishes after its partition was rewound
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        loop.turn()
    assert publisher.ids() == [] and len(loop.outbox) == 0
    shutdown(loop)


def test_exactly_once_lost_partitions_drop_their_held_answers() -> None:
    loop, consumer, publisher, _ = exactly_once()
    loop.settings.kafka.transaction_interval_ms = 60_000  # nothing commits in this test by time
    loop._last_commit = time.monotonic()
    consumer.queue = [record(0, 1), record(1, 1)]
    turn_until(loop, lambda: len(loop.outbox) == 2 and loop.tracker.in_flight() == 0)
    consumer.events = [RebalanceEvent("lost", frozenset({TP1}))]
    loop.turn()
    loop.drain()
    assert len(loop.outbox) == 0 and publisher.ids() == [] and publisher.transactions == []
    shutdown(loop)


def test_exactly_once_revocation_commits_the_held_answers_before_letting_go() -> None:
    loop, consumer, publisher, _ = exactly_once()
    loop.settings.kafka.transaction_interval_ms = 60_000
    loop._last_commit = time.monotonic()
    consumer.queue = [record(0, 1), record(1, 1)]
    turn_until(loop, lambda: len(loop.outbox) == 2 and loop.tracker.in_flight() == 0)
    consumer.events = [RebalanceEvent("revoked", frozenset({TP1}))]
    loop.turn()
    assert publisher.transactions == [(["e1-0", "e1-1"], {TP1: 2})]
    assert len(loop.outbox) == 0
    shutdown(loop)


def test_exactly_once_revocation_whose_transaction_aborts_lets_go_without_reading_the_partition_again() -> None:
    loop, consumer, publisher, _ = exactly_once()
    loop.settings.kafka.transaction_interval_ms = 60_000
    loop._last_commit = time.monotonic()
    consumer.queue = [record(0, 1), record(1, 1)]
    turn_until(loop, lambda: len(loop.outbox) == 2 and loop.tracker.in_flight() == 0)
    publisher.abort_next = 1
    consumer.events = [RebalanceEvent("revoked", frozenset({TP1}))]
    loop.turn()
    assert consumer.rewinds == [], "the partition is going: its next owner reads it from the last commit"
    assert publisher.ids() == [] and len(loop.outbox) == 0 and loop.tracker.committable() == {}
    shutdown(loop)
