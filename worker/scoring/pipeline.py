"""One media item, fetch to verdict: stages 2-8 of DESIGN.md section 1 composed, errors turned into values.

Asynchronous: `submit` returns a Future at once. The CPU stages (fetch, hash, cache look-up, decode, detect,
align) run on `media_threads` threads; the crops then go to the micro-batcher and the thread goes on with
the next item, and the item continues from the batcher's callback (aggregate, cache write, verdict) on a
small finishing pool. What bounds the work in flight is size, not threads: media bytes being decoded
(`max_in_flight_bytes`) and face crops awaiting scores (`max_faces_in_flight`); a CPU thread waits only when
one of these is full. So under load the batcher holds many items' crops and Triton gets full batches.

Shared by the streaming worker (`worker.stream.loop`) and the serverless `dfmod scan`: the two differ only in
the inference backend behind the batcher and in whether a cache is attached.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np

from worker.core.contracts import ErrorInfo, FrameHash, ListMatch, MediaData, ModelInfo, NearDuplicate, VerdictData
from worker.core.errors import ErrorCode, MediaError, status_for
from worker.core.futures import settle
from worker.core.retry import Backoff, Breaker
from worker.core.settings import WorkerSettings
from worker.core.types import FaceDetector, Sampling, Scores, StageTimer
from worker.core.version import pipeline_version
from worker.faces.extract import ExtractedFaces, drain, extract_faces_counted
from worker.faces.factory import create_detector
from worker.infer.base import InferenceError
from worker.infer.batcher import MicroBatcher
from worker.media.decode import decode_media
from worker.media.fetch import fetch_media
from worker.obs import metrics
from worker.scoring.aggregate import aggregate
from worker.scoring.budget import Budget, BudgetClosed
from worker.scoring.cache import VerdictCache, cache_key
from worker.scoring.hashlist import HashLists
from worker.scoring.neardup import NearDuplicateIndex
from worker.scoring.similar import MediaHashes, hash_frames
from worker.scoring.timers import TimerHandle, TimerQueue

log = logging.getLogger(__name__)

class TransientFailure(Exception):
    """This attempt failed in a way a later one may not (an origin answering 503): retry the event later."""

    def __init__(self, error: MediaError) -> None:
        super().__init__(str(error))
        self.error = error


class Stopped(Exception):
    """The pipeline was stopped while this item was in flight: leave it to the next owner."""


@dataclass
class _Item:
    """One media item in flight: its answer, its clock and the budget it holds until answered."""

    data: MediaData
    final_attempt: bool
    out: Future[VerdictData]
    deadline: float
    timer: StageTimer = field(default_factory=StageTimer)
    media_sha: str | None = None
    held: list[tuple[Budget, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    finished: bool = False

    def hold(self, budget: Budget, size: int) -> None:
        """Take `size` of `budget` until the item is answered (`Stopped` if it already was)."""
        taken = budget.acquire(size)
        with self.lock:
            if not self.finished:
                self.held.append((budget, taken))
                return
        budget.release(taken)
        raise Stopped()

    def finish(self) -> None:
        with self.lock:
            self.finished, held, self.held = True, self.held, []
        for budget, taken in held:
            budget.release(taken)


@dataclass
class _Scoring:
    """What the leader of a media hash carries from its CPU stages to its verdict."""

    item: _Item
    key: str
    leader: Future[VerdictData]
    extracted: ExtractedFaces
    frames: int
    faces: np.ndarray  # the crops stacked (N, 224, 224, 3); each crop's `.crop` is a view into it
    sampling: Sampling = "exact"
    phash: list[FrameHash] = field(default_factory=list)
    hashes: MediaHashes | None = None
    near: NearDuplicate | None = None
    listed: ListMatch | None = None


class MediaPipeline:
    """Turns `MediaData` into `VerdictData`: `submit` (a Future) or `process` (blocking). Thread-safe.

    A dependency the verdict needs (inference) being down delays the verdict: the item is retried with
    capped exponential back-off for up to `retry.dependency_deadline_s` and `breaker` stays open meanwhile
    (the worker then takes no new work). Only after that deadline is the answer `inference_failed`.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        batcher: MicroBatcher,
        model: ModelInfo,
        cache: VerdictCache | None = None,
        detector: FaceDetector | None = None,
        breaker: Breaker | None = None,
        budget: Budget | None = None,
        face_budget: Budget | None = None,
        near_index: NearDuplicateIndex | None = None,
        hash_lists: HashLists | None = None,
    ) -> None:
        self.settings = settings
        #: in verdicts and cache keys: approximate sampling (DecodeSettings.sampling) must not share exact verdicts
        self.pipeline_version = pipeline_version(settings.decode.sampling)
        self.batcher = batcher
        self.model = model
        self.cache = cache
        self.breaker = breaker or Breaker("inference")
        self.budget = budget or Budget(settings.max_in_flight_bytes, "bytes")
        self.face_budget = face_budget or Budget(settings.max_faces_in_flight, "faces")
        self.near_index = near_index
        self.hash_lists = hash_lists
        self._faces = detector  # built on first use: create_detector's detector is already one per thread
        self._faces_lock = threading.Lock()
        self._leaders: dict[str, Future[VerdictData]] = {}
        self._leaders_lock = threading.Lock()
        self._stop = threading.Event()
        self._pending: set[Future[VerdictData]] = set()
        self._pending_lock = threading.Lock()
        self._cpu = ThreadPoolExecutor(max(1, settings.media_threads), thread_name_prefix="media")
        self._finisher = ThreadPoolExecutor(settings.finish_threads, thread_name_prefix="media-finish")
        self._timers = TimerQueue("pipeline-timers")
        retry = settings.retry
        self._backoff = Backoff(initial_s=retry.backoff_initial_s, max_s=retry.backoff_max_s)

    def stop(self) -> None:
        """Shutdown: every item still in flight is answered `Stopped` (never a verdict), threads let go."""
        self._stop.set()
        self.budget.close()
        self.face_budget.close()
        self._cpu.shutdown(wait=False, cancel_futures=True)
        self._timers.close()
        with self._pending_lock:
            pending = list(self._pending)
        for out in pending:
            settle(out, error=Stopped())
        self._finisher.shutdown(wait=False)

    # -- public -------------------------------------------------------------------------------------
    def submit(self, data: MediaData, final_attempt: bool = True) -> Future[VerdictData]:
        """A Future of the verdict. Unless `final_attempt`, a transient per-item failure fails it with
        `TransientFailure` instead (the caller retries the event later); `Stopped` when stopped meanwhile."""
        out: Future[VerdictData] = Future()
        item = _Item(data, final_attempt, out, deadline=time.monotonic() + self.settings.media_timeout_s)
        with self._pending_lock:
            self._pending.add(out)
        out.add_done_callback(lambda _f: self._forget(item))
        if self._stop.is_set():
            settle(out, error=Stopped())
            return out
        try:
            self._cpu.submit(self._guarded, item, self._front, item)
        except RuntimeError:  # shut down meanwhile
            settle(out, error=Stopped())
        return out

    def process(self, data: MediaData, final_attempt: bool = True) -> VerdictData:
        """`submit(...).result()`: for tools, tests and callers with nothing else to do meanwhile."""
        return self.submit(data, final_attempt).result()

    @property
    def in_flight(self) -> int:
        """Items submitted and not yet answered."""
        with self._pending_lock:
            return len(self._pending)

    # -- CPU stages (media threads) -------------------------------------------------------------------
    def _front(self, item: _Item) -> None:
        with self._stage(item.timer, "fetch"):
            blob = fetch_media(item.data, self.settings.fetch)
        with self._stage(item.timer, "hash"):
            item.media_sha = hashlib.sha256(blob).hexdigest()
        key = cache_key(item.media_sha, self.model, self.pipeline_version, self.settings.cache.key_prefix)
        if self.cache is not None:
            with self._stage(item.timer, "cache_get"):
                hit = self.cache.get(key)
            if hit is not None:
                self._answer(item, VerdictData.model_validate({**hit, "cached": True,
                                                                "timings_ms": item.timer.timings_ms}))
                return

        # Single flight: the same bytes arriving twice at once are scored once; the follower waits, threadless.
        with self._leaders_lock:
            leader = self._leaders.get(item.media_sha)
            if leader is None:
                mine: Future[VerdictData] = Future()
                self._leaders[item.media_sha] = mine
        if leader is not None:
            followed = time.perf_counter()
            leader.add_done_callback(lambda f: self._guarded(item, self._follow, item, f, followed))
            return
        try:
            scoring = self._cpu_stages(item, blob, key, mine)
        except BaseException as exc:
            self._leader_done(item.media_sha, mine, error=exc)
            raise
        if scoring is not None:
            self._infer(scoring)

    def _cpu_stages(self, item: _Item, blob: bytes, key: str, leader: Future[VerdictData]) -> _Scoring | None:
        """Decode, detect, align under the byte budget; the crops then wait under the face budget."""
        with self.budget.hold(len(blob)):
            with self._stage(item.timer, "decode"):
                media = decode_media(blob, self.settings.decode, item.data.content_type)
            self._check_deadline(item, "decode")
            frames, sampling = len(media.frames), media.sampling
            with self._stage(item.timer, "phash"):  # from the decoder's luma: no RGB conversion, no second decode
                phash, hashes = hash_frames(media.frames)
            listed, decided = self._hash_list(item, leader, phash, hashes, frames, sampling)
            if decided:
                return None
            near = self._near_duplicate(item, key, leader, phash, hashes, listed)
            if near is not None and near.answered:
                return None
            with self._stage(item.timer, "faces"):  # each frame is freed once detected (`drain`)
                extracted = extract_faces_counted(drain(media.frames), self._detector(), self.settings.faces)
            self._check_deadline(item, "faces")
        del media, blob  # only the crops travel on
        if not extracted.crops:
            empty = np.zeros((0, *self.batcher.crop_shape), np.uint8)
            self._verdict(_Scoring(item, key, leader, extracted, frames, empty, sampling, phash, hashes, near,
                                   listed), np.zeros((0,), np.float32))
            return None
        faces = np.stack([c.crop for c in extracted.crops])
        crops = [replace(c, crop=faces[i]) for i, c in enumerate(extracted.crops)]  # one copy of the pixels
        scoring = _Scoring(item, key, leader, replace(extracted, crops=crops), frames, faces, sampling,
                           phash, hashes, near, listed)
        item.hold(self.face_budget, len(extracted.crops))
        metrics.FACES_IN_FLIGHT.set(self.face_budget.used)
        return scoring

    def _hash_list(self, item: _Item, leader: Future[VerdictData], phash: list[FrameHash],
                   hashes: MediaHashes | None, frames: int, sampling: Sampling) -> tuple[ListMatch | None, bool]:
        """The hash-list entry this media matches, and whether the item was answered with its label
        (`lists: decide`). Such an answer is never cached: the list may change."""
        mode = self.settings.near_duplicate.lists
        if self.hash_lists is None or hashes is None or mode == "off":
            return None, False
        with self._stage(item.timer, "hash_list"):
            listed = self.hash_lists.lookup(hashes)
        if listed is None:
            return None, False
        metrics.HASH_LIST_MATCHES.labels(listed.label, mode).inc()
        if mode != "decide":
            return listed, False
        verdict = VerdictData(
            status="ok", label=listed.label, threshold=self.model.threshold, frames_sampled=frames,
            sampling=sampling, media_sha256=item.media_sha, model=self.model, pipeline_version=self.pipeline_version,
            timings_ms=item.timer.timings_ms, phash=phash, match=listed)
        assert item.media_sha is not None
        self._leader_done(item.media_sha, leader, result=verdict)
        self._answer(item, verdict)
        return listed, True

    def _near_duplicate(self, item: _Item, key: str, leader: Future[VerdictData], phash: list[FrameHash],
                        hashes: MediaHashes | None, listed: ListMatch | None) -> NearDuplicate | None:
        """The earlier-judged media this one matches; in mode `on` the item is answered with its verdict
        (`answered`), unless that verdict has left the cache. None: no match, no index, or Redis unavailable."""
        if self.near_index is None or hashes is None:
            return None
        with self._stage(item.timer, "near_duplicate"):
            near = self.near_index.lookup(hashes, exclude=item.media_sha)
        if near is None:
            metrics.NEAR_DUPLICATES.labels("miss").inc()
            return None
        if self.settings.near_duplicate.mode == "on" and self.cache is not None:
            earlier = self.cache.get(cache_key(near.media_sha256, self.model, self.pipeline_version,
                                               self.settings.cache.key_prefix))
            if earlier is not None:
                near = near.model_copy(update={"answered": True})
                verdict = VerdictData.model_validate({
                    **earlier, "media_sha256": item.media_sha, "phash": phash, "near_duplicate": near,
                    "match": listed, "cached": True, "timings_ms": item.timer.timings_ms})
                assert item.media_sha is not None
                self._leader_done(item.media_sha, leader, result=verdict)
                self.cache.set(key, verdict.model_dump(mode="json", exclude={"cached", "timings_ms"}))
                metrics.NEAR_DUPLICATES.labels("answered").inc()
                self._answer(item, verdict)
                return near
        metrics.NEAR_DUPLICATES.labels("tagged").inc()
        return near

    def _follow(self, item: _Item, leader: Future[VerdictData], since: float) -> None:
        item.timer.add("coalesced", (time.perf_counter() - since) * 1000.0)
        error = leader.exception()
        if error is not None:
            raise error
        shared = leader.result()
        self._answer(item, shared.model_copy(update={"cached": True, "timings_ms": dict(item.timer.timings_ms)}))

    # -- inference (the batcher's and timers' threads) ------------------------------------------------
    def _infer(self, scoring: _Scoring) -> None:
        """Hand the crops to the batcher and return. Retriable failures are retried on a timer until
        `dependency_deadline_s`; the media time budget bounds one answer (`timeout`), not an outage."""
        item, faces = scoring.item, scoring.faces
        give_up_at = time.monotonic() + self.settings.retry.dependency_deadline_s
        delays = self._backoff.delays()
        attempt = [0]
        started = time.perf_counter()

        def send() -> None:
            if self._stop.is_set():
                raise Stopped()
            attempt[0] += 1
            scores = self.batcher.submit(faces)
            wait_s = max(1.0, item.deadline - time.monotonic())
            timeout = self._timers.call_later(wait_s, scores.cancel)
            scores.add_done_callback(lambda f: self._guarded_leader(scoring, answered, f, timeout))

        def answered(scores: Future[Scores], timeout: TimerHandle) -> None:
            timeout.cancel()
            if scores.cancelled():
                raise MediaError(ErrorCode.TIMEOUT, "inference did not answer within the media time budget")
            error = scores.exception()
            if error is None:
                self.breaker.success()
                item.timer.add("infer", (time.perf_counter() - started) * 1000.0)
                metrics.STAGE_SECONDS.labels("infer").observe(time.perf_counter() - started)
                fake_prob = scores.result().fake_prob
                self._finisher.submit(self._guarded_leader, scoring, self._verdict, scoring, fake_prob)
                return
            if not (isinstance(error, InferenceError) and error.retriable):
                raise MediaError(ErrorCode.INFERENCE_FAILED, str(error)) from error
            self.breaker.failure()
            if self._stop.is_set():
                raise Stopped() from error
            left = give_up_at - time.monotonic()
            if left <= 0:
                raise MediaError(ErrorCode.INFERENCE_FAILED,
                                 f"inference failed for {attempt[0]} attempts: {error}") from error
            delay = min(next(delays), left)
            metrics.INFER_RETRIES.inc()
            log.warning("inference failed, waiting for it", extra={"error": str(error), "attempt": attempt[0],
                                                                  "retry_in_s": round(delay, 2)})
            self._timers.call_later(delay, lambda: self._guarded_leader(scoring, send))

        self._guarded_leader(scoring, send)

    # -- the verdict (finishing threads) --------------------------------------------------------------
    def _verdict(self, scoring: _Scoring, fake_prob: np.ndarray) -> None:
        item, extracted = scoring.item, scoring.extracted
        with self._stage(item.timer, "aggregate"):
            agg = aggregate(extracted.crops, fake_prob, scoring.frames, self.model)
        verdict = VerdictData(
            status=agg.status,
            label=agg.label,
            score=agg.score,
            score_max=agg.score_max,
            threshold=self.model.threshold,
            frames_sampled=scoring.frames,
            sampling=scoring.sampling,
            frames_with_faces=agg.frames_with_faces,
            faces_count=agg.faces_count,
            faces_dropped=extracted.dropped,
            faces=agg.faces,
            media_sha256=item.media_sha,
            model=self.model,
            pipeline_version=self.pipeline_version,
            cached=False,
            timings_ms=item.timer.timings_ms,
            phash=scoring.phash,
            near_duplicate=scoring.near,
            match=scoring.listed,
        )
        assert item.media_sha is not None
        self._leader_done(item.media_sha, scoring.leader, result=verdict)
        if self.cache is not None and verdict.status in ("ok", "no_face"):
            with self._stage(item.timer, "cache_set"):
                self.cache.set(scoring.key, verdict.model_dump(mode="json", exclude={"cached", "timings_ms"}))
                if self.near_index is not None and scoring.hashes is not None:
                    self.near_index.add(item.media_sha, scoring.hashes)
            verdict.timings_ms = dict(item.timer.timings_ms)
        self._answer(item, verdict)

    # -- answers ------------------------------------------------------------------------------------
    def _answer(self, item: _Item, verdict: VerdictData) -> None:
        item.finish()
        settle(item.out, result=verdict)

    def _fail(self, item: _Item, exc: BaseException) -> None:
        """Every way an item can end other than a verdict from its scores: errors become values."""
        item.finish()
        if isinstance(exc, (Stopped, BudgetClosed)) or self._stop.is_set():  # interrupted, not answered
            settle(item.out, error=Stopped())
            return
        if isinstance(exc, MediaError):
            if exc.transient and not item.final_attempt:
                settle(item.out, error=TransientFailure(exc))
                return
            verdict = self._failure(exc.code, exc.message, item.media_sha, item.timer)
        elif isinstance(exc, Exception):  # a bug must cost one verdict, never the worker
            log.error("internal error while processing media", exc_info=exc)
            message = f"{type(exc).__name__}: {exc}"
            verdict = self._failure(ErrorCode.INTERNAL_ERROR, message, item.media_sha, item.timer)
        else:
            settle(item.out, error=exc)
            return
        settle(item.out, result=verdict)

    def _guarded(self, item: _Item, fn: Callable[..., None], *args: object) -> None:
        """Run one step of `item`; whatever it raises answers the item instead of escaping a pool thread."""
        try:
            fn(*args)
        except BaseException as exc:
            self._fail(item, exc)

    def _guarded_leader(self, scoring: _Scoring, fn: Callable[..., None], *args: object) -> None:
        """Like `_guarded`, and a failure also answers the followers waiting on this leader."""
        try:
            fn(*args)
        except BaseException as exc:
            assert scoring.item.media_sha is not None
            self._leader_done(scoring.item.media_sha, scoring.leader, error=exc)
            self._fail(scoring.item, exc)

    def _leader_done(self, media_sha: str, leader: Future[VerdictData], result: VerdictData | None = None,
                     error: BaseException | None = None) -> None:
        settle(leader, result=result, error=error)
        with self._leaders_lock:
            if self._leaders.get(media_sha) is leader:
                del self._leaders[media_sha]

    def _forget(self, item: _Item) -> None:
        item.finish()
        with self._pending_lock:
            self._pending.discard(item.out)
        metrics.FACES_IN_FLIGHT.set(self.face_budget.used)

    # -- helpers ------------------------------------------------------------------------------------
    def _detector(self) -> FaceDetector:
        with self._faces_lock:
            if self._faces is None:
                self._faces = create_detector(self.settings.faces)
            return self._faces

    def _check_deadline(self, item: _Item, stage: str) -> None:
        if time.monotonic() > item.deadline:
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
        return failure_verdict(
            code, message, self.model, pipeline_version=self.pipeline_version, media_sha=media_sha,
            timings_ms=timer.timings_ms,
        )


def failure_verdict(
    code: ErrorCode,
    message: str,
    model: ModelInfo | None,
    *,
    pipeline_version: str,
    media_sha: str | None = None,
    timings_ms: dict[str, float] | None = None,
) -> VerdictData:
    """The verdict for media we could not score: `rejected` or `error`, with its stable code.

    `pipeline_version` is the worker's (sampling-aware) one, the same as its successes carry.
    """
    return VerdictData(
        status=status_for(code),  # type: ignore[arg-type]
        media_sha256=media_sha,
        model=model,
        pipeline_version=pipeline_version,
        timings_ms=timings_ms or {},
        error=ErrorInfo(code=code, message=message[:500]),
    )
