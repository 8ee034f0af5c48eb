"""Stable error codes and the exception that carries one out of a stage.

Inside a stage, problems are exceptions; at the stage boundary a `MediaError` becomes a verdict with
`status` `rejected` (the input is at fault: retrying the same bytes gives the same answer) or `error`
(our side or a transient failure: a retry may succeed). Codes are part of the public contract: never
rename one, only add.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_EVENT = "invalid_event"          # parsed, but no usable uri/inline, bad base64, bad sha256 field
    FORBIDDEN_URI = "forbidden_uri"          # scheme not enabled, or host in a blocked range (SSRF guard)
    FETCH_FAILED = "fetch_failed"            # network error, HTTP status >= 400, missing file
    EMPTY_MEDIA = "empty_media"              # zero bytes
    TOO_LARGE = "too_large"                  # bytes or pixels above the configured limits
    TOO_LONG = "too_long"                    # duration above the configured limit
    CHECKSUM_MISMATCH = "checksum_mismatch"  # the event's sha256 does not match the bytes
    UNSUPPORTED_MEDIA = "unsupported_media"  # not an image or video, or a container/codec not allow-listed
    DECODE_FAILED = "decode_failed"          # recognised but corrupt or truncated
    TIMEOUT = "timeout"                      # a stage or the whole media ran past its wall-time limit
    INFERENCE_FAILED = "inference_failed"    # Triton/ONNX Runtime failed or is unreachable
    INTERNAL_ERROR = "internal_error"        # a bug: anything we did not anticipate


#: Codes for which the input itself is at fault -> status "rejected". All others -> status "error".
REJECTED_CODES: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.INVALID_EVENT,
        ErrorCode.FORBIDDEN_URI,
        ErrorCode.EMPTY_MEDIA,
        ErrorCode.TOO_LARGE,
        ErrorCode.TOO_LONG,
        ErrorCode.CHECKSUM_MISMATCH,
        ErrorCode.UNSUPPORTED_MEDIA,
        ErrorCode.DECODE_FAILED,
    }
)


def status_for(code: ErrorCode) -> str:
    """The verdict status an error code maps to."""
    return "rejected" if code in REJECTED_CODES else "error"


class MediaError(Exception):
    """A problem with one media item, carrying its stable code out of the stage that found it."""

    def __init__(self, code: ErrorCode, message: str, transient: bool = False) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        #: The same request may succeed later (origin 5xx/429, refused connection, timeout): the worker
        #: retries the event through the retry topic before it answers with this error.
        self.transient = transient
