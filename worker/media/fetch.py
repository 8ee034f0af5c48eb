"""Stage 2, fetch: the bytes of one media item, from inline base64 or a URI, within hard size and time limits.

Schemes: `http`/`https` (httpx, streamed, every hop through the SSRF guard and connected to the checked
address), `file` (only under configured roots), `s3` (boto3, optional). Whatever is not enabled in
`FetchSettings.allow_schemes` is refused with FORBIDDEN_URI before anything is opened.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import httpx
import pybase64

from worker.core.contracts import MediaData
from worker.core.errors import ErrorCode, MediaError
from worker.core.settings import FetchSettings
from worker.media.ssrf import resolve_checked

MAX_REDIRECTS = 5
_KNOWN_SCHEMES = frozenset({"http", "https", "file", "s3"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def fetch_media(data: MediaData, settings: FetchSettings) -> bytes:
    """The media's bytes, checked against `data.sha256` when the event carries one."""
    expected = _expected_sha256(data.sha256)
    if data.inline is not None:
        blob = _decode_inline(data.inline, settings.max_inline_bytes)
    elif data.uri is not None:
        blob = _fetch_uri(data.uri.strip(), settings)
    else:  # the contract's validator makes this unreachable; keep the stage total anyway
        raise MediaError(ErrorCode.INVALID_EVENT, "data carries neither 'uri' nor 'inline'")
    if not blob:
        raise MediaError(ErrorCode.EMPTY_MEDIA, "the media has zero bytes")
    if expected is not None:
        actual = hashlib.sha256(blob).hexdigest()
        if actual != expected:
            raise MediaError(ErrorCode.CHECKSUM_MISMATCH, f"sha256 is {actual}, the event says {expected}")
    return blob


def _expected_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    digest = value.strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise MediaError(ErrorCode.INVALID_EVENT, "sha256 must be 64 hexadecimal characters")
    return digest


def _decode_inline(text: str, limit: int) -> bytes:
    """The inline media's bytes: strict base64 (RFC 4648 alphabet and padding), whitespace ignored.

    pybase64's SIMD decoder is ~60x faster than the stdlib's (0.15 vs 10 ms for 3.5 MB of base64) with the
    same strict-mode answers. Most producers send unbroken base64, so it is decoded as it is; only text the
    decoder refuses is stripped of whitespace (MIME line breaks) and decoded again.
    """
    compact = text
    if len(compact) // 4 * 3 > limit + 3:  # refuse before allocating the decoded copy (whitespace not counted)
        compact = _without_whitespace(text)
        if len(compact) // 4 * 3 > limit + 3:
            raise MediaError(ErrorCode.TOO_LARGE, f"inline media is larger than {limit} bytes")
    try:
        blob = pybase64.b64decode(compact, validate=True)
    except ValueError:  # binascii.Error is one: whitespace (MIME line breaks), or no base64 at all
        blob = _strict_b64decode(_without_whitespace(compact))
    if len(blob) > limit:
        raise MediaError(ErrorCode.TOO_LARGE, f"inline media is {len(blob)} bytes, the limit is {limit}")
    return blob


def _without_whitespace(text: str) -> str:
    return "".join(text.split())


def _strict_b64decode(text: str) -> bytes:
    try:
        return pybase64.b64decode(text, validate=True)
    except ValueError as exc:  # binascii.Error, or a str that is not ASCII
        raise MediaError(ErrorCode.INVALID_EVENT, f"inline is not valid base64: {exc}") from exc


def _fetch_uri(uri: str, settings: FetchSettings) -> bytes:
    scheme = urlsplit(uri).scheme.lower()
    if scheme not in _KNOWN_SCHEMES or scheme not in settings.allow_schemes:
        raise MediaError(ErrorCode.FORBIDDEN_URI, f"scheme {scheme!r} is not enabled")
    if scheme == "file":
        return _fetch_file(uri, settings)
    if scheme == "s3":
        return _fetch_s3(uri, settings)
    return _fetch_http(uri, settings)


# ---------------------------------------------------------------------------------------------- http(s)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying context for all fetches: loading the CA bundle costs milliseconds per client."""
    return ssl.create_default_context()


def _fetch_http(uri: str, settings: FetchSettings) -> bytes:
    deadline = time.monotonic() + settings.timeout_s
    url = uri
    with httpx.Client(
        follow_redirects=False,   # every hop goes through the SSRF guard below
        trust_env=False,          # a proxy from the environment would bypass the address pinning
        verify=_ssl_context(),
    ) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            scheme = urlsplit(url).scheme.lower()
            if scheme not in ("http", "https") or scheme not in settings.allow_schemes:
                raise MediaError(ErrorCode.FORBIDDEN_URI, f"redirect to scheme {scheme!r} is not enabled")
            body, location = _get_once(client, url, settings, deadline)
            if body is not None:
                return body
            url = urljoin(url, location)
    raise MediaError(ErrorCode.FETCH_FAILED, f"more than {MAX_REDIRECTS} redirects")


def _get_once(
    client: httpx.Client, url: str, settings: FetchSettings, deadline: float
) -> tuple[bytes | None, str]:
    """One GET to a checked address: (body, "") or, for a redirect, (None, location).

    The checked addresses are tried in resolver order while connecting is refused or unreachable (an AAAA
    answer in a cluster without IPv6 routes must not fail every fetch); never an unchecked one.
    """
    target = resolve_checked(url, settings.allow_hosts)
    for attempt, address in enumerate(target.addresses, start=1):
        try:
            return _get_from(client, url, address, target.scheme, settings, deadline)
        except _Unreachable as exc:
            if attempt == len(target.addresses):
                message = f"cannot connect to {target.host}: {exc}"
                raise MediaError(ErrorCode.FETCH_FAILED, message, transient=True) from exc
    raise AssertionError("resolve_checked returns at least one address")


