"""Wire contracts (ids, messages, verdicts), error-code mapping and settings from the environment.

Reading records (parse, salvage, DLQ) is tested in test_envelope.py.
"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from worker.core.contracts import ErrorInfo, FrameHash, MediaData, MediaEvent, NearDuplicate, Verdict, VerdictData
from worker.core.errors import REJECTED_CODES, ErrorCode, status_for
from worker.core.settings import WorkerSettings


def test_input_faults_are_rejected_and_our_faults_are_errors() -> None:
    assert status_for(ErrorCode.DECODE_FAILED) == "rejected"
    assert status_for(ErrorCode.FORBIDDEN_URI) == "rejected"
    assert status_for(ErrorCode.INFERENCE_FAILED) == "error"
    assert status_for(ErrorCode.TIMEOUT) == "error"
    assert status_for(ErrorCode.FETCH_FAILED) == "error"
    assert ErrorCode.INTERNAL_ERROR not in REJECTED_CODES



def test_error_codes_are_exactly_the_published_set() -> None:
    # Codes are a public contract: a renamed or removed code breaks consumers, so this set only ever grows,
    # and a code added without updating it (and the docs) fails here too.
    assert {c.value for c in ErrorCode} == {
        "invalid_event", "forbidden_uri", "fetch_failed", "empty_media", "too_large", "too_long",
        "checksum_mismatch", "unsupported_media", "decode_failed", "timeout", "inference_failed",
        "internal_error",
    }
    assert {c.value for c in REJECTED_CODES} == {
        "invalid_event", "forbidden_uri", "empty_media", "too_large", "too_long", "checksum_mismatch",
        "unsupported_media", "decode_failed",
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

@pytest.mark.parametrize("bad_id", ["", "a\x00b", "line\nbreak", "\x1b[31m", "\ud800", "x\udfff", "x" * 513])
def test_event_ids_are_printable_bounded_text(bad_id: str) -> None:
    with pytest.raises(ValidationError):
        MediaEvent(id=bad_id, source="s", data=MediaData(uri="https://cdn.example/a.png"))
    with pytest.raises(ValidationError):
        Verdict(id=bad_id, data=VerdictData(status="no_face"))


def test_printable_ids_in_any_script_are_fine() -> None:
    for good in ("e1", "9f1c-ä-日本-🙂", "a b", "x" * 512):
        assert MediaEvent(id=good, source="s", data=MediaData(uri="https://a/b")).id == good


def test_error_messages_that_quote_the_input_always_serialise() -> None:
    info = ErrorInfo(code=ErrorCode.UNSUPPORTED_MEDIA, message="declared \ud800\x07 type " + "y" * 600)
    verdict = Verdict(id="e1", data=VerdictData(status="rejected", error=info))
    doc = json.loads(verdict.model_dump_json())
    message = doc["data"]["error"]["message"]
    assert "\\ud800" in message and "\\x07" in message and message.isprintable() and len(message) < 520


def test_perceptual_hashes_and_near_duplicates_round_trip_and_old_verdicts_still_read() -> None:
    data = VerdictData(status="ok", phash=[FrameHash(frame_index=3, time_s=0.2, pdq="ab" * 32, quality=87)],
                       near_duplicate=NearDuplicate(media_sha256="cd" * 32, distance=12, answered=True))
    back = VerdictData.model_validate_json(data.model_dump_json())
    assert back == data and back.phash[0].pdq == "ab" * 32 and back.near_duplicate is not None
    assert back.near_duplicate.match_pct == 100.0 and not back.near_duplicate.mirrored
    cached_before = {"status": "ok", "label": "real", "score": 0.1, "media_sha256": "ef" * 32}  # no hash fields
    old = VerdictData.model_validate(cached_before)
    assert old.phash == [] and old.near_duplicate is None
