"""The stand-in record for one kafka-python cannot decode: recognised only when it carries no bytes."""

from __future__ import annotations

from kafka.consumer.fetcher import ConsumerRecord

from worker.consume import UNDECODABLE_HEADER, undecodable_reason


def _record(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]) -> ConsumerRecord:
    return ConsumerRecord("t", 0, -1, 7, -1, -1, key, value, headers, None, -1, -1, -1)


def test_the_stand_in_record_carries_its_reason() -> None:
    assert undecodable_reason(_record(None, None, [(UNDECODABLE_HEADER, b"bad header key")])) == "bad header key"


def test_a_producer_record_with_bytes_is_never_taken_for_the_stand_in() -> None:
    assert undecodable_reason(_record(None, b"{}", [(UNDECODABLE_HEADER, b"x")])) is None
    assert undecodable_reason(_record(b"k", None, [(UNDECODABLE_HEADER, b"x")])) is None
    assert undecodable_reason(_record(None, None, [("other", b"x")])) is None
