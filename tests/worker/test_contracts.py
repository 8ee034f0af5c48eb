"""Event parsing, DLQ records, error-code mapping and settings from the environment."""

from __future__ import annotations

import base64
import json

import pytest
from kafka.consumer.fetcher import ConsumerRecord

from worker.contracts import MediaEvent, Verdict, VerdictData
from worker.errors import REJECTED_CODES, ErrorCode, status_for
from worker.service import dead_letter, parse_event, salvage_id
from worker.settings import WorkerSettings


def event_json(**data: object) -> bytes:
    return json.dumps({"specversion": "1.0", "id": "e1", "source": "s", "type": "media.submitted",
                       "data": data}).encode()


def test_a_valid_event_parses() -> None:
    parsed = parse_event(event_json(uri="https://cdn.example/a.mp4", content_type="video/mp4"))
    assert isinstance(parsed, MediaEvent)
    assert parsed.data.uri == "https://cdn.example/a.mp4" and parsed.data.inline is None


@pytest.mark.parametrize(
    "value",
    [None, b"", b"\x00\xff", b"[]", b'{"id": "x"}', event_json(), event_json(uri="a", inline="b")],
)
def test_unusable_events_give_a_reason(value: bytes | None) -> None:
    reason = parse_event(value)
    assert isinstance(reason, str) and reason


def test_salvage_id_answers_only_to_usable_ids() -> None:
    assert salvage_id(event_json()) == "e1"
    assert salvage_id(b'{"id": ""}') is None
    assert salvage_id(b'{"id": 7}') is None
    assert salvage_id(b"[1]") is None
    assert salvage_id(b"\xff") is None
    assert salvage_id(json.dumps({"id": "x" * 513}).encode()) is None


def test_dead_letter_carries_raw_bytes_and_position() -> None:
    record = ConsumerRecord(
        topic="media.events", partition=3, leader_epoch=-1, offset=42, timestamp=1700000000000, timestamp_type=0,
        key=b"key", value=b"\x00raw", headers=[("h", b"v")], checksum=None,
        serialized_key_size=3, serialized_value_size=4, serialized_header_size=-1,
    )
    dl = dead_letter(record, "not json")
    assert base64.b64decode(dl.data.value_b64) == b"\x00raw"
    assert base64.b64decode(dl.data.key_b64 or "") == b"key"
    assert (dl.data.topic, dl.data.partition, dl.data.offset) == ("media.events", 3, 42)
    assert dl.data.headers == {"h": base64.b64encode(b"v").decode()}


def test_input_faults_are_rejected_and_our_faults_are_errors() -> None:
    assert status_for(ErrorCode.DECODE_FAILED) == "rejected"
    assert status_for(ErrorCode.FORBIDDEN_URI) == "rejected"
    assert status_for(ErrorCode.INFERENCE_FAILED) == "error"
    assert status_for(ErrorCode.TIMEOUT) == "error"
    assert status_for(ErrorCode.FETCH_FAILED) == "error"
    assert ErrorCode.INTERNAL_ERROR not in REJECTED_CODES
    # codes are a public contract: their wire values never change
    assert {c.value for c in ErrorCode} >= {
        "fetch_failed", "too_large", "unsupported_media", "decode_failed", "timeout", "inference_failed",
    }


def test_verdict_is_a_cloudevent_with_the_event_id() -> None:
    verdict = Verdict(id="e1", data=VerdictData(status="no_face"))
    doc = json.loads(verdict.model_dump_json())
    assert doc["type"] == "media.verdict" and doc["id"] == "e1" and doc["specversion"] == "1.0"
    assert doc["time"].endswith("Z")


def test_settings_come_from_dfmod_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFMOD_KAFKA__BOOTSTRAP_SERVERS", "b1:9092,b2:9092")
    monkeypatch.setenv("DFMOD_FACES__BACKEND", "haar")
    monkeypatch.setenv("DFMOD_FETCH__ALLOW_HOSTS", '["10.0.0.0/8"]')
    monkeypatch.setenv("DFMOD_MAX_IN_FLIGHT", "3")
    monkeypatch.setenv("DFMOD_KAFKA__SASL_PASSWORD", "hunter2")
    s = WorkerSettings()
    assert s.kafka.bootstrap_servers == "b1:9092,b2:9092"
    assert s.faces.backend == "haar" and s.fetch.allow_hosts == ["10.0.0.0/8"] and s.max_in_flight == 3
    assert "hunter2" not in s.model_dump_json()


def test_dead_letter_of_an_oversized_record_is_cut_and_flagged() -> None:
    record = ConsumerRecord(
        topic="t", partition=0, leader_epoch=-1, offset=1, timestamp=0, timestamp_type=0, key=None,
        value=b"x" * 5000, headers=[], checksum=None,
        serialized_key_size=-1, serialized_value_size=5000, serialized_header_size=-1,
    )
    dl = dead_letter(record, "too big to parse", max_value_bytes=1000)
    assert len(base64.b64decode(dl.data.value_b64)) == 1000
    assert dl.data.value_truncated and dl.data.value_size == 5000
    assert not dead_letter(record, "fits", max_value_bytes=5000).data.value_truncated
