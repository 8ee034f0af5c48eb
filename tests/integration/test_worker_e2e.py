"""The streaming worker end to end on real Kafka, Redis and Triton (all started by deploy/local)."""

from __future__ import annotations

import base64
import json
import time
import urllib.request

from harness import Stack, Topics, collect, produce
from kafka.partitioner.default import murmur2

from . import media
from .conftest import WorkerFactory


def by_id(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(r["id"], []).append(r)
    return out


def test_events_in_one_verdict_per_event_out(
    bootstrap: str, topics: Topics, start_worker: WorkerFactory
) -> None:
    worker = start_worker()
    sent = [media.event(media.still_png(), content_type="image/png"),
            media.event(media.video_mp4(), content_type="video/mp4"),
            media.event(media.mosaic_png(), content_type="image/png")]
    produce(bootstrap, topics.events, [(k, v) for _, k, v in sent])
    ids = [i for i, _, _ in sent]
    verdicts = by_id(collect(bootstrap, topics.verdicts, set(ids), timeout_s=120))
    assert set(verdicts) == set(ids)
    assert all(len(v) == 1 for v in verdicts.values()), "exactly one verdict per event id"

    still, video, group = (verdicts[i][0] for i in ids)
    for v in (still, video, group):
        assert v["type"] == "media.verdict" and v["specversion"] == "1.0"
        data = v["data"]
        assert data["status"] == "ok", data
        assert 0.0 <= data["score"] <= 1.0
        assert data["label"] in ("fake", "real", "uncertain")
        assert data["model"]["name"] == "deepfake_clip" and data["model"]["weights"] == "random-init"
        assert data["pipeline_version"] and len(data["media_sha256"]) == 64
        assert {"fetch", "decode", "faces", "infer"} <= set(data["timings_ms"])
    assert still["data"]["frames_sampled"] == 1 and still["data"]["faces_count"] == 1
    assert video["data"]["frames_sampled"] == 32
    assert video["data"]["frames_with_faces"] >= 28
    assert group["data"]["faces_count"] == 4
    # media score = mean over frames of the max face score (the paper's video rule)
    per_frame: dict[int, float] = {}
    for face in video["data"]["faces"]:
        per_frame[face["frame_index"]] = max(per_frame.get(face["frame_index"], 0.0), face["score"])
    assert abs(video["data"]["score"] - sum(per_frame.values()) / len(per_frame)) < 1e-5

    body = urllib.request.urlopen(f"http://127.0.0.1:{worker.http_port}/metrics", timeout=5).read().decode()
    assert 'dfmod_events_total{status="ok"} 3.0' in body
    assert urllib.request.urlopen(f"http://127.0.0.1:{worker.http_port}/healthz", timeout=5).status == 200


def test_repeat_upload_is_served_from_the_cache(
    bootstrap: str, topics: Topics, start_worker: WorkerFactory
) -> None:
    start_worker()
    png, jpeg = media.unique_still()  # the session's Redis is shared: bytes no other test has sent
    first = media.event(png)
    produce(bootstrap, topics.events, [first[1:]])
    collect(bootstrap, topics.verdicts, {first[0]}, timeout_s=60)
    again = media.event(png)                          # same bytes, new event
    other = media.event(jpeg)                         # same picture, other bytes: not a cache hit
    produce(bootstrap, topics.events, [again[1:], other[1:]])
    verdicts = by_id(collect(bootstrap, topics.verdicts, {first[0], again[0], other[0]}, timeout_s=60))
    a, b, c = verdicts[first[0]][0]["data"], verdicts[again[0]][0]["data"], verdicts[other[0]][0]["data"]
    assert a["cached"] is False and b["cached"] is True and c["cached"] is False
    assert b["score"] == a["score"] and b["media_sha256"] == a["media_sha256"]
    assert "decode" not in b["timings_ms"], "a cache hit costs one hash and one GET, no decoding"


def test_bad_input_gets_error_codes_and_the_worker_keeps_going(
    bootstrap: str, topics: Topics, start_worker: WorkerFactory
) -> None:
    start_worker(DFMOD_FETCH__MAX_INLINE_BYTES=str(3 * 1024 * 1024), DFMOD_FETCH__MAX_BYTES=str(3 * 1024 * 1024))
    cases = {
        "decode_failed": media.event(media.corrupt_mp4(), content_type="video/mp4"),
        "empty_media": media.event(b""),
        "unsupported_media": media.event(b"%PDF-1.4 this is not a picture at all\n" * 50),
        "too_large": media.event(b"\x89PNG\r\n\x1a\n" + bytes(4 * 1024 * 1024)),
        "forbidden_uri": media.event(uri="http://127.0.0.1:1/secret.png"),
        "forbidden_uri_file": media.event(uri="file:///etc/passwd"),
    }
    no_source = ("no-source-" + str(time.time_ns())).encode()
    invalid = json.dumps({"specversion": "1.0", "id": no_source.decode(), "source": "tests", "data": {}}).encode()
    good = media.event(media.still_png())
    produce(bootstrap, topics.events, [c[1:] for c in cases.values()] + [(no_source, invalid), good[1:]])

    want = {c[0] for c in cases.values()} | {no_source.decode(), good[0]}
    verdicts = by_id(collect(bootstrap, topics.verdicts, want, timeout_s=120))
    assert set(verdicts) == want
    for expected, (event_id, _, _) in cases.items():
        data = verdicts[event_id][0]["data"]
        assert data["error"]["code"] == expected.removesuffix("_file"), (expected, data)
        assert data["status"] == "rejected"
        assert data["label"] is None and data["score"] is None
    assert verdicts[no_source.decode()][0]["data"]["error"]["code"] == "invalid_event"
    assert verdicts[good[0]][0]["data"]["status"] == "ok", "the worker is still scoring after bad input"


def test_unparseable_messages_land_in_the_dlq_with_raw_bytes(
    bootstrap: str, topics: Topics, start_worker: WorkerFactory
) -> None:
    start_worker()
    raw = [b"\x00\xffnot json at all", b'{"hello": "no id, no data"}', b"[1, 2, 3]"]
    good = media.event(media.still_png())
    produce(bootstrap, topics.events, [(b"k", r) for r in raw] + [good[1:]])
    dlq = collect(bootstrap, topics.dlq, len(raw), timeout_s=60)
    verdicts = collect(bootstrap, topics.verdicts, {good[0]}, timeout_s=60)
    assert sorted(base64.b64decode(d["data"]["value_b64"]) for d in dlq) == sorted(raw)
    for d in dlq:
        assert d["type"] == "media.deadletter" and d["data"]["topic"] == topics.events and d["data"]["reason"]
    # One key, one partition (kafka-python's murmur2 partitioner over the fresh topic's 4): offsets 0, 1, 2 in order.
    partition = (murmur2(b"k") & 0x7FFFFFFF) % 4
    where = {(d["data"]["partition"], d["data"]["offset"]): base64.b64decode(d["data"]["value_b64"]) for d in dlq}
    assert where == {(partition, offset): value for offset, value in enumerate(raw)}
    assert {v["id"] for v in verdicts} == {good[0]}


def test_sigkill_mid_run_leaves_no_event_without_a_verdict(
    bootstrap: str, topics: Topics, start_worker: WorkerFactory
) -> None:
    # Distinct bytes per event and no cache, so every event costs real work and the kill lands mid-run.
    blobs = [media.video_mp4(seconds=1.0 + 0.1 * i) if i % 2 else media.still_jpeg(quality=60 + i) for i in range(24)]
    sent = [media.event(b) for b in blobs]
    produce(bootstrap, topics.events, [s[1:] for s in sent])
    ids = {s[0] for s in sent}
    first = start_worker(DFMOD_CACHE__ENABLED="false")
    seen = collect(bootstrap, topics.verdicts, 3, timeout_s=120)
    assert 3 <= len({v["id"] for v in seen}) < len(ids), "the kill must land mid-run"
    first.kill()  # SIGKILL: no drain, no final commit
    start_worker(DFMOD_CACHE__ENABLED="false")
    verdicts = by_id(collect(bootstrap, topics.verdicts, ids, timeout_s=240))
    assert set(verdicts) == ids, f"missing verdicts for {ids - set(verdicts)}"
    assert all(v["data"]["status"] == "ok" for vs in verdicts.values() for v in vs)


def test_redis_stopped_mid_run_slows_nothing_into_errors(
    bootstrap: str, topics: Topics, start_worker: WorkerFactory, stack: Stack
) -> None:
    start_worker()
    warm = media.event(media.still_png())
    produce(bootstrap, topics.events, [warm[1:]])
    collect(bootstrap, topics.verdicts, {warm[0]}, timeout_s=60)
    stack.down("redis")
    try:
        during = [media.event(media.still_png()), media.event(media.video_mp4(seconds=1.0)),
                  media.event(media.mosaic_png())]
        produce(bootstrap, topics.events, [d[1:] for d in during])
        verdicts = by_id(collect(bootstrap, topics.verdicts, {d[0] for d in during}, timeout_s=120))
        for d in during:
            data = verdicts[d[0]][0]["data"]
            assert data["status"] == "ok", data
            assert data["cached"] is False, "with Redis down nothing can come from the cache"
    finally:
        stack.up("redis")
    # Redis back (empty: no persistence): the worker uses it again once the breaker lets it retry.
    time.sleep(6)
    again = [media.event(media.mosaic_png()) for _ in range(2)]
    for a in again:
        produce(bootstrap, topics.events, [a[1:]])
        collect(bootstrap, topics.verdicts, {a[0]}, timeout_s=60)
    last = by_id(collect(bootstrap, topics.verdicts, {again[1][0]}, timeout_s=10))[again[1][0]][0]["data"]
    assert last["cached"] is True


def test_backpressure_pauses_and_every_event_still_gets_its_verdict(
    bootstrap: str, topics: Topics, start_worker: WorkerFactory
) -> None:
    worker = start_worker(DFMOD_MAX_IN_FLIGHT="2", DFMOD_KAFKA__MAX_POLL_RECORDS="2")
    video = media.video_mp4(seconds=1.0)
    sent = [media.event(video) for _ in range(10)]
    produce(bootstrap, topics.events, [s[1:] for s in sent])
    verdicts = by_id(collect(bootstrap, topics.verdicts, {s[0] for s in sent}, timeout_s=180))
    assert len(verdicts) == 10
    assert "backpressure: partitions paused" in worker.log_path.read_text()
