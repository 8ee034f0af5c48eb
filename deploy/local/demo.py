"""`make demo`: media built from the astronaut portrait (scikit-image data.astronaut()) streams through a worker.

Starts the local stack (unless it is already up), exports the stand-in model if no model is there, starts a
worker, produces events (a still, a short video, one corrupt file, then the still's bytes again, which must
come back cached), prints each verdict as one JSON line and a summary table, and stops what it started.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import REPO, Stack, Topics, WorkerProcess, astronaut_png, collect, export_standin

from worker.cli.demo_media import corrupt, load_rgb, pan_zoom_video
from worker.cli.produce import event_for_file, produce_events
from worker.core.settings import KafkaSettings

DEMO_DIR = REPO / ".demo"
MODEL_REPO = REPO / "triton_models"


def build_media() -> dict[str, Path]:
    DEMO_DIR.mkdir(exist_ok=True)
    still = DEMO_DIR / "astronaut.png"
    still.write_bytes(astronaut_png().read_bytes())
    video = DEMO_DIR / "astronaut_pan.mp4"
    video.write_bytes(pan_zoom_video(load_rgb(still), seconds=3.0, fps=15))
    broken = DEMO_DIR / "corrupt.mp4"
    broken.write_bytes(corrupt(video.read_bytes()))
    return {"still": still, "video": video, "corrupt": broken}


def send(kafka: KafkaSettings, paths: list[Path]) -> dict[str, str]:
    events = [event_for_file(p, "inline", 16 * 1024 * 1024, source="dfmod-demo") for p in paths]
    produce_events(kafka, events)
    return {e.id: p.name for e, p in zip(events, paths, strict=True)}


def summary(verdicts: list[dict], seconds: float) -> str:
    statuses = Counter(v["data"]["status"] for v in verdicts)
    stages: dict[str, list[float]] = {}
    for v in verdicts:
        for stage, ms in v["data"]["timings_ms"].items():
            stages.setdefault(stage, []).append(ms)
    rows = [("events", str(len(verdicts))), ("wall time (s)", f"{seconds:.1f}")]
    rows += [(f"verdicts {s}", str(n)) for s, n in sorted(statuses.items())]
    rows += [("cached", str(sum(v["data"]["cached"] for v in verdicts)))]
    rows += [(f"median ms {s}", f"{statistics.median(ms):.1f}") for s, ms in sorted(stages.items())]
    width = max(len(r[0]) for r in rows)
    line = "+" + "-" * (width + 2) + "+" + "-" * 12 + "+"
    body = "\n".join(f"| {k:<{width}} | {v:>10} |" for k, v in rows)
    return f"{line}\n| {'dfmod demo':<{width}} | {'':>10} |\n{line}\n{body}\n{line}"


def main() -> int:
    started = time.monotonic()
    if not (MODEL_REPO / "deepfake_clip" / "config.pbtxt").exists():
        print("== exporting the stand-in model (tiny random-init CLIP tower) to triton_models/", flush=True)
        export_standin(MODEL_REPO)
    stack = Stack(stack_dir=REPO / ".stack", model_repo=MODEL_REPO)
    was_up = stack.is_up()
    print("== starting Kafka, Redis and Triton" if not was_up else "== stack already up; leaving it up", flush=True)
    conn = stack.up()
    worker: WorkerProcess | None = None
    try:
        bootstrap = conn["DFMOD_KAFKA__BOOTSTRAP_SERVERS"]
        topics = Topics.fresh(bootstrap, prefix="demo")
        env = {**conn, **topics.env()}
        kafka = KafkaSettings(bootstrap_servers=bootstrap, events_topic=topics.events,
                              verdicts_topic=topics.verdicts, dlq_topic=topics.dlq,
                              max_message_bytes=int(conn["DFMOD_KAFKA__MAX_MESSAGE_BYTES"]))
        media = build_media()
        print("== starting a worker", flush=True)
        worker = WorkerProcess(env, DEMO_DIR / "worker.log").start()
        t0 = time.monotonic()
        first = send(kafka, [media["still"], media["video"], media["corrupt"]])
        verdicts = collect(bootstrap, topics.verdicts, set(first), timeout_s=180)
        repeat = send(kafka, [media["still"]])  # same bytes again: must be answered from Redis
        verdicts = collect(bootstrap, topics.verdicts, set(first) | set(repeat), timeout_s=120)
        elapsed = time.monotonic() - t0
        names = {**first, **repeat}
        for v in verdicts:
            print(json.dumps(v), flush=True)
        print(summary(verdicts, elapsed))
        problems = check(verdicts, first, repeat, names)
        for p in problems:
            print(f"DEMO PROBLEM: {p}", file=sys.stderr)
        print(f"== demo finished in {time.monotonic() - started:.1f}s", flush=True)
        return 1 if problems else 0
    finally:
        if worker is not None:
            worker.stop()
        if not was_up:
            stack.down()


def check(verdicts: list[dict], first: dict[str, str], repeat: dict[str, str], names: dict[str, str]) -> list[str]:
    """What the demo promises, checked rather than eyeballed."""
    by_id = {v["id"]: v["data"] for v in verdicts}
    problems = [f"no verdict for {names[i]}" for i in names if i not in by_id]
    for event_id, name in names.items():
        data = by_id.get(event_id)
        if data is None:
            continue
        if name == "corrupt.mp4" and not (data["status"] in ("rejected", "error") and data["error"]):
            problems.append(f"corrupt file answered {data['status']} without an error code")
        if name != "corrupt.mp4" and data["status"] != "ok":
            problems.append(f"{name} answered {data['status']}: {data.get('error')}")
    for event_id in repeat:
        if event_id in by_id and not by_id[event_id]["cached"]:
            problems.append("the repeated upload was not served from the cache")
    return problems


if __name__ == "__main__":
    sys.exit(main())
