"""Micro-batching of face crops across media items, so the GPU sees full batches.

The pipeline `submit`s the crops of one item and gets a Future; one background thread packs crops from
many items into batches. A batch leaves only when the backend has a free request slot (its `max_in_flight`),
so under load crops pile up while every slot is busy and the next batch leaves full; when a slot is free it
leaves as soon as the queue reaches one of the model's preferred batch sizes (`dynamic_batching` in its
`config.pbtxt`), or when its oldest crop has waited `max_delay_ms`. Results are scattered back by row, so
every caller gets exactly its own rows, in order, even when its crops were split over several batches.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from worker.core.futures import settle
from worker.core.settings import BatchSettings
from worker.core.types import Scores
from worker.infer.base import CROP_SHAPE, BatchLimits, InferenceBackend, InferenceError

log = logging.getLogger(__name__)

#: Called once per successful batch with its size and its inference round trip in seconds.
BatchHook = Callable[[int, float], None]


class _Request:
    """One caller's crops and the Future they resolve; rows may arrive from several batches."""

    def __init__(self, future: Future[Scores], k: int) -> None:
        self.future = future
        self.k = k
        self.fake_prob = np.empty((k,), np.float32)
        self.embedding: np.ndarray | None = None
        self.remaining = k
        self.finished = False
        self.lock = threading.Lock()

    def put(self, start: int, fake_prob: np.ndarray, embedding: np.ndarray) -> None:
        n = fake_prob.shape[0]
        with self.lock:
            if self.finished:
                return
            if self.embedding is None:
                self.embedding = np.empty((self.k, embedding.shape[1]), np.float32)
            elif self.embedding.shape[1] != embedding.shape[1]:
                error = InferenceError("embedding width changed between batches of one request")
                self.finished = True
                settle(self.future, error=error)
                return
            self.fake_prob[start:start + n] = fake_prob
            self.embedding[start:start + n] = embedding
            self.remaining -= n
            if self.remaining > 0:
                return
            self.finished = True
        settle(self.future, result=Scores(fake_prob=self.fake_prob, embedding=self.embedding))

    def fail(self, error: BaseException) -> None:
        with self.lock:
            if self.finished:
                return
            self.finished = True
        settle(self.future, error=error)



@dataclass
class _Chunk:
    """Rows `start:start+len(crops)` of a request, waiting in the queue since `enqueued`."""

    req: _Request
    start: int
    crops: np.ndarray
    enqueued: float


