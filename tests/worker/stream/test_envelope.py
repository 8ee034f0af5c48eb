"""Reading records as events (both CloudEvents content modes), salvaging ids, and DLQ records that always fit."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.v1.event import CloudEvent
from kafka.consumer.fetcher import ConsumerRecord

from worker.core.contracts import MediaEvent, Verdict, VerdictData
from worker.stream.envelope import (
    MAX_HEADERS,
    MAX_JSON_CONTAINERS,
    MAX_JSON_ITEMS,
    SPARSE_HITS,
    content_mode,
    count_byte,
    dead_letter,
    dead_letter_value,
    dlq_room,
    parse_event,
    raw_dead_letter,
    salvage_id,
)
from worker.stream.publisher import STRUCTURED_HEADERS, verdict_value

Headers = list[tuple[str, bytes | None]]
CE_HEADERS: Headers = [("ce_specversion", b"1.0"), ("ce_id", b"b1"), ("ce_source", b"tests"),
                       ("ce_type", b"media.submitted")]


def event_json(event_id: object = "e1", **data: object) -> bytes:
    return json.dumps({"specversion": "1.0", "id": event_id, "source": "s", "type": "media.submitted",
                       "data": data}).encode()


def record(value: bytes | None, key: bytes | None = b"key", headers: Headers | None = None) -> ConsumerRecord:
    return ConsumerRecord(
        topic="media.events", partition=3, leader_epoch=-1, offset=42, timestamp=1700000000000, timestamp_type=0,
        key=key, value=value, headers=headers or [], checksum=None,
        serialized_key_size=len(key or b""), serialized_value_size=len(value or b""), serialized_header_size=-1,
    )


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.fixture
def low_recursion_limit() -> Iterator[None]:
    """Any recursive parser of record bytes would hit this limit long before 100,000 levels."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(400)
    yield
    sys.setrecursionlimit(old)


# -- structured mode --------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [None, [("content-type", b"application/cloudevents+json")]])
def test_a_structured_event_parses_with_or_without_its_content_type_header(headers: Headers | None) -> None:
    parsed = parse_event(event_json(uri="https://cdn.example/a.mp4", content_type="video/mp4"), headers)
    assert isinstance(parsed, MediaEvent)
    assert parsed.id == "e1" and parsed.data.uri == "https://cdn.example/a.mp4" and parsed.data.inline is None
    assert content_mode(headers) == "structured"


@pytest.mark.parametrize(
    "value",
    [None, b"", b"\x00\xff", b"[]", b'{"id": "x"}', event_json(), event_json(uri="a", inline="b"),
     event_json("a\x07b", uri="https://a/b"), event_json("x" * 513, uri="https://a/b")],
)
def test_unusable_events_give_a_reason(value: bytes | None) -> None:
    reason = parse_event(value)
    assert isinstance(reason, str) and reason and reason.isprintable()


@pytest.mark.parametrize("depth", [100_000, 5_000])  # refused by the shape count / by the parser's depth limit
def test_deeply_nested_json_is_a_reason_not_a_recursion_error(depth: int, low_recursion_limit: None) -> None:
    deep = b'{"specversion": "1.0", "id": "d1", "source": "s", "data": {"metadata": {"x": ' + nested(depth) + b"}}}"
    for value in (nested(depth), deep, b'{"a":' * depth):
        reason = parse_event(value)
        assert isinstance(reason, str)
        assert ("recursion limit" if depth < MAX_JSON_CONTAINERS else "objects/arrays, at most") in reason
        assert salvage_id(value) is None  # unparseable: nobody to answer, the record goes to the DLQ


def test_a_record_above_the_size_limit_is_refused_before_parsing() -> None:
    huge = event_json(inline="A" * 2000)
    reason = parse_event(huge, max_bytes=1000)
    assert isinstance(reason, str) and "above the 1000-byte event limit" in reason
    assert salvage_id(huge, max_bytes=1000) is None
    assert isinstance(parse_event(huge, max_bytes=len(huge)), MediaEvent)  # the limit, not the content


@pytest.mark.parametrize("filler", [b"{},", b"[],", b"0,"])
def test_json_too_wide_to_hold_in_memory_is_refused_before_parsing(filler: bytes) -> None:
    # 16 MiB of `{},` would become 5.6 million dicts (564 MB); the shape is counted on the bytes first
    many = filler * (MAX_JSON_ITEMS + 1)
    value = b'{"specversion": "1.0", "id": "w1", "source": "s", "data": {"uri": "https://a/b", "metadata": {"m": ['
    value += many + b"0]}}}"
    reason = parse_event(value)
    assert isinstance(reason, str) and "at most" in reason
    assert salvage_id(value) is None
    binary = parse_event(b"[" + many + b"0]", [*CE_HEADERS, ("content-type", b"application/json")])
    assert isinstance(binary, str) and "at most" in binary
    # the media itself in binary mode is bytes, not JSON: any number of commas and brackets is fine
    media = parse_event(b"\x89PNG" + many, [*CE_HEADERS, ("content-type", b"image/png")])
    assert isinstance(media, MediaEvent)