class _Unreachable(Exception):
    """Connecting to one address failed; another checked address may work."""


def _get_from(
    client: httpx.Client, url: str, address: str, scheme: str, settings: FetchSettings, deadline: float
) -> tuple[bytes | None, str]:
    try:
        original = httpx.URL(url)
        pinned = original.copy_with(host=address)
    except httpx.InvalidURL as exc:
        raise MediaError(ErrorCode.INVALID_EVENT, f"malformed URL: {exc}") from exc
    headers = {"Host": original.netloc.decode("ascii"), "Accept-Encoding": "identity"}
    extensions: dict[str, Any] = {}
    if scheme == "https" and not _is_ip_literal(original.host):
        extensions["sni_hostname"] = original.raw_host.decode("ascii")  # TLS checks the name, not the IP
    try:
        with client.stream(
            "GET", pinned, headers=headers, extensions=extensions, timeout=_remaining(deadline)
        ) as response:
            if response.status_code in _REDIRECTS:
                location = response.headers.get("location")
                if not location:
                    raise MediaError(ErrorCode.FETCH_FAILED, f"HTTP {response.status_code} without Location")
                return None, location
            if response.status_code >= 400:
                transient = response.status_code >= 500 or response.status_code in (408, 429)
                raise MediaError(
                    ErrorCode.FETCH_FAILED, f"HTTP {response.status_code} from {original.host}", transient
                )
            return _read_limited(response, settings.max_bytes, deadline), ""
    except httpx.ConnectError as exc:
        raise _Unreachable(f"{address}: {exc}") from exc
    except httpx.TimeoutException as exc:
        raise MediaError(ErrorCode.TIMEOUT, f"fetch timed out: {type(exc).__name__}", transient=True) from exc
    except httpx.HTTPError as exc:
        raise MediaError(ErrorCode.FETCH_FAILED, f"{type(exc).__name__}: {exc}") from exc


def _read_limited(response: httpx.Response, limit: int, deadline: float) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(f"Content-Length {declared}", limit)
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():  # no chunk_size: it would buffer and delay the deadline check
        size += len(chunk)
        if size > limit:
            raise _too_large("HTTP body", limit)
        chunks.append(chunk)
        _remaining(deadline)  # a server that trickles bytes must not hold a worker thread forever
    return b"".join(chunks)


def _too_large(what: str, limit: int) -> MediaError:
    return MediaError(ErrorCode.TOO_LARGE, f"{what}: above the limit of {limit} bytes")


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise MediaError(ErrorCode.TIMEOUT, "fetch ran past its time limit")
    return left


# ---------------------------------------------------------------------------------------------- file


def _fetch_file(uri: str, settings: FetchSettings) -> bytes:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise MediaError(ErrorCode.FORBIDDEN_URI, "file:// URIs must not name a host")
    path = Path(unquote(parts.path))
    if not path.is_absolute():
        raise MediaError(ErrorCode.FORBIDDEN_URI, "file:// URIs must carry an absolute path")
    resolved = path.resolve()  # follows symlinks and '..' before the root check
    roots = [Path(root).resolve() for root in settings.file_roots]
    if not any(resolved.is_relative_to(root) for root in roots):
        raise MediaError(ErrorCode.FORBIDDEN_URI, "file:// path is outside the configured file_roots")
    try:
        with resolved.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > settings.max_bytes:
                raise _too_large(f"file of {size} bytes", settings.max_bytes)
            blob = handle.read(settings.max_bytes + 1)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        raise MediaError(ErrorCode.FETCH_FAILED, f"cannot read {resolved}: {type(exc).__name__}") from exc
    if len(blob) > settings.max_bytes:
        raise _too_large("file", settings.max_bytes)
    return blob


# ---------------------------------------------------------------------------------------------- s3


@functools.lru_cache(maxsize=4)
def _s3_client(endpoint_url: str | None, timeout_s: float) -> Any:
    """boto3 clients are thread-safe and slow to build: one per endpoint and timeout, shared."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 2})
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


def _fetch_s3(uri: str, settings: FetchSettings) -> bytes:
    try:
        import botocore.exceptions as bexc
    except ImportError as exc:
        raise MediaError(
            ErrorCode.FETCH_FAILED, "s3:// needs boto3, which is not installed (pip install 'dfmod[s3]')"
        ) from exc
    parts = urlsplit(uri)
    bucket, key = parts.netloc, unquote(parts.path.lstrip("/"))
    if not bucket or not key:
        raise MediaError(ErrorCode.INVALID_EVENT, "s3:// URIs look like s3://bucket/key")
    try:
        client = _s3_client(settings.s3_endpoint_url, settings.timeout_s)
        obj = client.get_object(Bucket=bucket, Key=key)
        length = int(obj.get("ContentLength") or 0)
        if length > settings.max_bytes:
            raise _too_large(f"object of {length} bytes", settings.max_bytes)
        blob: bytes = obj["Body"].read(settings.max_bytes + 1)
    except ImportError as exc:
        raise MediaError(
            ErrorCode.FETCH_FAILED, "s3:// needs boto3, which is not installed (pip install 'dfmod[s3]')"
        ) from exc
    except (bexc.ConnectTimeoutError, bexc.ReadTimeoutError) as exc:
        raise MediaError(ErrorCode.TIMEOUT, f"s3 fetch timed out: {exc}") from exc
    except (bexc.BotoCoreError, bexc.ClientError) as exc:
        raise MediaError(ErrorCode.FETCH_FAILED, f"s3 fetch failed: {exc}") from exc
    if len(blob) > settings.max_bytes:
        raise _too_large("object", settings.max_bytes)
    return blob
