"""Redis verdict cache, keyed by content: a repeat upload costs one hash and one GET.

The cache is an optimisation only (DESIGN.md section 1, stage 8): Redis down means slower, never wrong or
stuck. So every call has short socket timeouts, never raises, and a circuit breaker skips Redis entirely
for `retry_after_s` after a failure instead of paying the timeout on every event.

Key layout (stable across processes and releases; no Python `hash()`):

    <prefix><media sha256>:<model digest>

`model digest` = the first 32 hex digits of SHA-256 over the canonical JSON (sorted keys, no spaces) of
{"v": 2, "model": name, "version": version, "weights": weights provenance, "weights_sha256": hash of the
weights file, "checkpoint_sha256": hash of the exported checkpoint, "threshold": threshold, "uncertain_band":
band, "preprocessing": preprocessing version, "pipeline": pipeline version}.
Threshold and band are in it because they decide the cached label: recalibrating a model without bumping
its version must not serve old labels. The hashes are in it for the same reason: other weights exported
under the same Triton version (a retrained checkpoint, another release) must never hit the old verdicts.
The media hash stays readable so operators can find (SCAN) or delete every cached verdict of one file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from worker.core.contracts import ModelInfo
from worker.core.retry import Breaker
from worker.core.settings import CacheSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
KEY_SCHEMA_VERSION = 2

#: Receives "hit", "miss", "error" (Redis failed) or "skip" (breaker open) once per get/set outcome.
CacheHook = Callable[[str], None]


def model_digest(model: ModelInfo, pipeline_version: str) -> str:
    """32 hex digits naming everything besides the bytes that decides a verdict."""
    parts = {
        "v": KEY_SCHEMA_VERSION,
        "model": model.name,
        "version": model.version,
        "weights": model.weights,
        "weights_sha256": model.weights_sha256,
        "checkpoint_sha256": model.checkpoint_sha256,
        "threshold": repr(float(model.threshold)),
        "uncertain_band": repr(float(model.uncertain_band)),
        "preprocessing": model.preprocessing_version,
        "pipeline": pipeline_version,
    }
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def cache_key(media_sha256: str, model: ModelInfo, pipeline_version: str, prefix: str) -> str:
    """The cache key of one media content under one model and pipeline (layout in the module docstring)."""
    sha = media_sha256.strip().lower()
    if not _SHA256.match(sha):
        raise ValueError(f"media_sha256 must be 64 hex digits, got {media_sha256!r}")
    return f"{prefix}{sha}:{model_digest(model, pipeline_version)}"


def redis_client(settings: CacheSettings) -> Any:
    """The Redis client of the verdict cache and the crash-loop guard: bounded timeouts, no retry on a timeout."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    password = settings.password.get_secret_value() if settings.password is not None else None
    tls: dict[str, Any] = {}
    if settings.url.startswith("rediss://"):
        tls = {"ssl_ca_certs": settings.tls_ca_file or None, "ssl_certfile": settings.tls_cert_file or None,
               "ssl_keyfile": settings.tls_key_file or None}
    return redis.Redis.from_url(
        settings.url,
        username=settings.username or None,
        password=password,
        **tls,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_timeout_s,
        # One immediate retry on a broken connection (a pooled socket that died while Redis
        # restarted), none on a timeout: a slow Redis must cost one timeout, then the breaker.
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        retry_on_timeout=False,
        health_check_interval=0,
    )


class VerdictCache:
    """GET/SET of verdict dicts as JSON with a TTL. Never raises, never stalls; `enabled=False` is a no-op.

    Counters `hits`, `misses`, `errors`, `skips` are plain attributes; `on_event` mirrors them into metrics.
    """

    def __init__(self, settings: CacheSettings, on_event: CacheHook | None = None) -> None:
        self.settings = settings
        self.enabled = settings.enabled
        self.on_event = on_event
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.skips = 0
        self._lock = threading.Lock()
        self.breaker = Breaker("redis", retry_after_s=settings.retry_after_s)
        #: Why the last call failed (e.g. Redis refused the credentials or the certificate), None once it answers:
        #: `/readyz` shows it while the worker scores on uncached. Redis' messages carry no secrets.
        self.problem: str | None = None
        self._client: Any = redis_client(settings) if self.enabled else None

    # -- bookkeeping -----------------------------------------------------------------------------------

    def _count(self, kind: str) -> None:
        with self._lock:
            if kind == "hit":
                self.hits += 1
            elif kind == "miss":
                self.misses += 1
            elif kind == "error":
                self.errors += 1
            else:
                self.skips += 1
        if self.on_event is not None:
            try:
                self.on_event(kind)
            except Exception:
                log.exception("cache on_event hook raised")

    def _available(self) -> bool:
        if not self.enabled:
            return False
        if not self.breaker.allows():
            self._count("skip")
            return False
        return True

    def _failed(self, op: str, exc: BaseException) -> None:
        self._count("error")
        self.problem = f"redis {op} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        if self.breaker.failure():  # one warning per outage, not one per event
            log.warning(
                "redis %s failed, skipping the cache for %.1f s: %s", op, self.settings.retry_after_s, exc
            )

    def _succeeded(self) -> None:
        self.problem = None
        if self.breaker.success():
            log.info("redis is back, verdict cache in use again")

    # -- operations ------------------------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached verdict dict; None on a miss, an unreadable value, a disabled or unreachable cache."""
        if not self._available():
            return None
        try:
            raw = self._client.get(key)
        except Exception as exc:
            self._failed("GET", exc)
            return None
        self._succeeded()
        if raw is None:
            self._count("miss")
            return None
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            log.warning("unreadable cache value under %s, ignoring it", key)
            self._count("miss")
            return None
        if not isinstance(value, dict):
            self._count("miss")
            return None
        self._count("hit")
        return value

    def set(self, key: str, verdict_data: dict[str, Any]) -> None:
        """Store `verdict_data` as JSON for `ttl_s`; silently does nothing when Redis is unavailable."""
        if not self._available():
            return
        try:
            payload = json.dumps(verdict_data, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:  # a caller bug, not a Redis outage: keep the breaker closed
            log.error("verdict for %s is not JSON-serialisable, not cached: %s", key, exc)
            return
        try:
            self._client.set(key, payload, ex=max(1, int(self.settings.ttl_s)))
        except Exception as exc:
            self._failed("SET", exc)
            return
        self._succeeded()

    def call(self, op: str, fn: Callable[[Any], T]) -> T | None:
        """`fn(redis client)` under this cache's timeouts and breaker (for the near-duplicate index, which
        shares both: one outage, one warning); None when disabled, skipped or failed. Never raises."""
        if not self._available():
            return None
        try:
            result = fn(self._client)
        except Exception as exc:
            self._failed(op, exc)
            return None
        self._succeeded()
        return result

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception as exc:
                log.debug("closing the redis client: %s", exc)
