"""The wire contracts of DESIGN.md section 2: media events in, verdicts and DLQ records out.

Verdicts and DLQ records are CloudEvents 1.0 in structured JSON mode; the Kafka key is the event id. Events
arrive in either content mode (`worker.stream.envelope` reads both). Every string the worker may echo (the event id
as Kafka key and verdict id, error messages that quote the input) is printable text of bounded length, so a
verdict can always be serialised: a lone UTF-16 surrogate or a control character never gets that far.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from worker.core.errors import ErrorCode
from worker.core.settings import Sampling

Status = Literal["ok", "no_face", "rejected", "error"]
Label = Literal["fake", "real", "uncertain"]


#: Longest event id (characters) the worker answers to; it becomes the verdict's Kafka key.
MAX_ID_CHARS = 512
#: Longest `source`, `type` or `content_type` accepted (they are quoted in logs and error messages).
MAX_ATTRIBUTE_CHARS = 2048


def _printable(value: str) -> str:
    """Refuse control characters, lone surrogates and other unprintable code points (`str.isprintable`)."""
    if not value.isprintable():
        raise ValueError("must be printable text: no control characters or lone surrogates")
    return value


#: An event id: printable, 1..512 characters. Safe as a Kafka key and inside any JSON the worker writes.
EventId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(_printable)]
#: A short printable attribute (source, type, content type).
Attribute = Annotated[str, Field(min_length=1, max_length=MAX_ATTRIBUTE_CHARS), AfterValidator(_printable)]


def printable(text: str, limit: int = 500) -> str:
    """`text` cut to `limit` characters with unprintable code points escaped (`\\x07`, `\\ud800`)."""
    text = text[:limit]
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class MediaData(BaseModel):
    """Where the media is: a `uri`, or small media carried `inline` as base64."""

    model_config = ConfigDict(extra="allow")

    uri: str | None = None
    inline: str | None = None
    content_type: Attribute | None = None
    sha256: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> MediaData:
        if (self.uri is None) == (self.inline is None):
            raise ValueError("data must carry exactly one of 'uri' or 'inline'")
        return self


class MediaEvent(BaseModel):
    """A `media.submitted` CloudEvent."""

    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"] = "1.0"
    id: EventId
    source: Attribute
    type: Attribute = "media.submitted"
    time: str | None = None
    datacontenttype: str = "application/json"
    data: MediaData


class ErrorInfo(BaseModel):
    code: ErrorCode
    message: str

    @field_validator("message")
    @classmethod
    def _serialisable(cls, message: str) -> str:
        """Messages quote the input (a declared content type, a URI): keep them printable and short."""
        return printable(message)


class FaceResult(BaseModel):
    """One detected face: where it was, and what the model said about it."""

    frame_index: int
    time_s: float
    box: list[float]              # x, y, w, h in source-frame pixels
    landmarks: list[list[float]] | None  # 5 x (x, y): eyes, nose, mouth corners; None when estimated (haar)
    detector_score: float
    score: float                  # fake probability of this face


class ModelInfo(BaseModel):
    name: str
    version: str
    weights: str                  # provenance: random-init, openai, a hub repo id@revision or file name, ...
    threshold: float = 0.5
    uncertain_band: float = 0.0
    preprocessing_version: str = ""
    weights_sha256: str = ""      # sha256 of the file the weights came from (a released file, a checkpoint)
    checkpoint_sha256: str = ""   # sha256 of the dfmod checkpoint that was exported


class FrameHash(BaseModel):
    """PDQ of one sampled frame (or of the still), as vPDQ's per-frame features: frame, time, hash, quality."""

    frame_index: int
    time_s: float
    pdq: str                      # 64 hex digits, ThreatExchange's form
    quality: int                  # 0-100; below NearDuplicateSettings.min_quality it is never compared


class NearDuplicate(BaseModel):
    """Earlier-judged media whose perceptual hashes match this one's."""

    media_sha256: str             # the matched media
    distance: int                 # PDQ bits: a still's distance; a video's mean over its matched frames
    mirrored: bool = False        # the match is this media's left-right mirror image
    match_pct: float = 100.0      # vPDQ: share of the matched media's frames matched (100 for stills)
    query_match_pct: float = 100.0  # and of this media's frames
    answered: bool = False        # the verdict is the matched media's (mode `on`), not this media's own scores


class ListMatch(BaseModel):
    """An entry of an operator's hash list (`dfmod hashlist import`) that this media matches."""

    list: str
    label: Literal["fake", "real"]
    source: str = ""
    distance: int                 # PDQ bits, as in NearDuplicate


class VerdictData(BaseModel):
    status: Status
    label: Label | None = None
    score: float | None = None            # media-level fake probability: mean over frames with a face
    score_max: float | None = None        # the most suspicious frame
    threshold: float | None = None
    frames_sampled: int = 0
    #: how the frames were chosen: "exact" (the paper's evenly spaced frames) or "keyframes" (the opt-in
    #: approximate mode, DecodeSettings.sampling, where it moved a sample to its interval's keyframe)
    sampling: Sampling = "exact"
    frames_with_faces: int = 0
    faces_count: int = 0
    #: Faces found but not scored because of the caps (FaceSettings.max_faces_per_frame/_per_media);
    #: the smallest are dropped first. 0 means every detected face was scored.
    faces_dropped: int = 0
    faces: list[FaceResult] = Field(default_factory=list)
    media_sha256: str | None = None
    model: ModelInfo | None = None
    pipeline_version: str = ""
    cached: bool = False
    timings_ms: dict[str, float] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    #: PDQ of each sampled frame (one for a still); empty when nothing was decoded
    phash: list[FrameHash] = Field(default_factory=list)
    #: set when the media matched earlier-judged media (NearDuplicateSettings)
    near_duplicate: NearDuplicate | None = None
    #: set when the media matches a hash-list entry (NearDuplicateSettings.lists); with `lists: decide` the
    #: label is the list's and `score` is null (nothing was scored)
    match: ListMatch | None = None


class Verdict(BaseModel):
    """A `media.verdict` CloudEvent: the same `id` as the event it answers."""

    specversion: Literal["1.0"] = "1.0"
    id: EventId
    source: str = "dfmod-worker"
    type: Literal["media.verdict"] = "media.verdict"
    time: str = Field(default_factory=now_iso)
    datacontenttype: str = "application/json"
    subject: str | None = None
    data: VerdictData

    @model_serializer(mode="wrap")
    def _omit_absent_subject(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """An absent optional attribute is left out, not null: CloudEvents SDKs refuse `"subject": null`."""
        doc: dict[str, Any] = handler(self)
        if doc.get("subject", "") is None:
            del doc["subject"]
        return doc


class DeadLetter(BaseModel):
    """What lands on the DLQ when an event cannot even be parsed: enough to replay it by hand."""

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    source: str = "dfmod-worker"
    type: Literal["media.deadletter"] = "media.deadletter"
    time: str = Field(default_factory=now_iso)
    datacontenttype: str = "application/json"
    data: DeadLetterData


class DeadLetterData(BaseModel):
    reason: str
    code: str = "unparseable_event"
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    key_b64: str | None = None
    value_b64: str
    value_size: int = 0
    value_truncated: bool = False
    headers: dict[str, str] = Field(default_factory=dict)


DeadLetter.model_rebuild()
