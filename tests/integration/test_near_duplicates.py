"""Near-duplicates on the real stack: a re-encoded copy of a judged video is answered from its verdict with no
Triton call; a distinct video is scored as usual."""

from __future__ import annotations

import json
import time
import urllib.request

from harness import Topics, collect, produce

from . import media
from .conftest import WorkerFactory


def triton_inferences(conn: dict[str, str]) -> int:
    """Requests Triton has answered for the model (its statistics extension), cumulative."""
    url = f"http://127.0.0.1:{conn['TRITON_HTTP_PORT']}/v2/models/deepfake_clip/stats"
    with urllib.request.urlopen(url, timeout=5) as r:
        stats = json.load(r)
    return sum(int(m["inference_stats"]["success"]["count"]) for m in stats["model_stats"])


def counter(metrics: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def verdict_of(bootstrap: str, topics: Topics, blob: bytes) -> dict:
    event_id, key, value = media.event(blob, content_type="video/mp4")
    produce(bootstrap, topics.events, [(key, value)])
    found = [r for r in collect(bootstrap, topics.verdicts, {event_id}, timeout_s=120) if r["id"] == event_id]
    assert found, f"no verdict for {event_id}"
    return found[0]["data"]


def test_a_reencoded_video_is_answered_without_inference_and_a_distinct_one_is_not(
    bootstrap: str, topics: Topics, start_worker: WorkerFactory, conn: dict[str, str]
) -> None:
    worker = start_worker(DFMOD_NEAR_DUPLICATE__MODE="on")
    original = media.video_mp4()
    first = verdict_of(bootstrap, topics, original)
    assert first["status"] == "ok" and not first["cached"] and first["near_duplicate"] is None
    assert len(first["phash"]) == first["frames_sampled"] == 32
    assert all(len(f["pdq"]) == 64 and 0 <= f["quality"] <= 100 for f in first["phash"])

    batches, inferences = counter(worker.metrics(), "dfmod_batch_size_count"), triton_inferences(conn)
    copy = verdict_of(bootstrap, topics, media.reencoded_mp4(original))
    near = copy["near_duplicate"]
    assert near is not None and near["answered"], copy
    assert near["media_sha256"] == first["media_sha256"] != copy["media_sha256"]
    assert near["distance"] <= 31 and near["match_pct"] >= 80 and near["query_match_pct"] >= 80
    assert copy["cached"] and copy["score"] == first["score"] and copy["label"] == first["label"]
    assert "infer" not in copy["timings_ms"] and "faces" not in copy["timings_ms"]
    time.sleep(1.0)  # let Triton's counters settle
    assert counter(worker.metrics(), "dfmod_batch_size_count") == batches
    assert triton_inferences(conn) == inferences, "the copy reached Triton"

    distinct = verdict_of(bootstrap, topics, media.other_video_mp4())
    assert distinct["near_duplicate"] is None and not distinct["cached"] and len(distinct["phash"]) == 32
    body = worker.metrics()
    assert 'dfmod_near_duplicates_total{outcome="answered"} 1.0' in body
    assert 'dfmod_near_duplicates_total{outcome="miss"}' in body