@pytest.mark.parametrize("hits", [0, 1, SPARSE_HITS - 1, SPARSE_HITS, SPARSE_HITS + 1, 10 * SPARSE_HITS])
def test_count_byte_counts_what_bytes_count_counts(hits: int) -> None:
    """Counted hit by hit while rare, then in one pass: the same total either way, wherever the hits are."""
    filler = base64.b64encode(bytes(range(256)) * 8)
    value = b",".join([filler[: (i * 37) % len(filler)] for i in range(hits + 1)])  # hits spread out
    for candidate in (value, b"," * hits, b"," + value + b","):
        assert count_byte(candidate, b",") == candidate.count(b",")
        assert count_byte(candidate, b"{") == 0


def test_a_huge_value_inside_the_limit_parses() -> None:
    blob = base64.b64encode(bytes(6 * 1024 * 1024)).decode()
    parsed = parse_event(event_json(inline=blob, metadata={"note": "z" * 100_000}))
    assert isinstance(parsed, MediaEvent) and parsed.data.inline == blob


def test_a_lone_surrogate_id_is_never_answered() -> None:
    escaped = b'{"specversion": "1.0", "id": "\\ud800", "source": "s", "data": {"uri": "https://a/b"}}'
    assert isinstance(parse_event(escaped), str)
    assert salvage_id(escaped) is None
    assert salvage_id(b'{"id": "ok\\udfff"}') is None
    assert salvage_id("{\"id\": \"\ud800\"}".encode("utf-8", "surrogatepass")) is None  # raw CESU-8 bytes


def test_salvage_id_answers_only_to_usable_ids() -> None:
    assert salvage_id(event_json()) == "e1"
    assert salvage_id(event_json("日本-🙂")) == "日本-🙂"
    for bad in (b'{"id": ""}', b'{"id": 7}', b"[1]", b"\xff", json.dumps({"id": "x" * 513}).encode(),
                event_json("tab\there"), event_json("\x00"), event_json("esc\x1b[0m"), event_json("\u2028")):
        assert salvage_id(bad) is None, bad


# -- binary mode ------------------------------------------------------------------------------------
def sdk_binary(data: dict[str, object] | bytes, content_type: str, **extra: str) -> ce_kafka.KafkaMessage:
    """A binary-mode message as the official SDK's Kafka binding writes it."""
    attributes = {"id": "b1", "source": "tests", "type": "media.submitted", "datacontenttype": content_type, **extra}
    return ce_kafka.to_binary(CloudEvent(attributes, data), ce_kafka.JSONFormat())


def test_binary_mode_with_json_data_from_the_sdk() -> None:
    message = sdk_binary({"uri": "https://cdn.example/a.png", "content_type": "image/png"}, "application/json",
                         traceparent="00-abc-def-01")
    headers = list(message.headers.items())
    assert content_mode(headers) == "binary"
    parsed = parse_event(message.value, headers)
    assert isinstance(parsed, MediaEvent), parsed
    assert (parsed.id, parsed.source, parsed.type) == ("b1", "tests", "media.submitted")
    assert parsed.data.uri == "https://cdn.example/a.png" and parsed.time and parsed.time.endswith("Z")
    assert parsed.model_extra == {"traceparent": "00-abc-def-01"}  # extensions are kept
    assert salvage_id(message.value, headers) == "b1"


def test_binary_mode_with_the_media_itself_as_data() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    message = sdk_binary(png, "image/png")
    parsed = parse_event(message.value, list(message.headers.items()))
    assert isinstance(parsed, MediaEvent), parsed
    assert parsed.data.inline is not None and base64.b64decode(parsed.data.inline) == png
    assert parsed.data.content_type == "image/png"


def test_the_content_type_header_decides_the_mode_before_stray_ce_headers() -> None:
    structured: Headers = [("ce_id", b"stray"), ("Content-Type", b"application/cloudevents+json; charset=utf-8")]
    assert content_mode(structured) == "structured"
    parsed = parse_event(event_json(uri="https://a/b.png"), structured)
    assert isinstance(parsed, MediaEvent) and parsed.id == "e1"
    assert content_mode([("ce_id", b"x"), ("content-type", b"application/json")]) == "binary"
    assert content_mode([("traceparent", b"00-1-2-01")]) == content_mode(None) == "structured"


