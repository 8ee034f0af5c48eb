"""Near-duplicates on the real stack: a re-encoded copy of a judged video is answered from its verdict with no
Triton call; a distinct video is scored as usual; a hash-list entry is reported in the verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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


def test_a_hash_list_match_is_reported(
    bootstrap: str, topics: Topics, start_worker: WorkerFactory, conn: dict[str, str], tmp_path: Path
) -> None:
    from worker.media.pdq import luma_of, pdq_hash

    prefix = {"DFMOD_CACHE__KEY_PREFIX": f"dfmod:verdict:{topics.events}:"}  # the worker's (conftest)
    listed = pdq_hash(luma_of(media.load_rgb(media.ASTRONAUT))).hex
    csv = tmp_path / "known.csv"
    csv.write_text(f"pdq,label,list,source\n{listed},fake,known-fakes,integration test\n")
    done = subprocess.run([sys.executable, "-m", "worker.cli.main", "hashlist", "import", str(csv)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **conn, **prefix})
    assert done.returncode == 0, done.stderr
    start_worker()  # lists: annotate (the default)
    event_id, key, value = media.event(media.still_jpeg(quality=60), content_type="image/jpeg")
    produce(bootstrap, topics.events, [(key, value)])
    data = next(r for r in collect(bootstrap, topics.verdicts, {event_id}, timeout_s=120) if r["id"] == event_id)
    match = data["data"]["match"]
    assert match is not None and match["list"] == "known-fakes" and match["label"] == "fake", data
    assert match["source"] == "integration test" and match["distance"] <= 31
    assert data["data"]["status"] == "ok" and data["data"]["score"] is not None  # annotated, still scored
