"""MediaPipeline with the real fetch/decode/faces stages and a fake inference backend (no servers)."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from worker.core.contracts import MediaData
from worker.core.retry import Breaker
from worker.core.settings import BatchSettings, WorkerSettings
from worker.infer.batcher import MicroBatcher
from worker.infer.fake import FAKE_MODEL as MODEL
from worker.infer.fake import FakeBackend, mean_pixel
from worker.scoring.pipeline import MediaPipeline, Stopped


class DictCache:
    def __init__(self) -> None:
        self.store: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.store.get(key)

    def set(self, key: str, value: dict[str, Any]) -> None:
        self.store[key] = value


@pytest.fixture
def settings(models_dir: Path) -> WorkerSettings:
    s = WorkerSettings()
    s.faces.weights_dir = models_dir
    return s


def make(settings: WorkerSettings, backend: FakeBackend, cache: DictCache | None = None,
         breaker: Breaker | None = None) -> MediaPipeline:
    batcher = MicroBatcher(backend, BatchSettings(max_size=8, max_delay_ms=2))
    return MediaPipeline(settings, batcher, MODEL, cache=cache, breaker=breaker)  # type: ignore[arg-type]


def down_for(backend: FakeBackend, seconds: float) -> None:
    """Take the backend down now and bring it back after `seconds` (an outage, in-process)."""
    backend.down = True
    timer = threading.Timer(seconds, lambda: setattr(backend, "down", False))
    timer.daemon = True
    timer.start()


def inline(blob: bytes) -> MediaData:
    return MediaData(inline=base64.b64encode(blob).decode())


def test_a_face_is_scored_and_labelled(settings: WorkerSettings, astronaut_png_bytes: bytes) -> None:
    verdict = make(settings, FakeBackend()).process(inline(astronaut_png_bytes))
    assert verdict.status == "ok" and verdict.faces_count == 1 and verdict.frames_sampled == 1
    face = verdict.faces[0]
    assert verdict.score == pytest.approx(face.score)
    assert verdict.label == ("fake" if face.score >= 0.5 else "real")
    assert verdict.model == MODEL and not verdict.cached
    assert {"fetch", "hash", "decode", "faces", "infer", "aggregate"} <= set(verdict.timings_ms)


def test_a_blank_image_has_no_face(settings: WorkerSettings) -> None:
    from worker.cli.demo_media import encode_image

    blank = encode_image(np.full((256, 256, 3), 127, np.uint8), fmt="png")
    verdict = make(settings, FakeBackend()).process(inline(blank))
    assert verdict.status == "no_face" and verdict.label is None and verdict.score is None


def test_an_inference_outage_delays_the_verdict_and_holds_the_breaker_open(
    settings: WorkerSettings, astronaut_png_bytes: bytes
) -> None:
    settings.retry.backoff_initial_s, settings.retry.backoff_max_s = 0.02, 0.1
    backend, states = FakeBackend(), []
    breaker = Breaker("inference", on_change=states.append)
    down_for(backend, 0.6)
    verdict = make(settings, backend, breaker=breaker).process(inline(astronaut_png_bytes))
    assert verdict.status == "ok", verdict.error
    assert backend.failures >= 3, "it retried while the backend was down"
    assert states == [True, False] and not breaker.is_open


def test_an_outage_past_the_deadline_is_an_error_verdict(
    settings: WorkerSettings, astronaut_png_bytes: bytes
) -> None:
    settings.retry.backoff_initial_s, settings.retry.dependency_deadline_s = 0.02, 0.3
    backend = FakeBackend()
    backend.down = True
    verdict = make(settings, backend).process(inline(astronaut_png_bytes))
    assert verdict.status == "error" and verdict.error is not None
    assert verdict.error.code == "inference_failed"


def test_a_wrong_answer_is_not_retried(settings: WorkerSettings, astronaut_png_bytes: bytes) -> None:
    backend = FakeBackend(handler=lambda faces: (mean_pixel(faces)[0][:0], mean_pixel(faces)[1]))
    verdict = make(settings, backend).process(inline(astronaut_png_bytes))
    assert verdict.error is not None and verdict.error.code == "inference_failed"
    assert len(backend.batch_sizes) == 1, "a malformed answer is not a reason to wait"


def test_stopping_releases_items_waiting_for_inference(
    settings: WorkerSettings, astronaut_png_bytes: bytes
) -> None:
    settings.retry.backoff_initial_s = 0.05
    backend = FakeBackend()
    backend.down = True
    pipeline = make(settings, backend)
    threading.Timer(0.3, pipeline.stop).start()
    with pytest.raises(Stopped):
        pipeline.process(inline(astronaut_png_bytes))


def test_cache_hit_skips_decoding(settings: WorkerSettings, astronaut_png_bytes: bytes) -> None:
    cache = DictCache()
    pipeline = make(settings, FakeBackend(), cache)
    first = pipeline.process(inline(astronaut_png_bytes))
    second = pipeline.process(inline(astronaut_png_bytes))
    assert not first.cached and second.cached and second.score == first.score
    assert "decode" not in second.timings_ms and len(cache.store) == 1


def test_concurrent_identical_uploads_are_scored_once(
    settings: WorkerSettings, astronaut_png_bytes: bytes
) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        entered.set()
        release.wait(10)  # hold the leader in inference while the others arrive
        return mean_pixel(faces)

    backend = FakeBackend(handler=slow)
    pipeline = make(settings, backend)
    results = []
    threads = [threading.Thread(target=lambda: results.append(pipeline.process(inline(astronaut_png_bytes))))
               for _ in range(4)]
    for t in threads:
        t.start()
    assert entered.wait(10)
    time.sleep(0.5)  # margin for the three followers to fetch, hash and find the leader
    release.set()
    for t in threads:
        t.join(30)
    assert len(results) == 4 and len({r.score for r in results}) == 1
    assert sorted(r.cached for r in results) == [False, True, True, True]
    assert backend.batch_sizes == [1], "one face, sent once, for four events"


@pytest.mark.parametrize(
    ("blob", "code"),
    [(b"", "empty_media"), (b"hello, not media" * 10, "unsupported_media")],
)
def test_bad_media_become_error_verdicts(settings: WorkerSettings, blob: bytes, code: str) -> None:
    verdict = make(settings, FakeBackend()).process(inline(blob))
    assert verdict.status == "rejected" and verdict.error is not None and verdict.error.code == code


class GatedBackend(FakeBackend):
    """Takes every batch and answers none until `release()`; counts the faces it was handed."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[tuple[np.ndarray, Any]] = []
        self.faces_seen = 0
        self.lock = threading.Lock()

    def infer_async(self, faces: np.ndarray, callback: Any) -> None:
        with self.lock:
            self.waiting.append((faces.copy(), callback))
            self.faces_seen += len(faces)

    def release(self) -> None:
        with self.lock:
            waiting, self.waiting = self.waiting, []
        for faces, callback in waiting:
            FakeBackend.infer_async(self, faces, callback)


