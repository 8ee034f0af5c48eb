"""`make bench`: the performance dashboard. One run prints every figure a deployment is sized from.

1. CPU seconds per video per stage (decode, faces, align), measured in this process on generated H.264
   (480p/720p/1080p, 10 s and 300 s, 2 s GOP, B-frames, a moving real face), with decode twice: the
   sequential pass (the old sampler, the baseline) and the seeking sampler, in the same run.
2. On the local stack (real Kafka, Redis, Triton serving `--model`): the bare model's faces/s (Triton
   driven directly at its best batch size), a naive one-at-a-time decode->detect->align->infer loop, and
   the real `dfmod worker` draining a backlog of stills (one face each): faces/s, the two ratios, the mean
   batch it sends, its own CPU per still and per 720p 10 s video (the whole process, from its /proc
   counters), a cached repeat of a 2.6 MB inline video (event record -> verdict record, p50/p95), and its
   RSS at start, after the stills and at the end.
3. Sizing: vCPUs of workers per GPU for each media mix, from the figures above and an assumed GPU rate.

Timings are wall/CPU on whatever machine runs it; on a shared machine say so next to the figures.
`--quick` runs every part with a few small items (CI runs it so the dashboard cannot rot).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_media import VideoSpec, distinct_stills, repeated, video
from harness import BIN, Stack, Topics, WorkerProcess, astronaut_png, produce, read_env_file

from worker.cli.demo_media import load_rgb
from worker.cli.produce import inline_event
from worker.core.settings import DecodeSettings, FaceSettings
from worker.core.types import DecodedMedia, Detection, FaceDetector
from worker.faces.align import align_face, landmarks_from_box
from worker.faces.extract import extract_faces
from worker.faces.factory import create_detector
from worker.media.decode import decode_media

#: The issue's planning figure for one H200 running ViT-L/14: an assumption, not a measurement of ours.
GPU_FACES_PER_S = 3000.0
FACES_PER_VIDEO = 32
#: Requests the bare-model measurement keeps in flight (the worker keeps up to triton.max_in_flight = 4).
BARE_CONCURRENCY = 2
CLK_TCK = os.sysconf("SC_CLK_TCK")
WORKER_VIDEO = VideoSpec("720p", 10)
CACHED_VIDEO = VideoSpec("720p", 10, noise=12)  # a fixed background texture makes it ~2.6 MB


@dataclass(frozen=True)
class Plan:
    """What one run measures; `quick` shrinks every part to a few small items."""

    videos: list[VideoSpec]
    repeats: int               # decode/faces repetitions per clip (median taken)
    stills: int                # worker/naive backlog of stills
    worker_videos: int         # 720p 10 s videos through the worker, for its CPU per video
    cached_repeats: int
    bare_faces: int            # faces per batch size for the bare model
    limit_repeats: int = 0     # >0: also a 720p clip repeated to this many times 10 s (the duration limit)
    idle_s: float = 12.0       # the worker's RSS is read again after this long idle (past one malloc_trim)
    worker_video: VideoSpec = WORKER_VIDEO
    cached_video: VideoSpec = CACHED_VIDEO

    @classmethod
    def full(cls) -> Plan:
        clips = [VideoSpec(s, d) for d in (10, 300) for s in ("480p", "720p", "1080p")]
        return cls(videos=[*clips[:3], VideoSpec("720p", 60), *clips[3:]], repeats=3, stills=200,
                   worker_videos=12, cached_repeats=40, bare_faces=320, limit_repeats=360)

    @classmethod
    def quick(cls) -> Plan:
        return cls(videos=[VideoSpec(s, d) for d in (2, 8) for s in ("480p", "720p", "1080p")], repeats=1,
                   stills=6, worker_videos=2, cached_repeats=3, bare_faces=8,
                   worker_video=VideoSpec("480p", 2), idle_s=0.0)


# -- 1. CPU per stage, in this process ------------------------------------------------------------------


@contextmanager
def cpu_timer(into: list[float]) -> Iterator[None]:
    start = time.process_time()  # all threads of this process: FFmpeg's and OpenCV's included
    yield
    into.append(time.process_time() - start)


@dataclass
class StageRow:
    name: str
    mb: float
    decode_seq: float
    decode_seek: float
    faces: float
    align: float
    faces_found: int
    sequential: bool = True    # False: the sequential pass was not run (it would pass the decode timeout)
    decode_keyframes: float = float("nan")  # DecodeSettings.sampling="keyframes" (approximate, opt-in)

    @property
    def total(self) -> float:
        return self.decode_seek + self.faces + self.align

    @property
    def total_keyframes(self) -> float:
        return self.decode_keyframes + self.faces + self.align


def _same_frames(a: DecodedMedia, b: DecodedMedia) -> bool:
    import numpy as np

    return [f.index for f in a.frames] == [f.index for f in b.frames] and all(
        np.array_equal(x.rgb, y.rgb) for x, y in zip(a.frames, b.frames, strict=True))


def stage_costs(plan: Plan, media_dir: Path, faces: FaceSettings, log: Callable[[str], None]) -> list[StageRow]:
    face = load_rgb(astronaut_png())
    detector: FaceDetector = create_detector(faces)
    detector.detect(face)  # warm-up: the first call pays for loading the network
    rows = []
    for spec in plan.videos:
        log(f"  {spec.name}: generating / loading")
        blob = video(face, spec, media_dir)
        repeats = plan.repeats if spec.seconds <= 60 else 1  # the 300 s sequential pass is the slow baseline
        rows.append(_measure(spec.name, blob, repeats, detector, faces, sequential=True))
        log(f"  {spec.name}: decode {rows[-1].decode_seq:.2f} -> {rows[-1].decode_seek:.2f} CPU s")
    if plan.limit_repeats:
        name = f"720p {plan.limit_repeats * 10} s"
        log(f"  {name}: a 720p 10 s clip repeated")
        blob = repeated(video(face, VideoSpec("720p", 10), media_dir), plan.limit_repeats)
        rows.append(_measure(name, blob, 1, detector, faces, sequential=False))
    return rows


def _measure(name: str, blob: bytes, repeats: int, detector: FaceDetector, faces: FaceSettings,
             sequential: bool) -> StageRow:
    seq: list[float] = []
    seek: list[float] = []
    keyframes: list[float] = []
    detect: list[float] = []
    align: list[float] = []
    found: list[tuple[Any, Detection]] = []
    for _ in range(repeats):
        with cpu_timer(seek):
            seeking = decode_media(blob, DecodeSettings(seek=True))
        with cpu_timer(keyframes):
            decode_media(blob, DecodeSettings(seek=True, sampling="keyframes"))
        if sequential:
            with cpu_timer(seq):
                reference = decode_media(blob, DecodeSettings(seek=False))
            if not _same_frames(reference, seeking):
                raise RuntimeError(f"{name}: the seeking sampler returned other frames than the sequential pass")
        found = []
        with cpu_timer(detect):
            for frame in seeking.frames:  # `rgb` converts the decoder's pixels on each read: once here
                rgb = frame.rgb
                found.extend((rgb, d) for d in detector.detect(rgb)[: faces.max_faces_per_frame])
        with cpu_timer(align):
            for rgb, d in found:
                points = d.landmarks if d.landmarks is not None else landmarks_from_box(d.box)
                align_face(rgb, points, faces.crop_size, faces.crop_scale)
    return StageRow(name, len(blob) / 1e6, statistics.median(seq) if seq else float("nan"),
                    statistics.median(seek), statistics.median(detect), statistics.median(align), len(found),
                    sequential=sequential, decode_keyframes=statistics.median(keyframes))


# -- 2. On the local stack ------------------------------------------------------------------------------


def export_model(arch: str, out: Path) -> None:
    """A random-init detector of `arch`, exported with the real export code (same graph as a trained one)."""
    subprocess.run([str(BIN / "dfmod-train"), "export", "--arch", arch, "--weights", "random-init",
                    "--out", str(out), "--backend", "python"], check=True, timeout=1800)


def _triton(conn: dict[str, str]) -> Any:
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(url=conn["DFMOD_TRITON__URL"])


def _infer(client: Any, faces: Any, model: str = "deepfake_clip") -> Any:
    import tritonclient.grpc as grpcclient

    from worker.infer.base import INPUT_NAME, OUTPUT_FAKE_PROB

    inp = grpcclient.InferInput(INPUT_NAME, list(faces.shape), "UINT8")
    inp.set_data_from_numpy(faces)
    result = client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput(OUTPUT_FAKE_PROB)])
    return result.as_numpy(OUTPUT_FAKE_PROB)


def bare_model(conn: dict[str, str], faces_per_size: int) -> dict[int, float]:
    """Faces/s of the served model alone, per batch size: random 224x224 crops, about `faces_per_size` faces
    (at least 3 requests) per size, from `BARE_CONCURRENCY` clients at once so the server is never idle
    between a response and the next request."""
    import numpy as np

    probe = _triton(conn)
    top = int(probe.get_model_config("deepfake_clip", as_json=True)["config"].get("max_batch_size", 32))
    probe.close()
    sizes = sorted({b for b in (1, 8, 16, 32, 64) if b <= top} | {min(top, 64)})
    clients = [_triton(conn) for _ in range(BARE_CONCURRENCY)]
    rng = np.random.default_rng(0)
    out = {}
    with ThreadPoolExecutor(BARE_CONCURRENCY) as pool:
        for size in sizes:
            faces = rng.integers(0, 256, (size, 224, 224, 3), dtype=np.uint8)
            list(pool.map(_infer, clients, [faces] * len(clients)))  # warm-up
            requests = max(3, -(-faces_per_size // (size * BARE_CONCURRENCY)))

            def drive(client: Any, faces: Any = faces, requests: int = requests) -> None:
                for _ in range(requests):
                    _infer(client, faces)

            start = time.perf_counter()
            list(pool.map(drive, clients))
            out[size] = size * requests * BARE_CONCURRENCY / (time.perf_counter() - start)
    for client in clients:
        client.close()
    return out


def naive_loop(conn: dict[str, str], stills: list[bytes], faces: FaceSettings) -> float:
    """Faces/s of decode -> detect -> align -> infer, one still after the other, nothing overlapped."""
    import numpy as np

    client = _triton(conn)
    detector = create_detector(faces)
    count = 0
    start = time.perf_counter()
    for blob in stills:
        media = decode_media(blob, DecodeSettings())
        crops = [c.crop for c in extract_faces(media.frames, detector, faces)]  # the worker's faces stage
        if crops:
            _infer(client, np.stack(crops))
            count += len(crops)
    elapsed = time.perf_counter() - start
    client.close()
    return count / elapsed


def _records(bootstrap: str, topic: str, want: int, timeout_s: float = 1800) -> dict[str, tuple[int, dict]]:
    """key -> (record timestamp ms, value) for `want` records of a topic, read from the beginning."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), group_id=None, enable_auto_commit=False,
                             fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=32 * 1024 * 1024)
    out: dict[str, tuple[int, dict]] = {}
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while len(out) < want and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=250).values():
                for r in records:
                    out[r.key.decode()] = (r.timestamp, json.loads(r.value) if topic.endswith("verdicts") else {})
    finally:
        consumer.close()
    if len(out) < want:
        raise RuntimeError(f"{topic}: {len(out)}/{want} records")
    return out


