"""`make bench`: end-to-end throughput and latency of a real worker on the local stack.

Each configuration gets fresh topics and a fresh worker, the same pre-produced backlog of distinct media
(cache off, so every event costs real work), and is timed from the worker's readiness to the last verdict.
Latency is event-record timestamp to verdict-record timestamp (both stamped on this machine). The baseline
is the same worker with micro-batching off (max batch size 1), measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Stack, Topics, WorkerProcess, astronaut_png, export_standin, produce

from worker.produce import inline_event
from worker.samples import encode_image, load_rgb, pan_zoom_video


def backlog(n_images: int, n_videos: int) -> list[bytes]:
    rgb = load_rgb(astronaut_png())
    images = [encode_image(rgb, fmt="jpeg", quality=40 + (i % 60)) for i in range(n_images)]
    videos = [pan_zoom_video(rgb, seconds=1.0 + 0.05 * i, fps=15) for i in range(n_videos)]
    return images + videos


def _events(media: list[bytes]) -> list[tuple[bytes, bytes]]:
    events = [inline_event(blob, source="bench") for blob in media]
    return [(e.id.encode(), e.model_dump_json(exclude_none=True).encode()) for e in events]


def _timestamps(bootstrap: str, topic: str, want: int, stages: dict[str, list[float]] | None = None) -> dict[str, int]:
    """key -> record timestamp (ms) for `want` records of a topic, read from the beginning."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), group_id=None)
    out: dict[str, int] = {}
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + 900
        while len(out) < want and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=250).values():
                for r in records:
                    out[r.key.decode()] = r.timestamp
                    if stages is not None:
                        for stage, ms in json.loads(r.value)["data"]["timings_ms"].items():
                            stages.setdefault(stage, []).append(ms)
    finally:
        consumer.close()
    if len(out) < want:
        raise RuntimeError(f"{topic}: {len(out)}/{want} records")
    return out


def run_config(conn: dict[str, str], name: str, media: list[bytes], paced: list[bytes], rate_hz: float,
               env: dict[str, str], tmp: Path) -> dict:
    """Throughput: drain a pre-produced backlog. Latency: then send `paced` media open-loop at `rate_hz`."""
    bootstrap = conn["DFMOD_KAFKA__BOOTSTRAP_SERVERS"]
    topics = Topics.fresh(bootstrap, prefix=f"bench-{name.split()[0].replace('=', '').replace('<', '')}")
    produce(bootstrap, topics.events, _events(media))
    worker = WorkerProcess({**conn, **topics.env(), "DFMOD_CACHE__ENABLED": "false", **env}, tmp / f"{name}.log")
    stages: dict[str, list[float]] = {}
    try:
        worker.start()
        ready_wall = time.time()  # the backlog is waiting: throughput counts from here to the last verdict
        done = _timestamps(bootstrap, topics.verdicts, len(media), stages)
        busy = max(done.values()) / 1000.0 - ready_wall
        for key, value in _events(paced):
            produce(bootstrap, topics.events, [(key, value)])
            time.sleep(1.0 / rate_hz)
        sent = _timestamps(bootstrap, topics.events, len(media) + len(paced))
        done = _timestamps(bootstrap, topics.verdicts, len(media) + len(paced))
    finally:
        worker.stop()
    backlog_keys = sorted(sent, key=sent.__getitem__)[: len(media)]
    lat = sorted(done[k] - sent[k] for k in sent if k not in set(backlog_keys))
    return {
        "config": name,
        "events": len(media),
        "events_per_s": len(media) / max(1e-9, busy),
        "p50_ms": statistics.median(lat),
        "p95_ms": lat[int(0.95 * (len(lat) - 1))],
        "p99_ms": lat[int(0.99 * (len(lat) - 1))],
        "stages": {k: statistics.median(v) for k, v in stages.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--paced", type=int, default=20, help="stills sent one by one for the latency figures")
    parser.add_argument("--rate", type=float, default=2.0, help="events/s of the paced (latency) phase")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dfmod-bench-") as tmpdir:
        tmp = Path(tmpdir)
        export_standin(tmp / "models")
        stack = Stack(stack_dir=tmp / "stack", model_repo=tmp / "models")
        try:
            conn = stack.up()
            media = backlog(args.images, args.videos)
            common = {"DFMOD_MEDIA_THREADS": str(args.threads), "DFMOD_MAX_IN_FLIGHT": "32"}
            paced = backlog(args.paced, 0)
            rows = [
                run_config(conn, "batch=1 (baseline)", media, paced, args.rate,
                           {**common, "DFMOD_BATCH__MAX_SIZE": "1"}, tmp),
                run_config(conn, "micro-batch<=32", media, paced, args.rate,
                           {**common, "DFMOD_BATCH__MAX_SIZE": "32"}, tmp),
            ]
        finally:
            stack.down()
    base = rows[0]["events_per_s"]
    print(f"\nthroughput: backlog of {args.images} stills + {args.videos} videos (32 frames each), cache off, "
          f"{args.threads} media threads, tiny random-init model on CPU Triton")
    print(f"latency: {args.paced} stills sent open-loop at {args.rate}/s after the backlog; "
          "event record to verdict record\n")
    header = f"{'config':<22}{'events':>8}{'events/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'x base':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['config']:<22}{r['events']:>8}{r['events_per_s']:>10.2f}{r['p50_ms']:>10.0f}"
              f"{r['p95_ms']:>10.0f}{r['p99_ms']:>10.0f}{r['events_per_s'] / base:>8.2f}")
    print("\nper-stage median ms:")
    names = sorted({s for r in rows for s in r["stages"]})
    print(f"{'config':<22}" + "".join(f"{n:>11}" for n in names))
    for r in rows:
        print(f"{r['config']:<22}" + "".join(f"{r['stages'].get(n, float('nan')):>11.1f}" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
