"""Cache keys, and the verdict cache against a real redis-server (started here, on a free port)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from worker.core.contracts import ModelInfo
from worker.core.settings import CacheSettings
from worker.scoring.cache import VerdictCache, cache_key

from ..redis_server import RedisServer, free_port, settings_for

SHA = "ab" * 32
MODEL = ModelInfo(
    name="deepfake_clip", version="2", weights="sha256:0123", threshold=0.42, uncertain_band=0.05,
    preprocessing_version="align5-s1.3-224-rgb-v1", weights_sha256="cd" * 32, checkpoint_sha256="ef" * 32,
)
PIPELINE = "dfmod-0.1.0+align5-s1.3-224-rgb-v1"
PREFIX = "dfmod:verdict:"


# -- keys ----------------------------------------------------------------------------------------------

def test_key_follows_the_documented_recipe() -> None:
    canonical = json.dumps(
        {
            "v": 2, "model": "deepfake_clip", "version": "2", "weights": "sha256:0123",
            "weights_sha256": "cd" * 32, "checkpoint_sha256": "ef" * 32,
            "threshold": "0.42", "uncertain_band": "0.05", "preprocessing": "align5-s1.3-224-rgb-v1",
            "pipeline": PIPELINE,
        },
        sort_keys=True, separators=(",", ":"),
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:32]
    assert cache_key(SHA, MODEL, PIPELINE, PREFIX) == f"{PREFIX}{SHA}:{digest}"


@pytest.mark.parametrize(
    "change",
    [
        {"name": "other_model"},
        {"version": "3"},
        {"weights": "openai"},
        {"weights_sha256": "00" * 32},  # other weights exported under the same version and provenance label
        {"checkpoint_sha256": "11" * 32},  # a retrained checkpoint exported as the same version
        {"threshold": 0.43},
        {"uncertain_band": 0.0},
        {"preprocessing_version": "align5-s1.3-224-rgb-v2"},
    ],
)
def test_key_differs_when_the_model_differs(change: dict[str, object]) -> None:
    base = cache_key(SHA, MODEL, PIPELINE, PREFIX)
    assert cache_key(SHA, MODEL.model_copy(update=change), PIPELINE, PREFIX) != base


def test_key_differs_with_content_pipeline_and_prefix() -> None:
    base = cache_key(SHA, MODEL, PIPELINE, PREFIX)
    assert cache_key("cd" * 32, MODEL, PIPELINE, PREFIX) != base
    assert cache_key(SHA, MODEL, PIPELINE + ".1", PREFIX) != base
    assert cache_key(SHA, MODEL, PIPELINE, "other:") != base
    assert cache_key(SHA.upper(), MODEL, PIPELINE, PREFIX) == base  # the hash is normalised
    assert cache_key(SHA, MODEL, PIPELINE, PREFIX) == base          # stable across calls


def test_key_is_stable_across_processes() -> None:
    code = (
        "from worker.scoring.cache import cache_key; from worker.core.contracts import ModelInfo; import json, sys; "
        "m = ModelInfo.model_validate_json(sys.argv[1]); print(cache_key(sys.argv[2], m, sys.argv[3], sys.argv[4]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    out = subprocess.run(
        [sys.executable, "-c", code, MODEL.model_dump_json(), SHA, PIPELINE, PREFIX],
        capture_output=True, text=True, timeout=60, env=env, check=True,
    )
    assert out.stdout.strip() == cache_key(SHA, MODEL, PIPELINE, PREFIX)


@pytest.mark.parametrize("bad", ["", "abc", "g" * 64, "ab" * 33])
def test_key_rejects_a_malformed_hash(bad: str) -> None:
    with pytest.raises(ValueError):
        cache_key(bad, MODEL, PIPELINE, PREFIX)


def test_get_set_and_ttl(redis_server: RedisServer) -> None:
    events: list[str] = []
    cache = VerdictCache(settings_for(redis_server), on_event=events.append)
    key = cache_key(SHA, MODEL, PIPELINE, PREFIX)
    assert cache.get(key) is None
    verdict = {"status": "ok", "label": "fake", "score": 0.91, "faces": [{"box": [1.0, 2.0, 3.0, 4.0]}]}
    cache.set(key, verdict)
    assert cache.get(key) == verdict
    raw = redis.Redis.from_url(redis_server.url)
    assert 3590 <= raw.ttl(key) <= 3600
    stored = raw.get(key)
    assert stored is not None and json.loads(stored) == verdict
    raw.set(key, b"{not json")
    assert cache.get(key) is None  # unreadable: a miss, not an exception
    raw.close()
    assert (cache.hits, cache.misses, cache.errors, cache.skips) == (1, 2, 0, 0)
    assert events == ["miss", "hit", "miss"]
    cache.close()


def test_server_down_is_fast_and_recovers(redis_server: RedisServer) -> None:
    cache = VerdictCache(settings_for(redis_server, retry_after_s=0.5))
    key = cache_key(SHA, MODEL, PIPELINE, PREFIX)
    cache.set(key, {"status": "ok"})
    assert cache.get(key) == {"status": "ok"}
    redis_server.stop()
    start = time.monotonic()
    for i in range(10):
        assert cache.get(key) is None
        cache.set(f"{key}{i}", {"status": "ok"})
    assert time.monotonic() - start < 0.5
    assert cache.errors == 1 and cache.skips == 19  # the breaker: one failure, then no more attempts
    redis_server.start()  # same port, empty data set (no persistence)
    time.sleep(0.6)
    assert cache.get(key) is None  # reachable again: a genuine miss
    cache.set(key, {"status": "no_face"})
    assert cache.get(key) == {"status": "no_face"}
    assert cache.errors == 1  # the pooled connection that died with the old server was retried, not counted
    cache.close()


def test_hung_server_costs_one_timeout_then_the_breaker(redis_server: RedisServer) -> None:
    cache = VerdictCache(settings_for(redis_server, socket_timeout_s=0.2, retry_after_s=0.8))
    key = cache_key(SHA, MODEL, PIPELINE, PREFIX)
    assert cache.get(key) is None  # connected
    redis_server.pause()  # accepts bytes, never answers
    try:
        start = time.monotonic()
        for i in range(10):
            assert cache.get(key) is None
            cache.set(f"{key}{i}", {"status": "ok"})
        elapsed = time.monotonic() - start
        assert elapsed < 0.5, elapsed  # without the breaker: 20 x 0.2 s
        assert cache.errors == 1 and cache.skips == 19
    finally:
        redis_server.resume()
    time.sleep(0.9)
    cache.set(key, {"status": "ok", "score": 0.1})
    assert cache.get(key) == {"status": "ok", "score": 0.1}
    cache.close()


def test_disabled_cache_is_a_no_op() -> None:
    port = free_port()  # nothing listens there
    cache = VerdictCache(CacheSettings(enabled=False, url=f"redis://127.0.0.1:{port}/0"))
    cache.set("k", {"status": "ok"})
    assert cache.get("k") is None
    assert (cache.hits, cache.misses, cache.errors, cache.skips) == (0, 0, 0, 0)


def test_unreachable_from_the_start_never_raises() -> None:
    port = free_port()
    cache = VerdictCache(CacheSettings(url=f"redis://127.0.0.1:{port}/0", socket_timeout_s=0.2, retry_after_s=5))
    start = time.monotonic()
    for _ in range(20):
        assert cache.get("dfmod:verdict:x") is None
    assert time.monotonic() - start < 0.5
    assert cache.errors == 1
