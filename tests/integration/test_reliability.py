"""Rebalances, outages and shutdown on the real stack: nothing lost, nothing wrongly answered (issue 8)."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from harness import Stack, Topics, collect
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from . import media
from .conftest import WorkerFactory


class QuietHandler(BaseHTTPRequestHandler):
    """A test origin's request handler that keeps its access log out of the test output."""

    def log_message(self, format: str, *args: object) -> None:
        return


def serve_locally(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """`handler` served on a free 127.0.0.1 port from a daemon thread (stop it with `.shutdown()`)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class HeldOrigin:
    """An origin on 127.0.0.1 that answers /slow.png only once released (the event stays in flight)."""

    def __init__(self, body: bytes) -> None:
        self.release = threading.Event()
        self.requests = 0
        origin = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                origin.requests += 1
                if self.path.startswith("/slow"):
                    origin.release.wait(120)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = serve_locally(Handler)
        self.port = self.server.server_address[1]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


@pytest.fixture
def origin() -> Iterator[HeldOrigin]:
    o = HeldOrigin(media.still_png())
    yield o
    o.close()


@pytest.fixture
def two_partitions(bootstrap: str) -> Topics:
    return Topics.fresh(bootstrap, prefix="rb", partitions=2)


def send(bootstrap: str, topic: str, events: list[tuple[str, bytes, bytes]], partition: int | None = None) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all", max_request_size=16 * 1024 * 1024)
    try:
        for f in [producer.send(topic, key=k, value=v, partition=partition) for _, k, v in events]:
            f.get(timeout=30)
    finally:
        producer.close(timeout=10)


def committed(bootstrap: str, group: str, topic: str, partition: int) -> int | None:
    """The group's committed offset (read without joining the group)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), group_id=group, enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(topic, partition))
    finally:
        consumer.close(autocommit=False)


def by_id(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(r["id"], []).append(r)
    return out


def ready_status(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_rebalance_with_a_slow_event_in_flight_loses_nothing_across_a_restart(
    bootstrap: str, two_partitions: Topics, origin: HeldOrigin, start_worker: WorkerFactory,
) -> None:
    topics = two_partitions
    env = {**topics.env(), "DFMOD_CACHE__ENABLED": "false", "DFMOD_FETCH__ALLOW_HOSTS": '["127.0.0.1"]',
           "DFMOD_KAFKA__REVOKE_WAIT_S": "2"}
    first = start_worker(**env)
    slow = media.event(uri=f"http://127.0.0.1:{origin.port}/slow.png")
    fast = [media.event(media.unique_still()[0]) for _ in range(4)]
    send(bootstrap, topics.events, [slow, *fast], partition=0)
    collect(bootstrap, topics.verdicts, {f[0] for f in fast}, timeout_s=120)
    assert origin.requests >= 1 and not origin.release.is_set(), "the slow event is in flight"
    second = start_worker(**env)  # a rebalance while the slow event is in flight
    time.sleep(8)
    origin.release.set()
    ids = {slow[0], *(f[0] for f in fast)}
    verdicts = by_id(collect(bootstrap, topics.verdicts, ids, timeout_s=120))
    assert set(verdicts) == ids
    first.stop()
    second.stop()
    third = start_worker(**env)  # a restart: whatever was committed must not skip the slow event
    assert committed(bootstrap, topics.group, topics.events, 0) == 5, "partition 0 committed to its end"
    assert "partitions revoked" in first.log_path.read_text() + second.log_path.read_text()
    assert all(v["data"]["status"] == "ok" for vs in verdicts.values() for v in vs)
    third.stop()


def test_the_commit_on_revoke_succeeds_so_finished_work_is_not_redelivered(
    bootstrap: str, two_partitions: Topics, start_worker: WorkerFactory
) -> None:
    topics = two_partitions
    # No periodic commits: only the commit on revoke can move the offsets.
    env = {**topics.env(), "DFMOD_KAFKA__COMMIT_INTERVAL_S": "3600"}
    first = start_worker(**env)
    sent = [media.event(media.still_png()) for _ in range(8)]
    send(bootstrap, topics.events, sent[:4], partition=0)
    send(bootstrap, topics.events, sent[4:], partition=1)
    collect(bootstrap, topics.verdicts, {s[0] for s in sent}, timeout_s=120)
    start_worker(**env)  # cooperative rebalance: one partition moves to the newcomer
    time.sleep(15)
    log = first.log_path.read_text()
    assert "partitions revoked" in log and "commit on revoke failed" not in log
    verdicts = by_id(collect(bootstrap, topics.verdicts, 10_000, timeout_s=10))
    assert all(len(v) == 1 for v in verdicts.values()), "finished work was redelivered after the rebalance"
    assert len(verdicts) == 8


def test_a_triton_outage_delays_verdicts_and_answers_no_error(
    bootstrap: str, topics: Topics, stack: Stack, start_worker: WorkerFactory
) -> None:
    worker = start_worker(DFMOD_CACHE__ENABLED="false")
    warm = media.event(media.still_png())
    send(bootstrap, topics.events, [warm])
    collect(bootstrap, topics.verdicts, {warm[0]}, timeout_s=60)
    stack.down("triton")
    try:
        during = [media.event(media.unique_still()[0]) for _ in range(6)]
        send(bootstrap, topics.events, during)
        time.sleep(20)
        assert ready_status(worker.http_port) == 503, "/readyz says the worker cannot work"
        early = collect(bootstrap, topics.verdicts, 10_000, timeout_s=3)
        assert {v["id"] for v in early} == {warm[0]}, "nothing is answered while Triton is down"
    finally:
        stack.up("triton")
    verdicts = by_id(collect(bootstrap, topics.verdicts, {d[0] for d in during}, timeout_s=300))
    assert all(v["data"]["status"] == "ok" for vs in verdicts.values() for v in vs), verdicts
    assert 'dfmod_inference_retries_total' in worker.metrics()
    worker.wait_ready(60)


def test_sigterm_mid_batch_publishes_no_error_and_loses_nothing(
    bootstrap: str, topics: Topics, start_worker: WorkerFactory
) -> None:
    blobs = [media.video_mp4(seconds=1.0 + 0.1 * i) if i % 2 else media.still_jpeg(quality=60 + i) for i in range(16)]
    sent = [media.event(b) for b in blobs]
    send(bootstrap, topics.events, sent)
    ids = {s[0] for s in sent}
    first = start_worker(DFMOD_CACHE__ENABLED="false", DFMOD_DRAIN_TIMEOUT_S="1")
    collect(bootstrap, topics.verdicts, 2, timeout_s=120)
    assert first.stop() == 0  # SIGTERM mid-run
    assert "drained" in first.log_path.read_text()
    start_worker(DFMOD_CACHE__ENABLED="false")
    verdicts = by_id(collect(bootstrap, topics.verdicts, ids, timeout_s=240))
    assert set(verdicts) == ids, f"missing verdicts for {ids - set(verdicts)}"
    statuses = [v["data"]["status"] for vs in verdicts.values() for v in vs]
    assert statuses.count("error") == 0 and set(statuses) == {"ok"}, statuses


class FlakyOrigin:
    """/flaky.png answers 503 to its first two requests, /down.png always: transient per-item failures."""

    def __init__(self, body: bytes) -> None:
        self.hits: dict[str, int] = {}
        origin = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                n = origin.hits[self.path] = origin.hits.get(self.path, 0) + 1
                if self.path.startswith("/down") or (self.path.startswith("/flaky") and n <= 2):
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = serve_locally(Handler)
        self.port = self.server.server_address[1]


def test_an_origin_503_is_retried_through_the_retry_topic_then_answered(
    bootstrap: str, topics: Topics, start_worker: WorkerFactory
) -> None:
    origin = FlakyOrigin(media.still_png())
    try:
        start_worker(DFMOD_FETCH__ALLOW_HOSTS='["127.0.0.1"]', DFMOD_RETRY__ITEM_ATTEMPTS="3",
                     DFMOD_RETRY__ITEM_DELAYS_S="[1.0]")
        flaky = media.event(uri=f"http://127.0.0.1:{origin.port}/flaky.png")
        down = media.event(uri=f"http://127.0.0.1:{origin.port}/down.png")
        send(bootstrap, topics.events, [flaky, down])
        verdicts = by_id(collect(bootstrap, topics.verdicts, {flaky[0], down[0]}, timeout_s=120))
        assert [v["data"]["status"] for v in verdicts[flaky[0]]] == ["ok"], "503 twice, then answered: one verdict"
        assert origin.hits["/flaky.png"] == 3
        (last,) = verdicts[down[0]]
        assert last["data"]["status"] == "error" and last["data"]["error"]["code"] == "fetch_failed"
        assert origin.hits["/down.png"] == 3, "the configured number of attempts"
        dlq = collect(bootstrap, topics.dlq, 1, timeout_s=30)
        assert len(dlq) == 1 and "after 3 attempts" in dlq[0]["data"]["reason"]
        retried = collect(bootstrap, topics.retry, 4, timeout_s=30)
        assert len(retried) == 4, "two retry-topic records per event"
    finally:
        origin.server.shutdown()
