"""Metrics scraped from a running worker on the real stack: verdicts by label, the score histogram, lag."""

from __future__ import annotations

import time
import urllib.request

from harness import Topics, collect, produce
from prometheus_client.parser import text_string_to_metric_families

from worker.core.settings import KafkaSettings
from worker.stream.consumer import EventConsumer

from . import media
from .conftest import WorkerFactory


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_running_worker_exposes_verdicts_scores_lag_and_model(
    bootstrap: str, topics: Topics, start_worker: WorkerFactory
) -> None:
    worker = start_worker()
    sent = [media.event(media.still_png(), content_type="image/png"),
            media.event(media.mosaic_png(), content_type="image/png"),
            media.event(media.corrupt_mp4(), content_type="video/mp4")]
    produce(bootstrap, topics.events, [(k, v) for _, k, v in sent])
    verdicts = collect(bootstrap, topics.verdicts, {i for i, _, _ in sent}, timeout_s=120)
    labels = sorted(v["data"]["label"] for v in verdicts if v["data"]["status"] == "ok")
    assert len(labels) == 2

    deadline = time.monotonic() + 20  # lag is refreshed every 5 s
    while True:
        m = scrape(worker.http_port)
        lag = {s["partition"]: v for s, v in m.get("dfmod_consumer_lag", []) if s["topic"] == topics.events}
        if (len(lag) == 4 and not any(lag.values())) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert lag == {"0": 0.0, "1": 0.0, "2": 0.0, "3": 0.0}, "one worker holds all 4 partitions, all caught up"

    counted = {(s["status"], s["label"], s["code"]): v for s, v in m["dfmod_verdicts_total"]}
    for label in set(labels):
        assert counted[("ok", label, "")] == labels.count(label)
    assert counted[("rejected", "", "decode_failed")] == 1
    assert dict((s["le"], v) for s, v in m["dfmod_media_score_bucket"])["+Inf"] == 2
    assert m["dfmod_media_score_count"][0][1] == 2
    (model, one), = m["dfmod_model_info"]
    assert one == 1 and model["model"] == "deepfake_clip" and model["weights"] == "random-init"
    assert m["dfmod_build_info"][0][1] == 1


def test_consumer_lag_is_what_the_group_has_not_taken_yet(bootstrap: str, topics: Topics) -> None:
    events = [media.event(media.still_png()) for _ in range(6)]
    produce(bootstrap, topics.events, [(k, v) for _, k, v in events])
    settings = KafkaSettings(bootstrap_servers=bootstrap, events_topic=topics.events, group_id=topics.group)
    consumer = EventConsumer(settings)
    try:
        deadline = time.monotonic() + 30
        taken: list[object] = []
        assigned: set[object] = set()
        while len(assigned) < 4 and time.monotonic() < deadline:
            taken += consumer.poll(timeout_ms=200, max_records=1)  # joining may already hand out a record
            for change in consumer.rebalance_events():
                assigned = assigned | set(change.partitions) if change.kind == "assigned" else assigned
        assert len(assigned) == 4
        assert sum(consumer.lag().values()) == 6 - len(taken)
        target = len(taken) + 2
        while len(taken) < target and time.monotonic() < deadline:
            taken += consumer.poll(timeout_ms=200, max_records=target - len(taken))
        assert len(taken) == target
        assert sum(consumer.lag().values()) == 6 - target
    finally:
        consumer.close()
