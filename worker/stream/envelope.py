"""Reading one Kafka record as a media event, and the DLQ record for one that cannot be read.

Nothing in a record may crash the worker, so every step here is bounded and total:

- size: a record above `MAX_EVENT_BYTES` is refused before it is parsed;
- depth: JSON is parsed by pydantic-core (jiter, Rust, no Python recursion), which refuses nesting deeper
  than its recursion limit (~200) with a ValueError; the stdlib `json.loads` (recursive, RecursionError on
  100,000 nested arrays) is never used on record bytes;
- shape: at most `MAX_JSON_CONTAINERS` objects/arrays and `MAX_JSON_ITEMS` commas, counted with
  memchr jumps (`count_byte`) before parsing (base64 has neither, so inline media costs ~0.1 ms): 16 MiB of `{},` would
  otherwise become 5.6 million Python dicts (564 MB of RSS for one record);
- text: the id must be printable text of at most 512 characters (`contracts.EventId`: no control
  characters, no lone surrogates), because it becomes the verdict's Kafka key and JSON;
- `parse_event`, `salvage_id` and `dead_letter_value` return a value (an event, a reason, None, bytes);
  exceptions never leave them.

Both CloudEvents content modes of the Kafka protocol binding are accepted, told apart by its rule
(`content_mode`: a `content-type: application/cloudevents...` header means structured, else a `ce_*` header
means binary, else structured):

- structured: the whole event is the JSON value (`content-type: application/cloudevents+json`, or no
  header at all, as `dfmod produce` and most producers send it);
- binary: attributes in `ce_*` headers, `content-type` = `datacontenttype`, the value is the data. The data
  is our `MediaData` JSON (`application/json`), or the media itself (`image/*`, `video/*`), carried inline.

The binary-mode header mapping is the official SDK's (`cloudevents.core.bindings.kafka.from_binary`), with
its data parser swapped for a bounded one. Structured mode is parsed by pydantic in one pass: the SDK's
structured reader decodes the value with `json.loads` and builds an event we would validate a second time.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import pybase64
import pydantic_core
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from dateutil.parser import isoparse
from kafka.consumer.fetcher import ConsumerRecord
from pydantic import TypeAdapter, ValidationError

from worker.core.contracts import DeadLetter, DeadLetterData, EventId, MediaData, MediaEvent, now_iso, printable

#: Largest record value parsed as an event: inline media up to FetchSettings.max_inline_bytes (8 MiB)
#: is ~10.7 MiB of base64. Larger records are dead-lettered unparsed.
MAX_EVENT_BYTES = 16 * 1024 * 1024
#: JSON objects + arrays, and commas, allowed in one event: a real event has a few dozen of each.
MAX_JSON_CONTAINERS = 10_000
MAX_JSON_ITEMS = 100_000
#: Headers read from one record, and the size of each (CloudEvents attributes are short strings).
MAX_HEADERS = 64
MAX_HEADER_BYTES = 4096
#: Hits of one byte `count_byte` finds one by one before it counts the rest in one pass.
SPARSE_HITS = 256
#: Bytes a DLQ record needs besides the (base64) value: attributes, reason, key and headers.
DLQ_OVERHEAD_BYTES = 16_384
#: The structured-mode content type, written as the `content-type` header of verdicts and DLQ records.
STRUCTURED_CONTENT_TYPE = JSONFormat.CONTENT_TYPE
#: Kafka headers of a structured-mode CloudEvent (the JSON document carries every attribute).
STRUCTURED_HEADERS: list[tuple[str, bytes]] = [("content-type", STRUCTURED_CONTENT_TYPE.encode())]

Headers = Sequence[tuple[str, bytes | None]] | None
ContentMode = Literal["binary", "structured"]

_JSON_TYPE = JSONFormat.JSON_CONTENT_TYPE_PATTERN
_MEDIA_TYPE = re.compile(r"^(image|video)/[A-Za-z0-9.+-]+$")
_EVENT_ID: TypeAdapter[str] = TypeAdapter(EventId)


class _BoundedJSONFormat(JSONFormat):
    """The SDK's JSON format, reading binary-mode data with the bounded parser and keeping media as bytes.

    The SDK's own `read_data` uses `json.loads` (RecursionError on deep input) and silently turns invalid
    JSON into a string; here invalid JSON is an error and anything not JSON stays raw bytes.
    """

    def read_data(self, body: bytes, datacontenttype: str | None) -> dict[str, Any] | str | bytes | None:
        if not body:
            return None
        if _JSON_TYPE.match(datacontenttype or self.DEFAULT_CONTENT_TYPE):
            check_json_shape(body)
            try:
                parsed: dict[str, Any] = pydantic_core.from_json(body)
            except ValueError as exc:
                raise ValueError(f"data is not valid JSON: {exc}") from exc
            return parsed
        return bytes(body)


_FORMAT = _BoundedJSONFormat()


def check_json_shape(value: bytes) -> None:
    """Raise ValueError when `value` holds more JSON containers or items than an event ever needs."""
    containers = count_byte(value, b"{") + count_byte(value, b"[")
    if containers > MAX_JSON_CONTAINERS:
        raise ValueError(f"JSON with {containers} objects/arrays, at most {MAX_JSON_CONTAINERS} are parsed")
    items = count_byte(value, b",")
    if items > MAX_JSON_ITEMS:
        raise ValueError(f"JSON with {items} items, at most {MAX_JSON_ITEMS} are parsed")


def count_byte(value: bytes, byte: bytes) -> int:
    """`value.count(byte)`, fast when the byte is rare, as `{`, `[` and `,` are in an event with inline media.

    `bytes.count` inspects every byte (1.3 ms per pass over 3.5 MB, three passes per event on the consume
    loop's thread); `bytes.find` jumps between hits with memchr (0.04 ms). After `SPARSE_HITS` hits the
    byte is not rare and `bytes.count` finishes the job, so a hostile record costs at most that many finds.
    """
    count, at = 0, value.find(byte)
    while at >= 0:
        count += 1
        if count >= SPARSE_HITS:
            return count + value.count(byte, at + 1)
        at = value.find(byte, at + 1)
    return count


def content_mode(headers: Headers) -> ContentMode:
    """The Kafka binding's rule: structured when `content-type` is `application/cloudevents...`, else
    binary when a `ce_` header is present, else structured (producers that send no headers at all)."""
    binary = False
    for key, value in headers or ():
        name = key.lower()
        if name == "content-type" and (value or b"").lower().startswith(b"application/cloudevents"):
            return "structured"
        binary = binary or name.startswith("ce_")
    return "binary" if binary else "structured"


def parse_event(value: bytes | None, headers: Headers = None, max_bytes: int = MAX_EVENT_BYTES) -> MediaEvent | str:
    """The event, or the reason it cannot be used (never raises)."""
    try:
        if content_mode(headers) == "binary":
            return _parse_binary(value or b"", headers or (), max_bytes)
        if value is None:
            return "empty record (tombstone)"
        if len(value) > max_bytes:
            return f"record of {len(value)} bytes is above the {max_bytes}-byte event limit"
        check_json_shape(value)
        return MediaEvent.model_validate_json(value)
    except ValidationError as exc:
        return _reason(exc)
    except ValueError as exc:
        return printable(f"invalid event: {exc}")
    except Exception as exc:  # anything else a hostile record can provoke is a reason too
        return printable(f"unreadable event: {type(exc).__name__}: {exc}")


def salvage_id(value: bytes | None, headers: Headers = None, max_bytes: int = MAX_EVENT_BYTES) -> str | None:
    """The id of an invalid event when it is one we can answer to (printable, bounded), else None."""
    try:
        if content_mode(headers) == "binary":
            raw = _header_map(headers or ()).get("ce_id")
            candidate: Any = raw.decode("utf-8") if raw is not None else None
        else:
            if not value or len(value) > max_bytes:
                return None
            check_json_shape(value)
            doc = pydantic_core.from_json(value)
            candidate = doc.get("id") if isinstance(doc, dict) else None
        return _EVENT_ID.validate_python(candidate, strict=True) if isinstance(candidate, str) else None
    except Exception:
        return None


def dead_letter(record: ConsumerRecord, reason: str, max_value_bytes: int = 768 * 1024) -> DeadLetter:
    """The DLQ record; a value too big to fit the DLQ topic is cut (flagged) so the record can always be sent."""
    value = record.value or b""
    return DeadLetter(
        data=DeadLetterData(
            reason=printable(reason, 2000),
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            key_b64=base64.b64encode(record.key).decode() if record.key else None,
            value_b64=base64.b64encode(value[:max_value_bytes]).decode(),
            value_size=len(value),
            value_truncated=len(value) > max_value_bytes,
            headers={printable(str(k), 256): base64.b64encode(v or b"").decode() for k, v in (record.headers or [])},
        )
    )


def dlq_room(max_message_bytes: int) -> int:
    """Raw value bytes that fit one DLQ record once base64-encoded (4/3) beside its envelope."""
    return max(0, max_message_bytes * 3 // 4 - DLQ_OVERHEAD_BYTES)


def dead_letter_value(record: DeadLetter, max_message_bytes: int) -> bytes:
    """The DLQ record's bytes, never above `max_message_bytes` and never failing to serialise.

    Normally the whole record; when that cannot be serialised or is too big (huge headers or key), the last
    resort: a record built from nothing but the raw value (base64, cut to fit), topic, partition, offset and
    reason, with only ASCII in it.
    """
    try:
        full = record.model_dump_json().encode()
        if len(full) <= max_message_bytes:
            return full
    except Exception:
        pass
    return raw_dead_letter(record, max_message_bytes)


def raw_dead_letter(record: DeadLetter, max_message_bytes: int) -> bytes:
    """The last-resort DLQ record: the raw bytes (base64) plus position and reason, plain ASCII JSON."""
    d = record.data
    room_b64 = dlq_room(max_message_bytes) // 3 * 4  # whole base64 quanta: a cut value still decodes
    value_b64 = d.value_b64[:room_b64]
    doc = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "dfmod-worker",
        "type": "media.deadletter",
        "time": now_iso(),
        "datacontenttype": "application/json",
        "data": {
            "reason": printable(str(d.reason), 2000),
            "code": "unparseable_event",
            "topic": str(d.topic),
            "partition": int(d.partition),
            "offset": int(d.offset),
            "value_b64": value_b64,
            "value_size": int(d.value_size),
            "value_truncated": bool(d.value_truncated) or len(value_b64) < len(d.value_b64),
        },
    }
    return json.dumps(doc, ensure_ascii=True).encode("ascii")


# -- binary content mode ----------------------------------------------------------------------------
def _header_map(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, bytes]:
    """Headers by lower-cased name; raises ValueError on too many, too big or repeated CloudEvents headers."""
    if len(headers) > MAX_HEADERS:
        raise ValueError(f"{len(headers)} headers, at most {MAX_HEADERS} are read")
    named: dict[str, bytes] = {}
    for key, raw in headers:
        name = key.lower()
        if not (name.startswith("ce_") or name == "content-type"):
            continue
        if name in named:
            raise ValueError(f"header {printable(name, 64)!r} appears twice")
        value = raw or b""
        if len(value) > MAX_HEADER_BYTES:
            raise ValueError(f"header {printable(name, 64)!r} is above {MAX_HEADER_BYTES} bytes")
        named[name] = value
    return named


def _parse_binary(value: bytes, headers: Sequence[tuple[str, bytes | None]], max_bytes: int) -> MediaEvent | str:
    if len(value) > max_bytes:
        return f"record of {len(value)} bytes is above the {max_bytes}-byte event limit"
    named = _header_map(headers)
    for required in ("ce_id", "ce_source", "ce_type", "ce_specversion"):
        if required not in named:  # the SDK would invent an id (uuid4): we could not answer the producer
            return f"binary-mode event without its {required} header"
    if "ce_time" in named:
        try:
            isoparse(named["ce_time"].decode("utf-8"))  # the parser the SDK uses, for a clearer reason
        except ValueError:
            return "binary-mode ce_time header is not an RFC 3339 timestamp"
    # key=None: the SDK would decode the Kafka key as UTF-8 into a `partitionkey` we do not use.
    event = ce_kafka.from_binary(ce_kafka.KafkaMessage(headers=named, key=None, value=value), _FORMAT, CloudEvent)
    attributes: dict[str, Any] = dict(event.get_attributes())
    if isinstance(attributes.get("time"), datetime):
        attributes["time"] = attributes["time"].isoformat().replace("+00:00", "Z")
    data: Any = event.get_data()
    content_type = attributes.get("datacontenttype")
    if isinstance(data, bytes):
        if not (isinstance(content_type, str) and _MEDIA_TYPE.match(content_type)):
            return printable(f"binary-mode data of content-type {content_type!r}: expected JSON, image/* or video/*")
        data = MediaData(inline=pybase64.b64encode(data).decode("ascii"), content_type=content_type)
    elif data is None:
        return "binary-mode event without data"
    return MediaEvent.model_validate({**attributes, "data": data})


def _reason(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    msg = first.get("msg")
    return printable(f"invalid event: {where}: {msg}" if where else f"invalid event: {msg}")
