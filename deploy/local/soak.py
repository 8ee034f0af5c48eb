"""`make soak`: mixed traffic through a real worker with kill -9 and restart cycles; prints what was lost.

Traffic: distinct stills (good), the same bytes again (repeats: cache hits), and bad input (undecodable
media and invalid events: `rejected` verdicts; unparseable records: dead letters). It is produced in
waves; during the first waves the worker is killed with SIGKILL mid-wave and restarted, the last worker
then runs the rest undisturbed, and its resident memory is sampled at its start, middle and end. Every
restart reuses one static group member name, as a Kubernetes pod restarted in place would.

Counts: `lost` = answerable events without a verdict plus unparseable records without a dead letter (must
be 0); `duplicates` = verdicts beyond the first per event id (expected after kills at-least-once; must be 0
with `--exactly-once`, which runs the same traffic and kills through both modes, one after the other, and
prints the cost). Verdicts and dead letters are read `read_committed`, as a downstream consumer should.
Latency: event record timestamp to its first verdict record timestamp, so it includes queueing behind a
wave and the restarts; throughput: answered events per second from the first event to the last verdict.
Not a timed test: a benchmark command that prints a table.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Stack, Topics, WorkerProcess, astronaut_png, export_standin, produce

from worker.cli.demo_media import encode_image, load_rgb


@dataclass
class Traffic:
    records: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    answerable: set[str] = field(default_factory=set)   # ids that must get a verdict
    garbage: set[bytes] = field(default_factory=set)    # raw records that must reach the DLQ
    kinds: dict[str, int] = field(default_factory=dict)


def _event(blob: bytes, event_id: str | None = None) -> tuple[str, bytes]:
    event_id = event_id or str(uuid.uuid4())
    doc = {"specversion": "1.0", "id": event_id, "source": "soak", "type": "media.submitted",
           "data": {"inline": base64.b64encode(blob).decode()}}
    return event_id, json.dumps(doc).encode()


def traffic(n: int, seed: int = 0) -> Traffic:
    """`n` records: 60 % distinct stills, 25 % repeats of earlier stills, 15 % bad input of four kinds."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rgb = load_rgb(astronaut_png())
    out, stills = Traffic(), []
    for i in range(n):
        roll = i % 20
        if roll < 12 or not stills:
            img = rgb.copy()
            img[0, 0] = rng.integers(0, 256, 3, dtype=np.uint8)
            img[-1, -1] = rng.integers(0, 256, 3, dtype=np.uint8)
            blob = encode_image(img, fmt="jpeg", quality=85)
            stills.append(blob)
            kind = "good"
        elif roll < 17:
            blob = stills[int(rng.integers(0, len(stills)))]
            kind = "repeat"
        elif roll == 17:
            blob, kind = b"\xff\xd8\xff\xe0 truncated jpeg" + bytes(64), "bad_media"
        elif roll == 18:
            event_id = str(uuid.uuid4())
            out.records.append((event_id.encode(), json.dumps({"specversion": "1.0", "id": event_id,
                                                                "source": "soak", "data": {}}).encode()))
            out.answerable.add(event_id)
            out.kinds["invalid_event"] = out.kinds.get("invalid_event", 0) + 1
            continue
        else:
            raw = b"\x00not json " + uuid.uuid4().hex.encode()
            out.records.append((b"garbage", raw))
            out.garbage.add(raw)
            out.kinds["unparseable"] = out.kinds.get("unparseable", 0) + 1
            continue
        event_id, value = _event(blob)
        out.records.append((event_id.encode(), value))
        out.answerable.add(event_id)
        out.kinds[kind] = out.kinds.get(kind, 0) + 1
    return out


