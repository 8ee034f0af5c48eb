"""Hostile records and media on the real stack: nothing crashes the worker, bombs cost no memory, both
CloudEvents content modes work, and a group photo has every face scored."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.v1.event import CloudEvent
from harness import Headers, Topics, WorkerProcess, collect_with_headers, produce, produce_with_headers

from tests.worker.media.test_image_header import png_bomb
from worker.cli.demo_media import encode_image, mosaic
from worker.core.types import RGBImage

from . import media
from .conftest import WorkerFactory

STRUCTURED = ("content-type", b"application/cloudevents+json")
#: The session's Redis is shared: these tests send the plain portrait, whose verdict must not be cached for
#: tests that expect to score it themselves (test_worker_e2e.py).
NO_CACHE = {"DFMOD_CACHE__ENABLED": "false"}


def verdict_of(bootstrap: str, topics: Topics, event_id: str, timeout_s: float = 90) -> dict[str, Any]:
    answers = collect_with_headers(bootstrap, topics.verdicts, {event_id}, timeout_s)
    found = [doc for doc, _ in answers if doc["id"] == event_id]
    assert found, f"no verdict for {event_id}"
    return found[0]["data"]


def proc_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def alive(worker: WorkerProcess) -> bool:
    return worker.proc is not None and worker.proc.poll() is None


def test_poison_records_land_in_the_dlq_and_the_worker_answers_the_next_event(
    bootstrap: str, topics: Topics, start_worker: WorkerFactory, astronaut_png_bytes: bytes
) -> None:
    worker = start_worker(**NO_CACHE)
    pid = worker.proc.pid if worker.proc else -1
    deep = (b'{"specversion": "1.0", "id": "deep", "source": "tests", "data": {"metadata": {"x": '
            + b"[" * 100_000 + b"]" * 100_000 + b"}}}")
    surrogate = b'{"specversion": "1.0", "id": "\\ud800", "source": "tests", "data": {"uri": "https://a/b.png"}}'
    control = json.dumps({"specversion": "1.0", "id": "bell\x07id", "source": "tests",
                          "data": {"uri": "https://a/b.png"}}).encode()
    binary_bad_id: Headers = [("ce_specversion", b"1.0"), ("ce_id", b"\xed\xa0\x80"), ("ce_source", b"tests"),
                              ("ce_type", b"media.submitted"), ("content-type", b"application/json")]
    good_id, _, good = media.event(astronaut_png_bytes)
    poison = [deep, surrogate, control, b'{"uri": "https://a/b.png"}']
    key = b"one-partition"  # the poison and the good event share a partition: it must not be stuck behind them
    produce_with_headers(bootstrap, topics.events, [(key, deep, []), (key, surrogate, []), (key, control, []),
                                                    (key, poison[3], binary_bad_id), (key, good, [])])

    assert verdict_of(bootstrap, topics, good_id)["status"] == "ok"
    dlq = collect_with_headers(bootstrap, topics.dlq, len(poison), timeout_s=60)
    assert sorted(base64.b64decode(doc["data"]["value_b64"]) for doc, _ in dlq) == sorted(poison)
    for doc, headers in dlq:
        assert doc["type"] == "media.deadletter" and doc["data"]["reason"].isprintable()
        assert STRUCTURED in headers
    assert alive(worker) and worker.proc is not None and worker.proc.pid == pid, "the worker never restarted"
    every = collect_with_headers(bootstrap, topics.verdicts, 10**6, timeout_s=5)  # all of them
    verdict_ids = {doc["id"] for doc, _ in every}
    assert verdict_ids == {good_id}, "no verdict for an id that is not printable text"
    assert "Traceback" not in worker.log_path.read_text()


class _NotUtf8(str):
    """A header key that the producer writes as bytes that are not UTF-8 (other clients can send such keys)."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe"


def test_a_record_kafka_python_cannot_decode_is_dead_lettered_and_the_partition_moves_on(
    bootstrap: str, topics: Topics, start_worker: WorkerFactory, astronaut_png_bytes: bytes
) -> None:
    """kafka-python raises inside poll() on a non-UTF-8 header key, on every poll at that offset."""
    worker = start_worker(**NO_CACHE)
    pid = worker.proc.pid if worker.proc else -1
    good_id, _, good = media.event(astronaut_png_bytes)
    key = b"one-partition"
    produce_with_headers(bootstrap, topics.events, [(key, b'{"id": "x"}', [(_NotUtf8("k"), b"v")]), (key, good, [])])

    assert verdict_of(bootstrap, topics, good_id)["status"] == "ok"
    (doc, headers), = collect_with_headers(bootstrap, topics.dlq, 1, timeout_s=60)
    assert doc["data"]["topic"] == topics.events and doc["data"]["reason"].startswith("kafka-python cannot decode")
    assert STRUCTURED in headers
    assert alive(worker) and worker.proc is not None and worker.proc.pid == pid, "the worker never restarted"