def test_binary_mode_headers_are_case_insensitive_and_content_type_is_optional() -> None:
    headers: Headers = [(k.upper(), v) for k, v in CE_HEADERS]
    parsed = parse_event(b'{"uri": "https://a/b.png"}', headers)
    assert isinstance(parsed, MediaEvent) and parsed.datacontenttype == "application/json"


@pytest.mark.parametrize(
    ("headers", "value", "why"),
    [
        ([h for h in CE_HEADERS if h[0] != "ce_id"], b'{"uri": "https://a/b"}', "ce_id"),
        ([h for h in CE_HEADERS if h[0] != "ce_source"], b'{"uri": "https://a/b"}', "ce_source"),
        ([*CE_HEADERS, ("ce_id", b"b2")], b'{"uri": "https://a/b"}', "twice"),
        ([*CE_HEADERS, ("ce_time", b"not a time")], b'{"uri": "https://a/b"}', "RFC 3339"),
        ([*CE_HEADERS, ("ce_Bad-Name", b"1")], b'{"uri": "https://a/b"}', "bad-name"),
        ([("ce_specversion", b"0.3"), *CE_HEADERS[1:]], b'{"uri": "https://a/b"}', "specversion"),
        ([*CE_HEADERS, ("content-type", b"application/json")], b"{not json", "JSON"),
        ([*CE_HEADERS, ("content-type", b"application/json")], nested(100_000), "at most 10000"),
        ([*CE_HEADERS, ("content-type", b"application/json")], nested(5_000), "recursion limit"),
        ([*CE_HEADERS, ("content-type", b"application/pdf")], b"%PDF-1.4", "application/pdf"),
        ([*CE_HEADERS, ("content-type", b"application/json")], b"", "without data"),
        ([*CE_HEADERS, ("ce_subject", b"x" * 5000)], b'{"uri": "https://a/b"}', "4096"),
        ([*CE_HEADERS, ("ce_subject", None)], b"{}", "subject"),
        (CE_HEADERS + [(f"x-{i}", b"") for i in range(MAX_HEADERS)], b"{}", "headers"),
    ],
)
def test_unusable_binary_events_give_a_reason(
    headers: Headers, value: bytes, why: str, low_recursion_limit: None
) -> None:
    reason = parse_event(value, headers)
    assert isinstance(reason, str) and why in reason, reason
    assert reason.isprintable()


def test_binary_mode_ids_are_validated_like_structured_ones() -> None:
    for bad in (b"\xff\xfe", b"a\x07", "\ud800".encode("utf-8", "surrogatepass"), b"", b"x" * 513):
        headers = [("ce_id", bad), *CE_HEADERS[:1], *CE_HEADERS[2:]]
        assert isinstance(parse_event(b'{"uri": "https://a/b"}', headers), str)
        assert salvage_id(b'{"uri": "https://a/b"}', headers) is None
    # an invalid event with a good id is answered (an invalid_event verdict), not dead-lettered
    assert salvage_id(b"{}", [*CE_HEADERS, ("content-type", b"application/json")]) == "b1"


# -- DLQ records --------------------------------------------------------------------------------------
def test_dead_letter_carries_raw_bytes_and_position() -> None:
    dl = dead_letter(record(b"\x00raw", headers=[("h", b"v")]), "not json")
    assert base64.b64decode(dl.data.value_b64) == b"\x00raw"
    assert base64.b64decode(dl.data.key_b64 or "") == b"key"
    assert (dl.data.topic, dl.data.partition, dl.data.offset) == ("media.events", 3, 42)
    assert dl.data.headers == {"h": base64.b64encode(b"v").decode()}


def test_dead_letter_of_an_oversized_record_is_cut_and_flagged() -> None:
    big = record(b"x" * 5000, key=None)
    dl = dead_letter(big, "too big to parse", max_value_bytes=1000)
    assert len(base64.b64decode(dl.data.value_b64)) == 1000
    assert dl.data.value_truncated and dl.data.value_size == 5000
    assert not dead_letter(big, "fits", max_value_bytes=5000).data.value_truncated


def test_dead_letter_value_is_the_whole_record_when_it_fits() -> None:
    dl = dead_letter(record(b"\x00raw", headers=[("h", b"v")]), "not json")
    doc = json.loads(dead_letter_value(dl, 1_048_576))
    assert doc["type"] == "media.deadletter" and doc["data"]["headers"] == {"h": "dg=="}