@dataclass
class _Batch:
    parts: list[_Chunk]
    size: int
    sent: float = 0.0
    done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class MicroBatcher:
    """Thread-safe `submit(crops) -> Future[Scores]`; one background thread forms and sends the batches.

    The batcher does not own the backend: `close()` leaves it open for its owner to close.
    """

    def __init__(
        self,
        backend: InferenceBackend,
        settings: BatchSettings,
        on_batch: BatchHook | None = None,
        crop_shape: tuple[int, int, int] = CROP_SHAPE,
        limits: BatchLimits | None = None,
    ) -> None:
        """`limits`: what the served model and backend accept (`backend.batch_limits()`); None: only `settings`."""
        if settings.max_size < 1:
            raise ValueError("batch max_size must be >= 1")
        limits = limits or BatchLimits()
        self.backend = backend
        served = limits.max_batch_size
        self.max_size = min(settings.max_size, served) if served > 0 else settings.max_size
        #: Sizes worth sending without waiting for `max_delay_ms` (the largest that fits is sent).
        self.preferred = tuple(sorted({b for b in limits.preferred_batch_sizes if 0 < b < self.max_size}))
        self.ready_size = self.preferred[0] if self.preferred else self.max_size
        #: Batches in flight at once; 0: unbounded here (the backend's `infer_async` blocks instead).
        self.concurrency = max(0, limits.max_in_flight)
        self.max_delay_s = max(0.0, settings.max_delay_ms / 1000.0)
        self.on_batch = on_batch
        self.crop_shape = tuple(crop_shape)
        self._cond = threading.Condition()
        self._queue: deque[_Chunk] = deque()
        self._queued = 0
        self._in_flight: dict[int, _Batch] = {}
        self._ids = itertools.count()
        self._closing = False
        self._dim = 0
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    # -- callers --------------------------------------------------------------------------------------

    def submit(self, crops: np.ndarray) -> Future[Scores]:
        """A Future of the Scores of exactly these `k` crops (uint8 (k, 224, 224, 3)), in order.

        `k == 0` resolves at once; `k > max_size` is spread over several batches. Do not modify `crops`
        until the Future resolves (they are not copied). After `close()` the Future fails (InferenceError).
        """
        if not isinstance(crops, np.ndarray) or crops.dtype != np.uint8 or crops.ndim != 4:
            raise ValueError("crops must be a uint8 array of shape (k, H, W, 3)")
        if tuple(crops.shape[1:]) != self.crop_shape:
            raise ValueError(f"crops must have shape (k, *{self.crop_shape}), got {crops.shape}")
        future: Future[Scores] = Future()
        k = int(crops.shape[0])
        if k == 0:
            future.set_result(
                Scores(fake_prob=np.zeros((0,), np.float32), embedding=np.zeros((0, self._dim), np.float32))
            )
            return future
        req = _Request(future, k)
        with self._cond:
            if self._closing:
                req.fail(InferenceError("the micro-batcher is closed"))
                return future
            was_empty = self._queued == 0
            self._queue.append(_Chunk(req, 0, crops, time.monotonic()))
            self._queued += k
            # The thread needs waking only when it sleeps without a deadline or the batch just filled up.
            if was_empty or self._queued >= self.max_size:
                self._cond.notify_all()
        return future

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop taking crops, send what is queued, wait up to `timeout_s` for answers, fail the rest."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            while self._in_flight and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            left = list(self._queue)
            self._queue.clear()
            self._queued = 0
            batches = list(self._in_flight.values())
            self._in_flight.clear()
        error = InferenceError("the micro-batcher closed before this inference finished")
        for chunk in left:
            chunk.req.fail(error)
        for batch in batches:
            for chunk in batch.parts:
                chunk.req.fail(error)

    # -- the batching thread --------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._queued:
                        if self._closing:
                            return
                        self._cond.wait()
                        continue
                    if self.concurrency and len(self._in_flight) >= self.concurrency:
                        self._cond.wait()  # every slot busy: crops accumulate, the next batch leaves fuller
                        continue
                    if self._queued >= self.ready_size or self._closing:
                        break
                    wait_s = self._queue[0].enqueued + self.max_delay_s - time.monotonic()
                    if wait_s <= 0:
                        break
                    self._cond.wait(wait_s)
                parts = self._take(self._batch_size())
            if parts:
                self._dispatch(parts)

    def _batch_size(self) -> int:
        """How many rows to send now: a full batch, else the largest preferred size queued, else all."""
        if self._queued >= self.max_size:
            return self.max_size
        fitting = [b for b in self.preferred if b <= self._queued]
        return fitting[-1] if fitting else self._queued

    def _take(self, room: int) -> list[_Chunk]:
        """Up to `room` rows from the head of the queue; a chunk that does not fit is split."""
        parts: list[_Chunk] = []
        while room and self._queue:
            chunk = self._queue[0]
            n = chunk.crops.shape[0]
            if chunk.req.future.cancelled():  # nobody waits for these rows any more
                self._queue.popleft()
                self._queued -= n
                continue
            if n <= room:
                self._queue.popleft()
                parts.append(chunk)
                room -= n
            else:
                parts.append(_Chunk(chunk.req, chunk.start, chunk.crops[:room], chunk.enqueued))
                self._queue[0] = _Chunk(chunk.req, chunk.start + room, chunk.crops[room:], chunk.enqueued)
                room = 0
            self._queued -= parts[-1].crops.shape[0]
        return parts

    def _dispatch(self, parts: list[_Chunk]) -> None:
        size = sum(p.crops.shape[0] for p in parts)
        batch = _Batch(parts=parts, size=size)
        batch_id = next(self._ids)
        with self._cond:
            self._in_flight[batch_id] = batch
        try:
            faces = parts[0].crops if len(parts) == 1 else np.concatenate([p.crops for p in parts])
            batch.sent = time.monotonic()
            self.backend.infer_async(
                np.ascontiguousarray(faces),
                lambda scores, error: self._complete(batch_id, batch, scores, error),
            )
        except Exception as exc:  # a backend that raises instead of calling back must not kill the thread
            self._complete(batch_id, batch, None, InferenceError(f"could not send the batch: {exc}"))

    def _complete(
        self, batch_id: int, batch: _Batch, scores: Scores | None, error: BaseException | None
    ) -> None:
        with batch.lock:
            if batch.done:  # a backend that calls back twice
                return
            batch.done = True
        seconds = time.monotonic() - batch.sent
        if error is None and scores is not None and scores.fake_prob.shape[0] != batch.size:
            rows = scores.fake_prob.shape[0]
            error = InferenceError(f"backend answered {rows} rows for a batch of {batch.size}")
        if error is None and scores is None:
            error = InferenceError("backend answered neither scores nor an error")
        if error is not None:
            if not isinstance(error, InferenceError):
                error = InferenceError(f"{type(error).__name__}: {error}")
            for chunk in batch.parts:
                chunk.req.fail(error)
        else:
            assert scores is not None
            row = 0
            for chunk in batch.parts:
                n = chunk.crops.shape[0]
                chunk.req.put(chunk.start, scores.fake_prob[row:row + n], scores.embedding[row:row + n])
                row += n
        with self._cond:
            self._in_flight.pop(batch_id, None)
            if error is None and scores is not None and scores.embedding.ndim == 2:
                self._dim = scores.embedding.shape[1]
            self._cond.notify_all()
        if error is None and self.on_batch is not None:
            try:
                self.on_batch(batch.size, seconds)
            except Exception:
                log.exception("on_batch hook raised")
