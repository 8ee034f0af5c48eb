"""MediaPipeline with the real fetch/decode/faces stages and a fake inference backend (no servers)."""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from worker.batch import MicroBatcher
from worker.contracts import MediaData, ModelInfo
from worker.infer.base import InferenceError, ScoresCallback
from worker.pipeline import MediaPipeline
from worker.settings import BatchSettings, WorkerSettings
from worker.types import Scores

MODEL = ModelInfo(name="deepfake_clip", version="1", weights="fake", threshold=0.5)


class FakeBackend:
    """fake_prob = mean pixel / 255 of each crop; can be told to fail the next N requests."""

    def __init__(self, fail_next: int = 0) -> None:
        self.fail_next = fail_next
        self.requests = 0
        self.lock = threading.Lock()

    def model_info(self) -> ModelInfo:
        return MODEL

    def infer(self, faces: np.ndarray) -> Scores:
        with self.lock:
            self.requests += 1
            if self.fail_next > 0:
                self.fail_next -= 1
                raise InferenceError("server unavailable")
        prob = faces.reshape(len(faces), -1).mean(axis=1).astype(np.float32) / 255.0
        emb = np.ones((len(faces), 4), np.float32) / 2.0
        return Scores(fake_prob=prob, embedding=emb)

    def infer_async(self, faces: np.ndarray, callback: ScoresCallback) -> None:
        try:
            result = self.infer(faces)
        except InferenceError as exc:
            callback(None, exc)
        else:
            callback(result, None)

    def close(self) -> None:
        pass


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


def make(settings: WorkerSettings, backend: FakeBackend, cache: DictCache | None = None) -> MediaPipeline:
    batcher = MicroBatcher(backend, BatchSettings(max_size=8, max_delay_ms=2))  # type: ignore[arg-type]
    return MediaPipeline(settings, batcher, MODEL, cache=cache)  # type: ignore[arg-type]


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
    from worker.samples import encode_image

    blank = encode_image(np.full((256, 256, 3), 127, np.uint8), fmt="png")
    verdict = make(settings, FakeBackend()).process(inline(blank))
    assert verdict.status == "no_face" and verdict.label is None and verdict.score is None


def test_transient_inference_failures_are_retried(settings: WorkerSettings, astronaut_png_bytes: bytes) -> None:
    backend = FakeBackend(fail_next=2)
    verdict = make(settings, backend).process(inline(astronaut_png_bytes))
    assert verdict.status == "ok" and backend.requests == 3


def test_persistent_inference_failure_is_an_error_verdict(
    settings: WorkerSettings, astronaut_png_bytes: bytes
) -> None:
    verdict = make(settings, FakeBackend(fail_next=100)).process(inline(astronaut_png_bytes))
    assert verdict.status == "error" and verdict.error is not None
    assert verdict.error.code == "inference_failed"


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
    backend = FakeBackend()
    pipeline = make(settings, backend)
    results = []
    threads = [threading.Thread(target=lambda: results.append(pipeline.process(inline(astronaut_png_bytes))))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 4 and len({r.score for r in results}) == 1
    assert sum(not r.cached for r in results) >= 1
    assert backend.requests == sum(not r.cached for r in results)


@pytest.mark.parametrize(
    ("blob", "code"),
    [(b"", "empty_media"), (b"hello, not media" * 10, "unsupported_media")],
)
def test_bad_media_become_error_verdicts(settings: WorkerSettings, blob: bytes, code: str) -> None:
    verdict = make(settings, FakeBackend()).process(inline(blob))
    assert verdict.status == "rejected" and verdict.error is not None and verdict.error.code == code