def _events(media: list[bytes]) -> list[tuple[bytes, bytes]]:
    events = [inline_event(blob, source="bench") for blob in media]
    return [(e.id.encode(), e.model_dump_json(exclude_none=True).encode()) for e in events]


@dataclass
class ProcStat:
    """CPU seconds and RSS of a process, from /proc."""

    pid: int

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def _batch_mean(metrics: str) -> float:
    total = count = 0.0
    for line in metrics.splitlines():
        if line.startswith("dfmod_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("dfmod_batch_size_count"):
            count = float(line.split()[-1])
    return total / count if count else float("nan")


def _triton_counters(conn: dict[str, str]) -> dict[str, float]:
    """Triton's own cumulative counters for the model (Prometheus text on its metrics port); {} if unreadable."""
    import urllib.request

    port = conn.get("TRITON_METRICS_PORT")
    if not port:
        return {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name in ("nv_inference_count", "nv_inference_exec_count", "nv_inference_request_success",
                    "nv_inference_compute_infer_duration_us") and 'model="deepfake_clip"' in rest:
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


@dataclass
class WorkerFigures:
    faces_per_s: float = 0.0
    faces: int = 0
    mean_batch: float = 0.0
    triton_batch: float = float("nan")   # faces per model execution, after Triton's own dynamic batching
    model_busy: float = float("nan")     # share of the stills phase the model spent computing
    cpu_per_still: float = 0.0
    cpu_per_video: float = 0.0
    cached_ms: list[float] = field(default_factory=list)
    cached_ack_ms: list[float] = field(default_factory=list)    # producer send -> broker ack (the producer's part)
    cached_after_ack_ms: list[float] = field(default_factory=list)  # broker ack -> verdict record (the worker's part)
    cached_stage_ms: list[float] = field(default_factory=list)  # the worker's own stages (verdict timings_ms)
    cached_mb: float = 0.0
    rss_mb: dict[str, float] = field(default_factory=dict)
    rss_stills: list[float] = field(default_factory=list)  # sampled through the stills phase's last three quarters


class RssSampler:
    """RSS of a process every `period_s` on a thread: the phases' spread, not only their end points."""

    def __init__(self, proc: ProcStat, period_s: float = 0.25) -> None:
        self.proc, self.period_s = proc, period_s
        self.samples: list[tuple[float, float]] = []  # (monotonic s, MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.samples.append((time.monotonic(), self.proc.rss_mb()))
            except OSError:
                return

    def between(self, start: float, end: float) -> list[float]:
        return [mb for t, mb in self.samples if start <= t <= end]


def worker_run(conn: dict[str, str], plan: Plan, stills: list[bytes], media_dir: Path, tmp: Path,
               log: Callable[[str], None]) -> WorkerFigures:
    """One worker (defaults, cache on), three phases on its own topics: stills, videos, cached repeats."""
    bootstrap = conn["DFMOD_KAFKA__BOOTSTRAP_SERVERS"]
    face = load_rgb(astronaut_png())
    clip = video(face, plan.worker_video, media_dir)
    # distinct bytes (so the cache misses), same pictures: a trailing mp4 `free` box with a counter
    videos = [clip + (16).to_bytes(4, "big") + b"free" + i.to_bytes(8, "big") for i in range(plan.worker_videos)]
    cached = video(face, plan.cached_video, media_dir)
    topics = Topics.fresh(bootstrap, prefix="bench")
    worker = WorkerProcess({**conn, **topics.env()}, tmp / "worker.log")
    fig = WorkerFigures(cached_mb=len(cached) / 1e6)
    closing = ExitStack()
    try:
        worker.start()
        assert worker.proc is not None
        proc = ProcStat(worker.proc.pid)
        sampler = closing.enter_context(RssSampler(proc))
        fig.rss_mb["ready"] = proc.rss_mb()
        cpu0 = proc.cpu_s()
        triton0 = _triton_counters(conn)
        # the worker is ready and idle: from the first event record to the last verdict record is its work
        phase_start = time.monotonic()
        produce(bootstrap, topics.events, _events(stills))
        sent = _records(bootstrap, topics.events, len(stills))
        done = _records(bootstrap, topics.verdicts, len(stills))
        phase_end = time.monotonic()
        fig.rss_stills = sampler.between(phase_start + (phase_end - phase_start) / 4, phase_end)
        busy = (max(ts for ts, _ in done.values()) - min(ts for ts, _ in sent.values())) / 1000.0
        hits = sum(1 for _, v in done.values() if v["data"].get("cached"))
        if hits:  # a cached or coalesced still never reaches the model: the faces/s would be inflated
            raise RuntimeError(f"{hits} of {len(stills)} stills were answered without scoring (cache or single "
                               "flight): the stills must differ in bytes")
        fig.faces = sum(int(v["data"].get("faces_count") or 0) for _, v in done.values())
        fig.faces_per_s = fig.faces / max(1e-9, busy)
        fig.cpu_per_still = (proc.cpu_s() - cpu0) / len(stills)
        fig.mean_batch = _batch_mean(worker.metrics())
        triton1 = _triton_counters(conn)
        if triton0 and triton1:
            delta = {k: triton1[k] - triton0.get(k, 0.0) for k in triton1}
            fig.triton_batch = delta["nv_inference_count"] / max(1.0, delta["nv_inference_exec_count"])
            # compute time is summed per request; a batched execution serves several requests at once
            per_exec = delta["nv_inference_request_success"] / max(1.0, delta["nv_inference_exec_count"])
            compute_s = delta["nv_inference_compute_infer_duration_us"] / 1e6 / max(1.0, per_exec)
            fig.model_busy = compute_s / max(1e-9, busy)
        fig.rss_mb["after stills"] = proc.rss_mb()
        log(f"  worker: {fig.faces} faces in {busy:.1f} s")

        cpu0 = proc.cpu_s()
        produce(bootstrap, topics.events, _events(videos))
        _records(bootstrap, topics.verdicts, len(stills) + len(videos))
        fig.cpu_per_video = (proc.cpu_s() - cpu0) / len(videos)
        log(f"  worker: {len(videos)} videos, {fig.cpu_per_video:.2f} CPU s each")

        first = _events([cached])  # scored once (a miss), then repeated under new event ids
        produce(bootstrap, topics.events, first)
        seen = len(stills) + len(videos) + 1
        _records(bootstrap, topics.verdicts, seen)
        repeats = _events([cached] * plan.cached_repeats)
        acked = _send_one_by_one(bootstrap, topics.events, repeats)
        got = _records(bootstrap, topics.verdicts, seen + len(repeats))
        for key, _ in repeats:
            ts, verdict = got[key.decode()]
            if not verdict["data"].get("cached"):
                raise RuntimeError("a repeat of the same bytes was not answered from the cache")
            created, ack = acked[key.decode()]
            fig.cached_ms.append(ts - created)
            fig.cached_ack_ms.append(ack - created)
            fig.cached_after_ack_ms.append(ts - ack)
            fig.cached_stage_ms.append(sum(float(v) for v in (verdict["data"].get("timings_ms") or {}).values()))
        fig.rss_mb["end"] = proc.rss_mb()
        if plan.idle_s:
            time.sleep(plan.idle_s)
            fig.rss_mb[f"after {plan.idle_s:g} s idle"] = proc.rss_mb()
    except Exception:
        log(worker.log_tail())
        raise
    finally:
        closing.close()
        worker.stop()
    return fig


def _send_one_by_one(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> dict[str, tuple[int, float]]:
    """Send each record alone from one long-lived producer (as a platform's would be), 0.25 s apart, waiting
    for its ack: key -> (record timestamp ms, i.e. when it was sent; wall ms of the broker's ack)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all", linger_ms=0,
                             max_request_size=16 * 1024 * 1024)
    out: dict[str, tuple[int, float]] = {}
    try:
        producer.partitions_for(topic)  # metadata and connection first: not part of any record's latency
        for key, value in records:
            metadata = producer.send(topic, key=key, value=value).get(timeout=30)
            out[key.decode()] = (metadata.timestamp, time.time() * 1000.0)
            time.sleep(0.25)
    finally:
        producer.close(timeout=10)
    return out


# -- 3. Report ------------------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def stage_table(rows: list[StageRow]) -> list[str]:
    """Part 1's table: CPU s per video per stage, exact and keyframe sampling, and the long/short ratio."""
    lines = ["CPU s per video (32 sampled frames; H.264 mp4, 30 fps, 2 s GOP, 3 B-frames, moving face)"]
    header = (f"{'media':<14}{'MB':>7}{'decode seq':>12}{'decode seek':>13}{'seq/seek':>10}"
              f"{'faces':>8}{'align':>8}{'total':>8}{'found':>7}{'decode kf':>11}{'total kf':>10}")
    lines += [header, "-" * len(header)]
    for r in rows:
        seq = f"{r.decode_seq:>12.2f}{r.decode_seq / max(1e-9, r.decode_seek):>10.1f}" if r.sequential else (
            f"{'not run':>12}{'':>10}")
        lines.append(f"{r.name:<14}{r.mb:>7.2f}{seq[:12]}{r.decode_seek:>13.2f}{seq[12:]}{r.faces:>8.2f}"
                     f"{r.align:>8.3f}{r.total:>8.2f}{r.faces_found:>7}{r.decode_keyframes:>11.2f}"
                     f"{r.total_keyframes:>10.2f}")
    lines.append("total = decode seek + faces + align (the worker's CPU stages); found = faces detected in 32 frames")
    lines.append("kf = decode.sampling=keyframes (approximate, opt-in: a sample alone in its keyframe interval takes "
                 "the keyframe); total kf reuses the exact frames' faces and align")
    clips_720p = sorted((r for r in rows if r.name.startswith("720p ") and r.sequential),
                        key=lambda r: int(r.name.split()[1]))  # 10 and 300 s in the full plan
    if len(clips_720p) > 1:
        short, long = clips_720p[0], clips_720p[-1]
        lines.append(f"{long.name} / {short.name} CPU: exact {long.total / short.total:.2f}x, "
                     f"keyframes {long.total_keyframes / short.total_keyframes:.2f}x (target <= 1.3x)")
    if any(not r.sequential for r in rows):
        lines.append("720p 3600 s (the duration limit): a 10 s clip's closed GOPs repeated; its sequential pass "
                     "(~12x the 300 s one) is not run")
    return lines


def report(args: argparse.Namespace, rows: list[StageRow], bare: dict[int, float], naive: float,
           fig: WorkerFigures) -> str:
    lines = [f"dfmod bench ({'quick' if args.quick else 'full'}) on {os.cpu_count()} CPUs; model {args.model} "
             "(random init) on the local CPU Triton; face detector yunet", "", *stage_table(rows)]
    best = max(bare, key=bare.__getitem__)
    cached = fig.cached_ms
    lines += [
        "", f"throughput on the local stack ({args.model})",
        f"  bare model, Triton driven directly : {bare[best]:8.1f} faces/s at batch {best}, "
        f"{BARE_CONCURRENCY} in flight "
        f"({', '.join(f'{b}: {v:.1f}' for b, v in bare.items())})",
        f"  naive decode->detect->align->infer : {naive:8.1f} faces/s",
        f"  dfmod worker, {fig.faces} stills (1 face)  : {fig.faces_per_s:8.1f} faces/s",
        f"  worker / bare model                : {fig.faces_per_s / bare[best]:8.2f}",
        f"  worker / naive loop                : {fig.faces_per_s / max(1e-9, naive):8.2f}",
        f"  mean Triton batch from the worker  : {fig.mean_batch:8.2f} (executed by Triton: {fig.triton_batch:.2f})",
        f"  model busy while the worker ran    : {fig.model_busy:8.2f} (Triton compute s / stills phase s)",
        f"  worker CPU s per still / per {args.plan.worker_video.name} video: "
        f"{fig.cpu_per_still:.3f} / {fig.cpu_per_video:.2f} (whole process, /proc)",
        f"  cached repeat, {fig.cached_mb:.2f} MB inline video, event -> verdict: "
        f"p50 {statistics.median(cached):.0f} ms, p95 {_pct(cached, 0.95):.0f} ms ({len(cached)} repeats, one "
        "long-lived producer)",
        f"    of it, p50: producer send -> broker ack {statistics.median(fig.cached_ack_ms):.0f} ms; broker ack -> "
        f"verdict {statistics.median(fig.cached_after_ack_ms):.0f} ms (p95 {_pct(fig.cached_after_ack_ms, 0.95):.0f});"
        f" the worker's own stages {statistics.median(fig.cached_stage_ms):.1f} ms",
        "  worker RSS MB: " + ", ".join(f"{k} {v:.0f}" for k, v in fig.rss_mb.items()),
        _rss_spread(fig.rss_stills),
        "", f"sizing: vCPUs of workers per GPU, assuming {GPU_FACES_PER_S:.0f} faces/s per GPU "
        f"(an H200 on ViT-L/14: an assumption, not measured here) = {GPU_FACES_PER_S / FACES_PER_VIDEO:.0f} "
        "videos/s of 32 faces",
    ]
    for r in rows:
        per_gpu = GPU_FACES_PER_S / FACES_PER_VIDEO * (r.total - r.decode_seek + r.decode_seq)
        before = f"; sequential decode: {per_gpu:.0f}" if r.sequential else ""
        lines.append(f"  {r.name:<14} {r.total:6.2f} CPU s/video -> {GPU_FACES_PER_S / FACES_PER_VIDEO * r.total:7.0f}"
                     f" vCPUs (stages{before})")
    lines.append(f"  {'worker, video':<14} {fig.cpu_per_video:6.2f} CPU s/video -> "
                 f"{GPU_FACES_PER_S / FACES_PER_VIDEO * fig.cpu_per_video:7.0f} vCPUs "
                 f"(whole worker process, {args.plan.worker_video.name})")
    lines.append(f"  {'worker, stills':<14} {fig.cpu_per_still:6.3f} CPU s/still -> "
                 f"{GPU_FACES_PER_S * fig.cpu_per_still:7.0f} vCPUs (1 face per still)")
    return "\n".join(lines)


def _rss_spread(samples: list[float]) -> str:
    if not samples:
        return "  worker RSS through the stills phase: no samples (phase too short)"
    mean = statistics.fmean(samples)
    return (f"  worker RSS through the stills phase after its first quarter: {min(samples):.0f}-{max(samples):.0f} MB,"
            f" {100 * (max(samples) - mean) / mean:+.0f} % / {100 * (min(samples) - mean) / mean:+.0f} % around "
            f"its mean ({len(samples)} samples; target within +-10 %)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", choices=["tiny", "ViT-B-32", "ViT-B-16", "ViT-L-14"],
                        help="architecture served by Triton (random init; ViT-B-32 for the throughput ratios)")
    parser.add_argument("--quick", action="store_true", help="a few small items per part (CI)")
    parser.add_argument("--media-dir", type=Path, help="keep generated media here and reuse it")
    parser.add_argument("--skip-stack", action="store_true", help="only the per-stage CPU table")
    parser.add_argument("--skip-stages", action="store_true", help="only the parts on the local stack")
    parser.add_argument("--stills", type=int, help="stills through the worker (default: 200, quick 6)")
    parser.add_argument("--worker-videos", type=int, help="videos through the worker (default: 12, quick 2)")
    parser.add_argument("--bare-faces", type=int, help="faces per batch size for the bare model (default: 320)")
    parser.add_argument("--stack-dir", type=Path,
                        help="use the stack already running from this DFMOD_STACK_DIR (and the model it serves) "
                             "instead of starting one")
    args = parser.parse_args(argv)
    args.plan = Plan.quick() if args.quick else Plan.full()
    overrides = {"stills": args.stills, "worker_videos": args.worker_videos, "bare_faces": args.bare_faces}
    args.plan = dataclasses.replace(args.plan, **{k: v for k, v in overrides.items() if v is not None})
    if args.skip_stages:
        args.plan = dataclasses.replace(args.plan, videos=[], limit_repeats=0)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    faces = FaceSettings()
    with tempfile.TemporaryDirectory(prefix="dfmod-bench-") as tmpdir:
        tmp = Path(tmpdir)
        media_dir = args.media_dir or tmp / "media"
        log("stage costs")
        rows = stage_costs(args.plan, media_dir, faces, log)
        if args.skip_stack:
            print(report_stages_only(rows))
            return 0
        stack: Stack | None = None
        if args.stack_dir is None:
            log(f"exporting {args.model}")
            export_model(args.model, tmp / "models")
            stack = Stack(stack_dir=tmp / "stack", model_repo=tmp / "models")
        else:
            args.model = f"as served by {args.stack_dir}"
        stills = distinct_stills(load_rgb(astronaut_png()), args.plan.stills)
        try:
            conn = stack.up() if stack is not None else read_env_file(args.stack_dir / "env")
            log("bare model")
            bare = bare_model(conn, args.plan.bare_faces)
            log("naive loop")
            naive = naive_loop(conn, distinct_stills(load_rgb(astronaut_png()),
                                                     min(len(stills), 50)), faces)
            log("worker")
            fig = worker_run(conn, args.plan, stills, media_dir, tmp, log)
        finally:
            if stack is not None:
                stack.down()
    print(report(args, rows, bare, naive, fig))
    return 0


def report_stages_only(rows: list[StageRow]) -> str:
    return "\n".join(stage_table(rows))


if __name__ == "__main__":
    sys.exit(main())
