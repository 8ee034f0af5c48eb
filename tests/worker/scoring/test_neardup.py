"""The near-duplicate index on a real redis-server, and the pipeline answering from it (fake inference)."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
import redis
from skimage import data

from worker.cli.demo_media import encode_image, pan_zoom_video
from worker.core.contracts import MediaData
from worker.core.settings import BatchSettings, NearDuplicateSettings, WorkerSettings
from worker.core.version import pipeline_version
from worker.infer.batcher import MicroBatcher
from worker.infer.fake import FAKE_MODEL, FakeBackend
from worker.scoring.cache import VerdictCache
from worker.scoring.neardup import NearDuplicateIndex
from worker.scoring.pipeline import MediaPipeline

from ..redis_server import RedisServer, settings_for
from .test_similar import flipped, media, random_hash

PIPELINE = pipeline_version("exact")


def index_on(server: RedisServer, **near: object) -> NearDuplicateIndex:
    return NearDuplicateIndex.for_model(VerdictCache(settings_for(server)), NearDuplicateSettings(**near), FAKE_MODEL,
                                        PIPELINE)


def test_a_judged_media_is_found_again_and_a_distinct_one_is_not(redis_server: RedisServer) -> None:
    index = index_on(redis_server)
    frames = [random_hash() for _ in range(8)]
    index.add("a" * 64, media(frames))
    near = index.lookup(media([flipped(f, 20) for f in frames]))
    assert near is not None and near.media_sha256 == "a" * 64 and near.distance == 20
    assert index.lookup(media([random_hash() for _ in range(8)])) is None
    assert index.lookup(media(frames), exclude="a" * 64) is None  # its own upload is not its own duplicate


def test_another_model_digest_does_not_see_the_entries(redis_server: RedisServer) -> None:
    frames = [random_hash()]
    index_on(redis_server).add("a" * 64, media(frames))
    other = NearDuplicateIndex.for_model(VerdictCache(settings_for(redis_server)), NearDuplicateSettings(),
                                         FAKE_MODEL.model_copy(update={"version": "other"}), PIPELINE)
    assert other.lookup(media(frames)) is None


def test_an_expired_record_is_skipped(redis_server: RedisServer) -> None:
    index = index_on(redis_server)
    frames = [random_hash()]
    index.add("a" * 64, media(frames))
    client = redis.Redis.from_url(redis_server.url)
    client.delete(*client.keys("*:m:*"))  # the record expired, its band members not yet
    assert index.lookup(media(frames)) is None


def test_redis_down_is_a_quick_miss_never_an_error(redis_server: RedisServer) -> None:
    index = index_on(redis_server)
    redis_server.stop()
    started = time.monotonic()
    index.add("a" * 64, media([random_hash()]))
    assert index.lookup(media([random_hash()])) is None
    assert time.monotonic() - started < 2.0


# -- the pipeline --------------------------------------------------------------------------------------------

def pipeline(models_dir: Path, server: RedisServer, mode: str) -> tuple[MediaPipeline, FakeBackend]:
    settings = WorkerSettings()
    settings.faces.weights_dir = models_dir
    settings.cache = settings_for(server)
    settings.near_duplicate = NearDuplicateSettings(mode=mode)  # type: ignore[arg-type]
    backend = FakeBackend()
    cache = VerdictCache(settings.cache)
    index = NearDuplicateIndex.for_model(cache, settings.near_duplicate, FAKE_MODEL, PIPELINE)
    batcher = MicroBatcher(backend, BatchSettings(max_size=8, max_delay_ms=2))
    return MediaPipeline(settings, batcher, FAKE_MODEL, cache=cache, near_index=index), backend


def inline(blob: bytes) -> MediaData:
    return MediaData(inline=base64.b64encode(blob).decode())


@pytest.mark.parametrize("mode", ["on", "tag_only"])
def test_a_reencoded_still_is_a_near_duplicate(models_dir: Path, redis_server: RedisServer, mode: str) -> None:
    rgb = data.astronaut()
    scoring, backend = pipeline(models_dir, redis_server, mode)
    first = scoring.process(inline(encode_image(rgb, fmt="png")))
    assert first.status == "ok" and len(first.phash) == 1 and first.phash[0].quality >= 50
    assert first.near_duplicate is None and len(backend.batch_sizes) == 1
    copy = scoring.process(inline(encode_image(rgb, fmt="jpeg", quality=50)))
    near = copy.near_duplicate
    assert near is not None and near.media_sha256 == first.media_sha256 and near.distance <= 31
    assert copy.media_sha256 != first.media_sha256 and copy.phash[0].pdq != ""
    if mode == "on":  # answered from the earlier verdict: no detection, no inference
        assert near.answered and copy.cached and copy.score == first.score
        assert len(backend.batch_sizes) == 1 and "faces" not in copy.timings_ms
    else:
        assert not near.answered and not copy.cached and len(backend.batch_sizes) == 2


def test_a_distinct_video_is_scored_and_carries_its_frame_hashes(models_dir: Path, redis_server: RedisServer) -> None:
    scoring, _ = pipeline(models_dir, redis_server, "on")
    scoring.process(inline(pan_zoom_video(data.astronaut(), seconds=1.0, fps=10)))
    other = scoring.process(inline(pan_zoom_video(data.coffee(), seconds=1.0, fps=10)))
    assert other.near_duplicate is None and not other.cached
    assert len(other.phash) == other.frames_sampled == 10
    assert [f.frame_index for f in other.phash] == list(range(10))
