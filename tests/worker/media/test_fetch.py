"""Fetch: inline base64, file://, s3:// without boto3, and http against a real local server."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import worker.media.fetch as fetch_module
from worker.core.contracts import MediaData
from worker.core.errors import ErrorCode, MediaError
from worker.core.settings import FetchSettings
from worker.media.fetch import fetch_media
from worker.media.ssrf import CheckedTarget

PAYLOAD = bytes(range(256)) * 64  # 16 KiB


def fetch_error(data: MediaData, settings: FetchSettings) -> ErrorCode:
    with pytest.raises(MediaError) as err:
        fetch_media(data, settings)
    return err.value.code


# ---------------------------------------------------------------------------------------------- inline


def test_inline_ok_and_checksum() -> None:
    encoded = base64.b64encode(PAYLOAD).decode()
    assert fetch_media(MediaData(inline=encoded), FetchSettings()) == PAYLOAD
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    assert fetch_media(MediaData(inline=encoded, sha256=digest.upper()), FetchSettings()) == PAYLOAD
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))  # MIME line breaks
    assert fetch_media(MediaData(inline=wrapped), FetchSettings()) == PAYLOAD


def test_inline_errors() -> None:
    settings = FetchSettings(max_inline_bytes=1024)
    assert fetch_error(MediaData(inline="not base64!!"), settings) is ErrorCode.INVALID_EVENT
    assert fetch_error(MediaData(inline="QUJ"), settings) is ErrorCode.INVALID_EVENT  # bad padding
    big = base64.b64encode(b"x" * 1025).decode()
    assert fetch_error(MediaData(inline=big), settings) is ErrorCode.TOO_LARGE
    assert fetch_error(MediaData(inline=""), settings) is ErrorCode.EMPTY_MEDIA
    small = base64.b64encode(b"abc").decode()
    wrong = hashlib.sha256(b"abd").hexdigest()
    assert fetch_error(MediaData(inline=small, sha256=wrong), settings) is ErrorCode.CHECKSUM_MISMATCH
    assert fetch_error(MediaData(inline=small, sha256="abc123"), settings) is ErrorCode.INVALID_EVENT


@pytest.mark.parametrize("text", [
    "YWJj", "YWI=", "YQ==", "YQ", "YQ=", "YQ===", "YQ==YQ==", "====", "=YWJj", "YW=j",
    "-_-_", "YW+/", "YWJj\n", " YWJj", "YW Jj", "Y\tW\r\nJj", "YWJjé", "\u00e9\u00e9\u00e9\u00e9", "YWJj\x00",
])
def test_inline_decoding_answers_as_strict_stdlib_base64(text: str) -> None:
    """The fast decoder must accept and refuse exactly what `base64.b64decode(validate=True)` does, after
    whitespace is removed (the contract: RFC 4648 alphabet and padding, MIME line breaks allowed)."""
    try:
        expected: bytes | None = base64.b64decode("".join(text.split()), validate=True)
    except ValueError:
        expected = None
    try:
        got: bytes | None = fetch_module._decode_inline(text, 1024)
    except MediaError as exc:
        assert exc.code is ErrorCode.INVALID_EVENT
        got = None
    assert got == expected


def test_inline_whitespace_does_not_count_towards_the_size_limit() -> None:
    encoded = base64.b64encode(b"x" * 1024).decode()
    spaced = " \n".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))  # raw text: ~2.2x the limit
    assert fetch_media(MediaData(inline=spaced), FetchSettings(max_inline_bytes=1024)) == b"x" * 1024


# ------------------------------------------------------------------------------ file, s3, schemes


def test_file_scheme(tmp_path: Path) -> None:
    root = tmp_path / "media"
    root.mkdir()
    (root / "a b.bin").write_bytes(PAYLOAD)
    (tmp_path / "secret.bin").write_bytes(b"secret")
    (root / "link.bin").symlink_to(tmp_path / "secret.bin")
    uri = (root / "a b.bin").as_uri()

    assert fetch_error(MediaData(uri=uri), FetchSettings()) is ErrorCode.FORBIDDEN_URI  # not enabled
    enabled = FetchSettings(allow_schemes=["file"], file_roots=[root])
    assert fetch_media(MediaData(uri=uri), enabled) == PAYLOAD
    for outside in (
        (tmp_path / "secret.bin").as_uri(),
        f"file://{root}/../secret.bin",
        (root / "link.bin").as_uri(),                # a symlink out of the root
        "file://otherhost/etc/hostname",
    ):
        assert fetch_error(MediaData(uri=outside), enabled) is ErrorCode.FORBIDDEN_URI, outside
    assert fetch_error(MediaData(uri=(root / "missing.bin").as_uri()), enabled) is ErrorCode.FETCH_FAILED
    assert fetch_error(MediaData(uri=root.as_uri()), enabled) is ErrorCode.FETCH_FAILED  # a directory
    (root / "empty.bin").write_bytes(b"")
    assert fetch_error(MediaData(uri=(root / "empty.bin").as_uri()), enabled) is ErrorCode.EMPTY_MEDIA
    small = FetchSettings(allow_schemes=["file"], file_roots=[root], max_bytes=100)
    assert fetch_error(MediaData(uri=uri), small) is ErrorCode.TOO_LARGE


def test_unknown_or_disabled_schemes() -> None:
    for uri in ("ftp://example.com/a.mp4", "gopher://x/", "data:text/plain,hi", "s3://bucket/key", "nope"):
        assert fetch_error(MediaData(uri=uri), FetchSettings()) is ErrorCode.FORBIDDEN_URI, uri


def test_s3_without_boto3_is_a_clear_fetch_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)       # `import boto3` now raises ImportError
    monkeypatch.setitem(sys.modules, "botocore", None)
    monkeypatch.setitem(sys.modules, "botocore.exceptions", None)
    with pytest.raises(MediaError) as err:
        fetch_media(MediaData(uri="s3://bucket/key.mp4"), FetchSettings(allow_schemes=["s3"]))
    assert err.value.code is ErrorCode.FETCH_FAILED
    assert "boto3" in err.value.message


# ---------------------------------------------------------------------------------------------- http


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, length: bool = True) -> None:
        self.send_response(status)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        try:
            self._route()
        except OSError:  # the client gave up first (timeouts, size limits): expected here
            self.close_connection = True

    def _route(self) -> None:
        if self.path == "/ok":
            self._send(200, PAYLOAD)
        elif self.path == "/host":
            self._send(200, self.headers["Host"].encode())
        elif self.path == "/missing":
            self._send(404, b"not here")
        elif self.path == "/error":
            self._send(500, b"boom")
        elif self.path == "/big":
            self._send(200, b"x" * 200_000)
        elif self.path == "/big-unannounced":
            self.close_connection = True
            self._send(200, b"x" * 200_000, length=False)
        elif self.path == "/slow":
            time.sleep(1.5)
            self._send(200, PAYLOAD)
        elif self.path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)
        elif self.path == "/redirect-ok":
            self.send_response(302)
            self.send_header("Location", "/ok")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/redirect-metadata":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/redirect-loop":
            self.send_response(301)
            self.send_header("Location", "/redirect-loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def local(**kwargs: object) -> FetchSettings:
    return FetchSettings(allow_hosts=["127.0.0.1/32"], **kwargs)  # type: ignore[arg-type]


def test_http_ok(server: str) -> None:
    assert fetch_media(MediaData(uri=f"{server}/ok"), local()) == PAYLOAD
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    assert fetch_media(MediaData(uri=f"{server}/ok", sha256=digest), local()) == PAYLOAD
    assert fetch_media(MediaData(uri=f"{server}/redirect-ok"), local()) == PAYLOAD
    port = server.rsplit(":", 1)[1]
    assert fetch_media(MediaData(uri=f"{server}/host"), local()) == f"127.0.0.1:{port}".encode()


def test_http_allow_list_by_hostname(server: str) -> None:
    assert fetch_media(MediaData(uri=f"{server}/ok"), FetchSettings(allow_hosts=["127.0.0.1"])) == PAYLOAD


def test_http_not_allow_listed_is_forbidden(server: str) -> None:
    assert fetch_error(MediaData(uri=f"{server}/ok"), FetchSettings()) is ErrorCode.FORBIDDEN_URI


def test_http_status_errors(server: str) -> None:
    assert fetch_error(MediaData(uri=f"{server}/missing"), local()) is ErrorCode.FETCH_FAILED
    assert fetch_error(MediaData(uri=f"{server}/error"), local()) is ErrorCode.FETCH_FAILED
    assert fetch_error(MediaData(uri=f"{server}/redirect-loop"), local()) is ErrorCode.FETCH_FAILED


def test_http_too_large(server: str) -> None:
    assert fetch_error(MediaData(uri=f"{server}/big"), local(max_bytes=100_000)) is ErrorCode.TOO_LARGE
    code = fetch_error(MediaData(uri=f"{server}/big-unannounced"), local(max_bytes=100_000))
    assert code is ErrorCode.TOO_LARGE


def test_http_timeouts(server: str) -> None:
    started = time.monotonic()
    assert fetch_error(MediaData(uri=f"{server}/slow"), local(timeout_s=0.3)) is ErrorCode.TIMEOUT
    # each byte arrives well within the read timeout; the whole body does not arrive within the budget
    assert fetch_error(MediaData(uri=f"{server}/trickle"), local(timeout_s=0.5)) is ErrorCode.TIMEOUT
    assert time.monotonic() - started < 3.0


def test_redirect_to_blocked_host_is_forbidden(server: str) -> None:
    assert fetch_error(MediaData(uri=f"{server}/redirect-metadata"), local()) is ErrorCode.FORBIDDEN_URI


def test_connection_refused_is_fetch_failed() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = fetch_error(MediaData(uri=f"http://127.0.0.1:{port}/x"), local())
    assert code is ErrorCode.FETCH_FAILED


def test_next_checked_address_is_tried_when_one_is_unreachable(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = int(server.rsplit(":", 1)[1])
    # as if the name had an AAAA/A answer that is not routable here, then the working one
    target = CheckedTarget(scheme="http", host="media.test", port=port, addresses=("127.0.0.2", "127.0.0.1"))
    monkeypatch.setattr(fetch_module, "resolve_checked", lambda url, allow: target)
    body = fetch_media(MediaData(uri=f"http://media.test:{port}/host"), local())
    assert body == f"media.test:{port}".encode()
    only_bad = CheckedTarget(scheme="http", host="media.test", port=port, addresses=("127.0.0.2",))
    monkeypatch.setattr(fetch_module, "resolve_checked", lambda url, allow: only_bad)
    assert fetch_error(MediaData(uri=f"http://media.test:{port}/ok"), local()) is ErrorCode.FETCH_FAILED


# ---------------------------------------------------------------------------------------------- https


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on 127.0.0.1 whose self-signed certificate names only `localhost`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"{httpd.server_address[1]}", cert_file
    httpd.shutdown()
    httpd.server_close()


def test_https_pins_the_address_and_verifies_the_name(
    tls_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, cert_file = tls_server
    trusting = ssl.create_default_context(cafile=str(cert_file))
    monkeypatch.setattr(fetch_module, "_ssl_context", lambda: trusting)
    # connected to the checked 127.0.0.1, yet TLS verified the certificate against the name `localhost`
    target = CheckedTarget(scheme="https", host="localhost", port=int(port), addresses=("127.0.0.1",))
    monkeypatch.setattr(fetch_module, "resolve_checked", lambda url, allow: target)
    settings = FetchSettings(allow_hosts=["localhost"])
    body = fetch_media(MediaData(uri=f"https://localhost:{port}/host"), settings)
    assert body == f"localhost:{port}".encode()
    monkeypatch.undo()
    trusting = ssl.create_default_context(cafile=str(cert_file))
    monkeypatch.setattr(fetch_module, "_ssl_context", lambda: trusting)
    # the certificate does not name 127.0.0.1: verification must fail
    with pytest.raises(MediaError) as err:
        fetch_media(MediaData(uri=f"https://127.0.0.1:{port}/ok"), local())
    assert err.value.code is ErrorCode.FETCH_FAILED and "certificate" in err.value.message.lower()
