"""One media item, fetch to verdict: stages 2-8 of DESIGN.md section 1 composed, errors turned into values.

Shared by the streaming worker (`worker.service`) and the serverless `dfmod scan`: the two differ only in
the inference backend behind the batcher and in whether a cache is attached.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager

import numpy as np

from worker import metrics
from worker.aggregate import aggregate
from worker.batch import MicroBatcher
from worker.budget import ByteBudget
from worker.cache import VerdictCache, cache_key
from worker.contracts import ErrorInfo, MediaData, ModelInfo, VerdictData
from worker.decode import decode_media
from worker.errors import ErrorCode, MediaError, status_for
from worker.faces.extract import extract_faces_counted
from worker.faces.factory import create_detector
from worker.fetch import fetch_media
from worker.infer.base import InferenceError
from worker.retry import Backoff, Breaker, GaveUp, retry_call
from worker.settings import WorkerSettings
from worker.types import FaceDetector, StageTimer
from worker.version import PIPELINE_VERSION

log = logging.getLogger(__name__)

class TransientFailure(Exception):
    """This attempt failed in a way a later one may not (an origin answering 503): retry the event later."""

    def __init__(self, error: MediaError) -> None:
        super().__init__(str(error))
        self.error = error


class Stopped(Exception):
    """The pipeline was stopped while this item waited for a dependency: leave it to the next owner."""


class MediaPipeline:
    """Turns `MediaData` into `VerdictData`. Thread-safe: call `process` from many threads at once.

    A dependency the verdict needs (inference) being down delays the verdict: the pipeline retries with
    capped exponential back-off for up to `retry.dependency_deadline_s` and keeps `breaker` open meanwhile
    (the worker then takes no new work). Only after that deadline is the answer `inference_failed`.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        batcher: MicroBatcher,
        model: ModelInfo,
        cache: VerdictCache | None = None,
        detector_factory: Callable[[], FaceDetector] | None = None,
        breaker: Breaker | None = None,
        budget: ByteBudget | None = None,
    ) -> None:
        self.settings = settings
        self.batcher = batcher
        self.model = model
        self.cache = cache
        self.breaker = breaker or Breaker("inference")
        self.budget = budget or ByteBudget(settings.max_in_flight_bytes)
        self._detector_factory = detector_factory or (lambda: create_detector(settings.faces))
        self._local = threading.local()
        self._leaders: dict[str, Future[VerdictData]] = {}
        self._leaders_lock = threading.Lock()
        self._stop = threading.Event()
        retry = settings.retry
        self._backoff = Backoff(initial_s=retry.backoff_initial_s, max_s=retry.backoff_max_s)

    def stop(self) -> None:
        """Items waiting for a dependency stop waiting (`Stopped`); called on shutdown."""
        self._stop.set()

    # -- public -------------------------------------------------------------------------------------
    def process(self, data: MediaData, final_attempt: bool = True) -> VerdictData:
        """The verdict. Unless `final_attempt`, a transient per-item failure raises `TransientFailure`
        instead (the caller retries the event later); `Stopped` when stopped while waiting."""
        timer = StageTimer()
        deadline = time.monotonic() + self.settings.media_timeout_s
        media_sha: str | None = None
        try:
            with self._stage(timer, "fetch"):
                blob = fetch_media(data, self.settings.fetch)
            with self._stage(timer, "hash"):
                media_sha = hashlib.sha256(blob).hexdigest()
            with self.budget.hold(len(blob)):
                return self._process_once(blob, media_sha, data.content_type, timer, deadline)
        except MediaError as exc:
            if exc.transient and not final_attempt:
                raise TransientFailure(exc) from exc
            return self._failure(exc.code, exc.message, media_sha, timer)
        except Stopped:
            raise
        except Exception as exc:  # a bug must cost one verdict, never the worker
            log.exception("internal error while processing media")
            return self._failure(ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", media_sha, timer)

    # -- stages -------------------------------------------------------------------------------------
    def _process_once(
        self, blob: bytes, media_sha: str, content_type: str | None, timer: StageTimer, deadline: float
    ) -> VerdictData:
        key = cache_key(media_sha, self.model, PIPELINE_VERSION, self.settings.cache.key_prefix)
        if self.cache is not None:
            with self._stage(timer, "cache_get"):
                hit = self.cache.get(key)
            if hit is not None:
                return VerdictData.model_validate({**hit, "cached": True, "timings_ms": timer.timings_ms})

        # Single flight: the same bytes arriving twice at once are scored once; the follower waits.
        with self._leaders_lock:
            leader = self._leaders.get(media_sha)
            if leader is None:
                mine: Future[VerdictData] = Future()
                self._leaders[media_sha] = mine
        if leader is not None:
            with self._stage(timer, "coalesced"):
                shared = leader.result(timeout=max(0.0, deadline - time.monotonic()))
            return shared.model_copy(update={"cached": True, "timings_ms": dict(timer.timings_ms)})

        try:
            verdict = self._score(blob, media_sha, content_type, timer, deadline)
            mine.set_result(verdict)
        except BaseException as exc:
            mine.set_exception(exc)
            raise
        finally:
            with self._leaders_lock:
                self._leaders.pop(media_sha, None)

        if self.cache is not None and verdict.status in ("ok", "no_face"):
            with self._stage(timer, "cache_set"):
                self.cache.set(key, verdict.model_dump(mode="json", exclude={"cached", "timings_ms"}))
            verdict.timings_ms = dict(timer.timings_ms)
        return verdict

    def _score(
        self, blob: bytes, media_sha: str, content_type: str | None, timer: StageTimer, deadline: float
    ) -> VerdictData:
        with self._stage(timer, "decode"):
            media = decode_media(blob, self.settings.decode, content_type)
        self._check_deadline(deadline, "decode")
        with self._stage(timer, "faces"):
            extracted = extract_faces_counted(media.frames, self._detector(), self.settings.faces)
            crops = extracted.crops
        self._check_deadline(deadline, "faces")
        fake_prob = np.zeros((0,), dtype=np.float32)
        if crops:
            with self._stage(timer, "infer"):
                fake_prob = self._infer(np.stack([c.crop for c in crops]), deadline)
        with self._stage(timer, "aggregate"):
            agg = aggregate(crops, fake_prob, len(media.frames), self.model)
        return VerdictData(
            status=agg.status,
            label=agg.label,
            score=agg.score,
            score_max=agg.score_max,
            threshold=self.model.threshold,
            frames_sampled=len(media.frames),
            frames_with_faces=agg.frames_with_faces,
            faces_count=agg.faces_count,
            faces_dropped=extracted.dropped,
            faces=agg.faces,
            media_sha256=media_sha,
            model=self.model,
            pipeline_version=PIPELINE_VERSION,
            cached=False,
            timings_ms=timer.timings_ms,
        )

    def _infer(self, faces: np.ndarray, deadline: float) -> np.ndarray:
        """Scores of `faces`. The media time budget bounds one answer, not an outage: while inference is
        unreachable the item waits (up to `dependency_deadline_s`), it is not answered `timeout`."""

        def once() -> np.ndarray:
            wait_s = max(1.0, deadline - time.monotonic())
            try:
                scores = self.batcher.submit(faces).result(timeout=wait_s)
            except FutureTimeout as exc:
                raise MediaError(ErrorCode.TIMEOUT, "inference did not answer within the media time budget") from exc
            except InferenceError as exc:
                if exc.retriable:
                    self.breaker.failure()
                raise
            self.breaker.success()
            return scores.fake_prob

        def retried(exc: BaseException, attempt: int, delay: float) -> None:
            metrics.INFER_RETRIES.inc()
            log.warning("inference failed, waiting for it", extra={"error": str(exc), "attempt": attempt,
                                                                  "retry_in_s": round(delay, 2)})

        try:
            return retry_call(
                once,
                retry_on=lambda exc: isinstance(exc, InferenceError) and exc.retriable,
                backoff=self._backoff,
                deadline_s=self.settings.retry.dependency_deadline_s,
                on_retry=retried,
                should_stop=self._stop.is_set,
                sleep=self._stop.wait,
            )
        except GaveUp as exc:
            if self._stop.is_set():
                raise Stopped() from exc
            raise MediaError(ErrorCode.INFERENCE_FAILED, f"inference failed: {exc}") from exc
        except InferenceError as exc:
            raise MediaError(ErrorCode.INFERENCE_FAILED, str(exc)) from exc

    # -- helpers ------------------------------------------------------------------------------------
    def _detector(self) -> FaceDetector:
        detector: FaceDetector | None = getattr(self._local, "detector", None)
        if detector is None:
            detector = self._detector_factory()
            self._local.detector = detector
        return detector

    def _check_deadline(self, deadline: float, stage: str) -> None:
        if time.monotonic() > deadline:
            budget = self.settings.media_timeout_s
            raise MediaError(ErrorCode.TIMEOUT, f"media time budget of {budget}s spent after {stage}")

    @staticmethod
    @contextmanager
    def _stage(timer: StageTimer, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            timer.add(name, seconds * 1000.0)
            metrics.STAGE_SECONDS.labels(name).observe(seconds)

    def _failure(self, code: ErrorCode, message: str, media_sha: str | None, timer: StageTimer) -> VerdictData:
        return failure_verdict(code, message, self.model, media_sha, timer.timings_ms)


def failure_verdict(
    code: ErrorCode,
    message: str,
    model: ModelInfo | None,
    media_sha: str | None = None,
    timings_ms: dict[str, float] | None = None,
) -> VerdictData:
    """The verdict for media we could not score: `rejected` or `error`, with its stable code."""
    return VerdictData(
        status=status_for(code),  # type: ignore[arg-type]
        media_sha256=media_sha,
        model=model,
        pipeline_version=PIPELINE_VERSION,
        timings_ms=timings_ms or {},
        error=ErrorInfo(code=code, message=message[:500]),
    )