def test_huge_headers_fall_back_to_the_raw_record_that_always_fits() -> None:
    limit = 64 * 1024
    headers: Headers = [(f"h{i}", bytes(1000)) for i in range(200)]  # ~270 KB of base64 headers
    dl = dead_letter(record(b"\x01" * 100_000, headers=headers), "reason \ud800", max_value_bytes=dlq_room(limit))
    value = dead_letter_value(dl, limit)
    assert len(value) <= limit
    value.decode("ascii")  # only ASCII: nothing from the event but base64
    doc = json.loads(value)["data"]
    assert set(doc) == {"reason", "code", "topic", "partition", "offset", "value_b64", "value_size",
                        "value_truncated"}
    assert (doc["topic"], doc["partition"], doc["offset"]) == ("media.events", 3, 42)
    assert doc["value_truncated"] and doc["value_size"] == 100_000
    assert base64.b64decode(doc["value_b64"]) == b"\x01" * len(base64.b64decode(doc["value_b64"]))


def test_the_raw_record_cuts_an_uncut_value_on_a_base64_boundary() -> None:
    dl = dead_letter(record(bytes(range(256)) * 400), "x", max_value_bytes=10**9)
    doc = json.loads(raw_dead_letter(dl, 40_000))["data"]
    kept = base64.b64decode(doc["value_b64"])  # still valid base64
    assert doc["value_truncated"] and 0 < len(kept) <= dlq_room(40_000) and kept == (bytes(range(256)) * 400)[
        : len(kept)]


# -- what the worker writes -------------------------------------------------------------------------
def test_verdicts_and_dlq_records_say_structured_mode_in_their_header() -> None:
    assert STRUCTURED_HEADERS == [("content-type", b"application/cloudevents+json")]
    message = ce_kafka.KafkaMessage(
        headers=dict(STRUCTURED_HEADERS), key=b"e1", value=verdict_value(Verdict(id="e1", data=VerdictData(
            status="no_face")))
    )
    event = ce_kafka.from_kafka(message, ce_kafka.JSONFormat())  # the SDK reads it back as structured
    assert event.get_id() == "e1" and event.get_type() == "media.verdict"


def test_a_verdict_that_cannot_be_utf8_still_serialises() -> None:
    forged = Verdict.model_construct(id="e1", source="dfmod-worker", type="media.verdict", specversion="1.0",
                                     time="2026-01-01T00:00:00Z", datacontenttype="application/json",
                                     subject="\ud800", data=VerdictData(status="no_face"))
    value = verdict_value(forged)
    value.decode("ascii")
    assert json.loads(value)["id"] == "e1"


@pytest.mark.parametrize("mode", ["structured", "binary"])
@pytest.mark.parametrize("source", ["inline", "uri"])
def test_what_dfmod_produce_writes_the_worker_reads(mode: str, source: str) -> None:
    from worker.cli.produce import inline_event, new_event, to_record
    from worker.core.contracts import MediaData

    png = b"\x89PNG\r\n\x1a\n" + bytes(64)
    event = (inline_event(png, "tests", "image/png") if source == "inline"
             else new_event(MediaData(uri="https://cdn.example/a.png", content_type="image/png"), "tests"))
    value, headers = to_record(event, mode)  # type: ignore[arg-type]
    assert content_mode(headers) == mode
    parsed = parse_event(value, headers)
    assert isinstance(parsed, MediaEvent), parsed
    assert (parsed.id, parsed.source, parsed.data.uri, parsed.data.inline) == (
        event.id, "tests", event.data.uri, event.data.inline)
    if mode == "binary" and source == "inline":
        assert value == png  # the media itself is the value


def test_a_dead_letter_that_cannot_serialise_falls_back_to_the_raw_record() -> None:
    from worker.core.contracts import DeadLetter, DeadLetterData

    broken = DeadLetter(data=DeadLetterData.model_construct(
        reason="lone \ud800", code="unparseable_event", topic="media.events", partition=1, offset=7,
        timestamp_ms=None, key_b64=None, value_b64=base64.b64encode(b"raw").decode(), value_size=3,
        value_truncated=False, headers={"h": "AA=="},  # forged past validation: the record cannot be UTF-8
    ))
    doc = json.loads(dead_letter_value(broken, 1_048_576))
    assert "headers" not in doc["data"] and base64.b64decode(doc["data"]["value_b64"]) == b"raw"
    assert doc["data"]["reason"] == "lone \\ud800"
    assert (doc["data"]["partition"], doc["data"]["offset"]) == (1, 7)