def _read(bootstrap: str, topic: str, timeout_s: float = 120.0) -> list[tuple[int, bytes]]:
    """(timestamp ms, value) of every committed record of `topic` (up to its last stable offset)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), group_id=None, enable_auto_commit=False,
                             isolation_level="read_committed")
    out: list[tuple[int, bytes]] = []
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)  # read_committed: the last stable offsets
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end offsets within {timeout_s:g} s")
            for records in consumer.poll(timeout_ms=500).values():
                out.extend((r.timestamp, r.value) for r in records)
    finally:
        consumer.close()
    return out


def _answered(bootstrap: str, topics: Topics) -> set[str]:
    return {json.loads(v)["id"] for _, v in _read(bootstrap, topics.verdicts)}


def _wait_answered(bootstrap: str, topics: Topics, want: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    got = 0
    while time.monotonic() < deadline:
        got = len(_answered(bootstrap, topics))
        if got >= want:
            break
        time.sleep(1.0)
    return got


def run_soak(conn: dict[str, str], n_events: int, kills: int, tmp: Path, threads: int = 2,
             timeout_s: float = 1800, exactly_once: bool = False) -> dict[str, float]:
    bootstrap = conn["DFMOD_KAFKA__BOOTSTRAP_SERVERS"]
    topics = Topics.fresh(bootstrap, prefix="soak")
    load = traffic(n_events)
    env = {**conn, **topics.env(), "DFMOD_MEDIA_THREADS": str(threads), "DFMOD_LOG_LEVEL": "WARNING",
           # Static membership: each restart takes the partitions back at once instead of waiting for the
           # dead member's session to time out (kafka.group_instance_id). In exactly-once mode the same name
           # makes the transactional.id, so a restart also aborts the transaction its killed predecessor left.
           "DFMOD_KAFKA__GROUP_INSTANCE_ID": f"{topics.group}-pod-0",
           "DFMOD_KAFKA__EXACTLY_ONCE": "true" if exactly_once else "false",
           # Each mode its own cache: the modes replay the same traffic, and the second must not be answered
           # from the first one's verdicts.
           "DFMOD_CACHE__KEY_PREFIX": f"dfmod:verdict:{topics.group}:"}
    mode = "exactly-once" if exactly_once else "at-least-once"
    tmp.mkdir(parents=True, exist_ok=True)
    waves = kills + 2  # one wave per killed worker, then two for the last one (its middle and end)
    size = -(-len(load.records) // waves)
    wave_records = [load.records[i:i + size] for i in range(0, len(load.records), size)]
    answerable_before = 0
    rss: dict[str, float] = {}
    workers: list[WorkerProcess] = []
    try:
        for k in range(kills):
            worker = WorkerProcess(env, tmp / f"soak-worker-{k}.log").start()
            workers.append(worker)
            produce(bootstrap, topics.events, wave_records[k])
            answerable_before += sum(1 for key, _ in wave_records[k] if key != b"garbage")
            # Kill mid-wave: after about half of it is answered, with work in flight.
            _wait_answered(bootstrap, topics, answerable_before - len(wave_records[k]) // 2, timeout_s)
            worker.kill()
        last = WorkerProcess(env, tmp / "soak-worker-last.log").start()
        workers.append(last)
        rss["start"] = last.rss_mb()
        for wave in wave_records[kills:]:
            produce(bootstrap, topics.events, wave)
            answerable_before += sum(1 for key, _ in wave if key != b"garbage")
            _wait_answered(bootstrap, topics, answerable_before, timeout_s)
            rss["middle" if "middle" not in rss else "end"] = last.rss_mb()
        time.sleep(3)  # DLQ records and late duplicates
        last.stop()
    finally:
        for w in workers:
            w.kill()
    rss.setdefault("end", rss.get("middle", 0.0))

    verdicts = [(ts, json.loads(v)) for ts, v in _read(bootstrap, topics.verdicts)]
    dlq = [json.loads(v) for _, v in _read(bootstrap, topics.dlq)]
    sent = {json.loads(v)["id"] if not v.startswith(b"\x00") else None: ts
            for ts, v in _read(bootstrap, topics.events)}
    first: dict[str, int] = {}
    for ts, v in verdicts:
        first[v["id"]] = min(ts, first.get(v["id"], ts))
    dlq_raw = {base64.b64decode(d["data"]["value_b64"]) for d in dlq}
    lost = len(load.answerable - set(first)) + len(load.garbage - dlq_raw)
    latency = sorted(first[i] - sent[i] for i in first if i in sent)
    span_s = (max(first.values()) - min(sent.values())) / 1000 if first and sent else float("nan")
    return {
        "mode": mode,
        "events": len(load.records),
        "verdicts": len(first),
        "dlq": len(dlq),
        "lost": lost,
        "duplicates": len(verdicts) - len(first),
        "errors": sum(1 for _, v in verdicts if v["data"]["status"] == "error"),
        "p50_ms": statistics.median(latency) if latency else float("nan"),
        "p95_ms": latency[int(0.95 * (len(latency) - 1))] if latency else float("nan"),
        "events_per_s": len(first) / span_s if span_s > 0 else float("nan"),
        "rss_start_mb": rss.get("start", 0.0),
        "rss_middle_mb": rss.get("middle", 0.0),
        "rss_end_mb": rss.get("end", 0.0),
        "kills": kills,
        **{f"kind_{k}": v for k, v in load.kinds.items()},
    }


COLUMNS = ["mode", "events", "verdicts", "dlq", "lost", "duplicates", "errors", "p50_ms", "p95_ms",
           "events_per_s", "rss_start_mb", "rss_middle_mb", "rss_end_mb"]


def _cell(value: object) -> str:
    if isinstance(value, str):
        return f"{value:>14}"
    if isinstance(value, float):
        return f"{value:>14.1f}" if abs(value) < 100 else f"{value:>14.0f}"
    return f"{value:>14}"


def print_table(*rows: dict[str, float]) -> None:
    """One row per mode; with two, a last row of the second's cost against the first's (ratio)."""
    row = rows[0]
    print(f"\nsoak: {row['kills']} kill -9 + restart cycles per mode; traffic "
          + ", ".join(f"{k.removeprefix('kind_')}={int(v)}" for k, v in row.items() if k.startswith("kind_")))
    print("RSS of the last worker (after the kills) at its start, middle and end; latency: event to first verdict\n")
    print("".join(f"{c:>14}" for c in COLUMNS))
    for r in rows:
        print("".join(_cell(r[c]) for c in COLUMNS))
    if len(rows) == 2:
        base, other = rows
        ratio = {c: other[c] / base[c] if base[c] else float("nan") for c in ("p50_ms", "p95_ms", "events_per_s")}
        print(f"\n{other['mode']} / {base['mode']}: p50 x{ratio['p50_ms']:.2f}, p95 x{ratio['p95_ms']:.2f}, "
              f"throughput x{ratio['events_per_s']:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="media threads of the worker")
    parser.add_argument("--reduced", action="store_true", help="a tiny run (60 events, 1 kill) to check it works")
    parser.add_argument("--exactly-once", action="store_true",
                        help="run at-least-once, then exactly-once (kafka.exactly_once) on the same traffic")
    args = parser.parse_args()
    events, kills = (60, 1) if args.reduced else (args.events, args.kills)
    modes = [False, True] if args.exactly_once else [False]
    with tempfile.TemporaryDirectory(prefix="dfmod-soak-") as tmpdir:
        tmp = Path(tmpdir)
        export_standin(tmp / "models")
        stack = Stack(stack_dir=tmp / "stack", model_repo=tmp / "models")
        try:
            conn = stack.up()
            rows = [run_soak(conn, events, kills, tmp / ("eos" if eos else "alo"), threads=args.threads,
                             exactly_once=eos) for eos in modes]
        finally:
            stack.down()
    print_table(*rows)
    lost = any(r["lost"] for r in rows)
    duplicated = any(r["duplicates"] for r in rows if r["mode"] == "exactly-once")
    return 1 if lost or duplicated else 0


if __name__ == "__main__":
    sys.exit(main())
