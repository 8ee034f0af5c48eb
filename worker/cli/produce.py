"""`dfmod produce`: publish media events for local files, inline (base64) or by URI.

Events go out in the CloudEvents structured content mode (the whole event as JSON, the worker's default
contract) or the binary mode of the Kafka binding (`ce_*` headers, written by the official SDK): then the value
is the media itself when it is carried inline, else the `data` JSON.
"""

from __future__ import annotations

import base64
import mimetypes
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from worker.core.contracts import MediaData, MediaEvent, now_iso
from worker.core.settings import KafkaSettings
from worker.stream.envelope import STRUCTURED_HEADERS
from worker.stream.kafka_config import bootstrap_failed, connection_config

Mode = Literal["inline", "uri", "auto"]
ContentMode = Literal["structured", "binary"]
#: Kafka headers of a structured-mode event.


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


def to_record(event: MediaEvent, content_mode: ContentMode = "structured") -> tuple[bytes, list[tuple[str, bytes]]]:
    """The Kafka value and headers of `event` in the given CloudEvents content mode."""
    if content_mode == "structured":
        return event.model_dump_json(exclude_none=True).encode(), list(STRUCTURED_HEADERS)
    attributes = event.model_dump(exclude={"data"}, exclude_none=True)
    if "time" in attributes:  # the SDK takes a datetime and writes RFC 3339 back
        attributes["time"] = datetime.fromisoformat(attributes["time"])
    data = event.data
    media_type = data.content_type or ""
    payload: dict[str, Any] | bytes
    if data.inline is not None and media_type.startswith(("image/", "video/")):
        attributes["datacontenttype"], payload = media_type, base64.b64decode(data.inline)
    else:
        attributes["datacontenttype"], payload = "application/json", data.model_dump(exclude_none=True)
    message = ce_kafka.to_binary(CloudEvent(attributes, payload), JSONFormat())
    return message.value, list(message.headers.items())


def produce_events(
    settings: KafkaSettings, events: list[MediaEvent], timeout_s: float = 30.0,
    content_mode: ContentMode = "structured",
) -> None:
    """Send events keyed by id with acks=all, and wait until the broker has every one (`timeout_s` bounds both
    connecting and each acknowledgement; no broker raises KafkaUnavailable)."""
    try:
        producer = KafkaProducer(acks="all", max_request_size=settings.max_message_bytes,
                                 bootstrap_timeout_ms=int(timeout_s * 1000), **connection_config(settings))
    except KafkaTimeoutError as exc:
        raise bootstrap_failed(settings, timeout_s, exc) from exc
    try:
        futures = []
        for e in events:
            value, headers = to_record(e, content_mode)
            futures.append(producer.send(settings.events_topic, key=e.id.encode(), value=value, headers=headers))
        for future in futures:
            future.get(timeout=timeout_s)
    finally:
        producer.close(timeout=timeout_s)