def test_a_pixel_bomb_is_refused_as_too_large_without_the_memory(
    bootstrap: str, topics: Topics, start_worker: WorkerFactory, astronaut_png_bytes: bytes
) -> None:
    worker = start_worker(**NO_CACHE)
    assert worker.proc is not None
    warm = media.event(astronaut_png_bytes)  # the first event pays the lazy start-up (detector, connections)
    produce(bootstrap, topics.events, [warm[1:]])
    assert verdict_of(bootstrap, topics, warm[0])["status"] == "ok"

    bomb = png_bomb(12_000, 12_000)  # ~420 KB that decode to 432 MB
    liar = png_bomb(40_000, 40_000, rows=1)  # a header claiming 40000x40000
    sent = [media.event(bomb, content_type="image/png"), media.event(liar, content_type="image/png")]
    Path(f"/proc/{worker.proc.pid}/clear_refs").write_text("5")  # reset the worker's peak-RSS mark
    before = proc_kb(worker.proc.pid, "VmHWM")
    produce(bootstrap, topics.events, [s[1:] for s in sent])
    for event_id, _, _ in sent:
        data = verdict_of(bootstrap, topics, event_id)
        assert data["status"] == "rejected" and data["error"]["code"] == "too_large", data
    growth_mb = (proc_kb(worker.proc.pid, "VmHWM") - before) / 1024
    assert growth_mb < 50, f"peak RSS grew by {growth_mb:.0f} MB while refusing the bomb"


def test_a_binary_mode_cloudevent_gets_a_structured_verdict_with_its_content_type(
    bootstrap: str, topics: Topics, start_worker: WorkerFactory, astronaut_png_bytes: bytes
) -> None:
    start_worker(**NO_CACHE)
    # As a producer using the official SDK's Kafka binding writes them: the media itself, and JSON data.
    raw_id, json_id = f"bin-raw-{uuid.uuid4()}", f"bin-json-{uuid.uuid4()}"
    raw = ce_kafka.to_binary(CloudEvent({"id": raw_id, "source": "tests", "type": "media.submitted",
                                         "datacontenttype": "image/png"}, astronaut_png_bytes), ce_kafka.JSONFormat())
    inline = {"inline": base64.b64encode(astronaut_png_bytes).decode(), "content_type": "image/png"}
    data = ce_kafka.to_binary(CloudEvent({"id": json_id, "source": "tests", "type": "media.submitted",
                                          "datacontenttype": "application/json"}, inline), ce_kafka.JSONFormat())
    produce_with_headers(bootstrap, topics.events,
                         [(m.key if isinstance(m.key, bytes) else None, m.value, list(m.headers.items()))
                          for m in (raw, data)])

    got = collect_with_headers(bootstrap, topics.verdicts, {raw_id, json_id}, 90)
    answers = {doc["id"]: (doc, headers) for doc, headers in got}
    assert set(answers) == {raw_id, json_id}
    for doc, headers in answers.values():
        assert doc["data"]["status"] == "ok" and doc["data"]["faces_count"] == 1, doc["data"]
        assert STRUCTURED in headers
        # and a consumer using the SDK reads the verdict back without being told the mode
        message = ce_kafka.KafkaMessage(headers=dict(headers), key=None, value=json.dumps(doc).encode())
        event = ce_kafka.from_kafka(message, ce_kafka.JSONFormat())
        assert event.get_type() == "media.verdict" and event.get_id() == doc["id"]
    assert answers[raw_id][0]["data"]["media_sha256"] == answers[json_id][0]["data"]["media_sha256"]


def test_every_face_of_a_16_face_group_photo_is_scored(
    bootstrap: str, topics: Topics, start_worker: WorkerFactory, astronaut_rgb: RGBImage
) -> None:
    start_worker(**NO_CACHE)
    group = encode_image(mosaic(astronaut_rgb, 16), fmt="png")  # 4x4 portraits, faces of ~23 px
    crowd = encode_image(mosaic(astronaut_rgb, 36), fmt="png")  # 6x6 portraits, faces of ~14 px
    sent = [media.event(group, content_type="image/png"), media.event(crowd, content_type="image/png")]
    produce(bootstrap, topics.events, [s[1:] for s in sent])
    data = verdict_of(bootstrap, topics, sent[0][0])
    assert data["status"] == "ok", data
    assert data["faces_count"] == 16 and len(data["faces"]) == 16 and data["faces_dropped"] == 0
    assert data["frames_with_faces"] == 1
    # above the default cap of 32 per frame the verdict says how many faces were not scored
    data = verdict_of(bootstrap, topics, sent[1][0])
    assert data["faces_count"] == 32 and data["faces_dropped"] == 4, data