def distinct_stills(astronaut_rgb: np.ndarray, n: int) -> list[bytes]:
    """`n` PNGs of the same portrait with different bytes (one pixel differs), so none is coalesced."""
    import cv2

    out = []
    for i in range(n):
        img = astronaut_rgb.copy()
        img[0, 0] = (i % 256, i // 256, 7)
        ok, png = cv2.imencode(".png", img[:, :, ::-1])
        assert ok
        out.append(png.tobytes())
    return out


def wait_for(condition: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_a_media_thread_goes_on_with_the_next_item_while_crops_await_scores(
    settings: WorkerSettings, astronaut_rgb: np.ndarray
) -> None:
    settings.media_threads = 1
    backend = GatedBackend()
    pipeline = make(settings, backend)
    try:
        futures = [pipeline.submit(inline(blob)) for blob in distinct_stills(astronaut_rgb, 6)]
        # one thread, no answers yet: all six items' crops reach the backend only if it never waits for them
        wait_for(lambda: backend.faces_seen == 6)
        assert not any(f.done() for f in futures)
        backend.release()
        verdicts = [f.result(timeout=30) for f in futures]
        assert [v.status for v in verdicts] == ["ok"] * 6 and all(v.faces_count == 1 for v in verdicts)
    finally:
        pipeline.stop()


def test_faces_in_flight_never_exceed_the_limit(settings: WorkerSettings, astronaut_rgb: np.ndarray) -> None:
    settings.max_faces_in_flight = 3
    settings.media_threads = 4
    backend = GatedBackend()
    pipeline = make(settings, backend)
    try:
        futures = [pipeline.submit(inline(blob)) for blob in distinct_stills(astronaut_rgb, 10)]
        wait_for(lambda: backend.faces_seen == 3)
        time.sleep(0.3)  # the other media threads have their crops by now and must be waiting for room
        assert backend.faces_seen == 3 and pipeline.face_budget.used == 3
        while not all(f.done() for f in futures):
            backend.release()
            time.sleep(0.01)
        assert [f.result().status for f in futures] == ["ok"] * 10
        assert pipeline.face_budget.peak == 3 and pipeline.face_budget.used == 0
    finally:
        pipeline.stop()


def test_stopping_answers_items_in_flight_with_stopped_never_a_verdict(
    settings: WorkerSettings, astronaut_rgb: np.ndarray
) -> None:
    backend = GatedBackend()
    pipeline = make(settings, backend)
    futures = [pipeline.submit(inline(blob)) for blob in distinct_stills(astronaut_rgb, 3)]
    wait_for(lambda: backend.faces_seen == 3)
    pipeline.stop()
    backend.release()  # answers arriving after the stop change nothing
    for future in futures:
        with pytest.raises(Stopped):
            future.result(timeout=10)
    with pytest.raises(Stopped):
        pipeline.process(inline(b"late"))


def test_an_inference_that_never_answers_ends_in_timeout(settings: WorkerSettings, astronaut_png_bytes: bytes) -> None:
    settings.media_timeout_s = 0.5
    backend = GatedBackend()  # never released
    pipeline = make(settings, backend)
    try:
        verdict = pipeline.submit(inline(astronaut_png_bytes)).result(timeout=30)
        assert verdict.status == "error" and verdict.error is not None and verdict.error.code == "timeout"
        assert pipeline.face_budget.used == 0, "a timed-out item gives its faces back"
    finally:
        pipeline.stop()


def test_answered_items_are_not_kept_alive(settings: WorkerSettings, astronaut_png_bytes: bytes) -> None:
    """Each item's deadline timer closes over its crops; once answered, nothing of it may stay (a cancelled
    timer held every item until its deadline, minutes later: worker RSS grew with throughput)."""
    import gc

    from worker.scoring.pipeline import _Scoring

    pipeline = make(settings, FakeBackend())
    distinct = [inline(astronaut_png_bytes + i.to_bytes(4, "big")) for i in range(6)]  # no single flight
    for data in distinct:
        assert pipeline.process(data).status == "ok"
    time.sleep(0.1)  # the finishing thread lets go of the last item after answering it
    gc.collect()
    ours = {data.inline for data in distinct}  # other tests' pipelines may still hold their own items
    alive = [o for o in gc.get_objects() if isinstance(o, _Scoring) and o.item.data.inline in ours]
    assert len(alive) <= 1, f"{len(alive)} answered items still alive"  # at most the batcher's last batch


def test_approximate_sampling_is_recorded_and_cached_apart(settings: WorkerSettings, astronaut_rgb: Any) -> None:
    from tests.worker.media.test_keyframe_seek import Clip, make_clip
    from worker.core.version import PIPELINE_VERSION

    clip = inline(make_clip(astronaut_rgb, Clip("mp4", "libx264")))
    cache = DictCache()
    settings.decode.frames = 5
    exact = make(settings, FakeBackend(), cache=cache).process(clip)
    assert (exact.sampling, exact.pipeline_version, exact.cached) == ("exact", PIPELINE_VERSION, False)
    approximate_settings = settings.model_copy(deep=True)
    approximate_settings.decode.sampling = "keyframes"
    approximate = make(approximate_settings, FakeBackend(), cache=cache).process(clip)
    assert approximate.sampling == "keyframes" and not approximate.cached  # not answered with the exact verdict
    assert approximate.pipeline_version == f"{PIPELINE_VERSION}+sampling-keyframes"
    again = make(approximate_settings, FakeBackend(), cache=cache).process(clip)
    assert again.cached and again.sampling == "keyframes"
