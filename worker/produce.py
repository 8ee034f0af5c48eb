"""`dfmod produce`: publish media events for local files, inline (base64) or by URI."""

from __future__ import annotations

import base64
import mimetypes
import uuid
from pathlib import Path
from typing import Any, Literal

from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from worker.contracts import MediaData, MediaEvent, now_iso
from worker.kafka_config import bootstrap_failed, connection_config
from worker.settings import KafkaSettings

Mode = Literal["inline", "uri", "auto"]


def new_event(data: MediaData, source: str) -> MediaEvent:
    """A `media.submitted` CloudEvent with a fresh id (the Kafka key) around `data`."""
    return MediaEvent(id=str(uuid.uuid4()), source=source, time=now_iso(), data=data)


def inline_event(blob: bytes, source: str, content_type: str | None = None,
                 metadata: dict[str, Any] | None = None) -> MediaEvent:
    """An event carrying `blob` inline as base64 (small media only: it must fit one Kafka record)."""
    data = MediaData(inline=base64.b64encode(blob).decode(), content_type=content_type, metadata=metadata or {})
    return new_event(data, source)


def event_for_file(path: Path, mode: Mode, max_inline_bytes: int, source: str = "dfmod-produce") -> MediaEvent:
    """A `media.submitted` event for one file: inline when asked (or small, in auto mode), else a file:// URI."""
    size = path.stat().st_size
    content_type = mimetypes.guess_type(path.name)[0]
    metadata = {"filename": path.name}
    if mode == "inline" or (mode == "auto" and size <= max_inline_bytes):
        return inline_event(path.read_bytes(), source, content_type, metadata)
    return new_event(MediaData(uri=path.resolve().as_uri(), content_type=content_type, metadata=metadata), source)


def produce_events(settings: KafkaSettings, events: list[MediaEvent], timeout_s: float = 30.0) -> None:
    """Send events keyed by id with acks=all, and wait until the broker has every one (`timeout_s` bounds both
    connecting and each acknowledgement; no broker raises KafkaUnavailable)."""
    try:
        producer = KafkaProducer(acks="all", max_request_size=settings.max_message_bytes,
                                 bootstrap_timeout_ms=int(timeout_s * 1000), **connection_config(settings))
    except KafkaTimeoutError as exc:
        raise bootstrap_failed(settings, timeout_s, exc) from exc
    try:
        futures = [
            producer.send(settings.events_topic, key=e.id.encode(), value=e.model_dump_json(exclude_none=True).encode())
            for e in events
        ]
        for future in futures:
            future.get(timeout=timeout_s)
    finally:
        producer.close(timeout=timeout_s)
