"""One HTTP port for operations: `/metrics` (Prometheus), `/healthz` (alive), `/readyz` (able to do work).

Liveness fails when the consume loop has not turned for `stall_after_s` (a wedged process should be
restarted); readiness fails until the start-up checks have passed, and while Triton is not ready, the inference
breaker is open, or the worker is not in its consumer group (take no traffic, but do not restart).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


class HealthState:
    """What the probes report; the service updates it, the HTTP handler only reads it."""

    def __init__(self, stall_after_s: float = 60.0) -> None:
        self.stall_after_s = stall_after_s
        self.last_loop = time.monotonic()
        self.ready_checks: dict[str, Callable[[], bool]] = {}
        #: Degradations that do not stop work (the cache): each returns why, or None; `/readyz` lists them.
        self.degraded: dict[str, Callable[[], str | None]] = {}

    def beat(self) -> None:
        self.last_loop = time.monotonic()

    def alive(self) -> tuple[bool, str]:
        age = time.monotonic() - self.last_loop
        return age < self.stall_after_s, f"loop turned {age:.1f}s ago"

    def ready(self) -> tuple[bool, str]:
        failing = []
        for name, check in self.ready_checks.items():
            try:
                ok = check()
            except Exception:
                ok = False
            if not ok:
                failing.append(name)
        notes = []
        for name, why in self.degraded.items():
            try:
                note = why()
            except Exception as exc:
                note = repr(exc)
            if note:
                notes.append(f"{name}: {note}")
        text = "ready" if not failing else "not ready: " + ", ".join(failing)
        return not failing, text + ("; degraded: " + "; ".join(notes) if notes else "")


def serve(state: HealthState, host: str, port: int) -> ThreadingHTTPServer:
    """Start the operations server on a daemon thread and return it (call `.shutdown()` to stop)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                ok, why = state.alive()
                self._send(200 if ok else 503, why.encode())
            elif self.path == "/readyz":
                ok, why = state.ready()
                self._send(200 if ok else 503, why.encode())
            else:
                self._send(404, b"not found")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: stay quiet
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health-http", daemon=True).start()
    return server
