"""Hash lists on a real redis-server: CSV, import, look-up, and the pipeline annotating or deciding with them."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from skimage import data

from worker.cli.demo_media import encode_image
from worker.core.contracts import MediaData
from worker.core.settings import BatchSettings, NearDuplicateSettings, WorkerSettings
from worker.infer.batcher import MicroBatcher
from worker.infer.fake import FAKE_MODEL, FakeBackend
from worker.media.pdq import luma_of, pdq_hash
from worker.scoring.cache import VerdictCache
from worker.scoring.hashlist import HashLists, ListEntry, read_csv, write_csv
from worker.scoring.pipeline import MediaPipeline

from ..redis_server import RedisServer, settings_for
from .test_similar import flipped, media, random_hash

HEADER = "pdq,label,list,source\n"


def test_csv_round_trips_and_bad_rows_are_named() -> None:
    entries = [ListEntry("known", "fake", "partner A", (random_hash().hex(),)),
               ListEntry("known", "real", "", (random_hash().hex(), random_hash().hex()))]
    assert list(read_csv(write_csv(entries))) == entries
    with pytest.raises(ValueError, match="row 2: label must be fake or real"):
        list(read_csv(HEADER + f"{'ab' * 32},maybe,known,x\n"))
    with pytest.raises(ValueError, match="row 3: a PDQ hash is 64 hex digits"):
        list(read_csv(HEADER + f"{'ab' * 32},fake,known,x\nabcd,fake,known,x\n"))
    with pytest.raises(ValueError, match="header lacks label"):
        list(read_csv("pdq,list\n"))


def test_an_imported_entry_is_matched_within_the_distance(redis_server: RedisServer) -> None:
    lists = HashLists(VerdictCache(settings_for(redis_server)), NearDuplicateSettings())
    known = random_hash()
    entry = ListEntry("known-fakes", "fake", "partner A", (known.hex(),))
    assert lists.add(entry) and lists.add(entry)  # idempotent: the id is the list and the hashes
    found = lists.lookup(media([flipped(known, 12)]))
    assert found is not None and (found.list, found.label, found.source, found.distance) == \
        ("known-fakes", "fake", "partner A", 12)
    assert lists.lookup(media([random_hash()])) is None
    assert lists.stats() == {("known-fakes", "fake"): 1}
    assert [e.pdq for e in lists.entries("known-fakes")] == [(known.hex(),)] and not list(lists.entries("other"))


def test_redis_down_means_no_match_and_entries_say_so(redis_server: RedisServer) -> None:
    lists = HashLists(VerdictCache(settings_for(redis_server)), NearDuplicateSettings())
    redis_server.stop()
    assert lists.lookup(media([random_hash()])) is None
    with pytest.raises(RuntimeError, match="cannot read the hash lists"):
        list(lists.entries())


@pytest.mark.parametrize("mode", ["annotate", "decide"])
def test_the_pipeline_reports_or_decides_a_list_match(models_dir: Path, redis_server: RedisServer,
                                                      mode: str) -> None:
    settings = WorkerSettings()
    settings.faces.weights_dir = models_dir
    settings.cache = settings_for(redis_server)
    settings.near_duplicate = NearDuplicateSettings(lists=mode)  # type: ignore[arg-type]
    cache = VerdictCache(settings.cache)
    lists = HashLists(cache, settings.near_duplicate)
    rgb = data.astronaut()
    lists.add(ListEntry("known-fakes", "fake", "test", (pdq_hash(luma_of(rgb)).hex,)))
    backend = FakeBackend()
    pipeline = MediaPipeline(settings, MicroBatcher(backend, BatchSettings(max_size=8, max_delay_ms=2)), FAKE_MODEL,
                             cache=cache, hash_lists=lists)
    blob = encode_image(rgb, fmt="jpeg", quality=60)
    verdict = pipeline.process(MediaData(inline=base64.b64encode(blob).decode()))
    assert verdict.match is not None and verdict.match.list == "known-fakes" and verdict.match.distance <= 31
    if mode == "decide":
        assert verdict.status == "ok" and verdict.label == "fake" and verdict.score is None
        assert not backend.batch_sizes and "faces" not in verdict.timings_ms
    else:
        assert verdict.score is not None and len(backend.batch_sizes) == 1
