"""Micro-batching of face crops across media items, so the GPU sees full batches.

Media threads `submit` the crops of one item and get a Future; one background thread packs crops from
many callers into batches of at most `max_size`, sending a batch when it is full or when its oldest crop
has waited `max_delay_ms`. Batches go out through `backend.infer_async`, so several are in flight at once;
the backend bounds how many (its `infer_async` blocks when full, which is the backpressure: meanwhile the
queue fills and the next batch leaves full). Results are scattered back by row, so every caller gets
exactly its own rows, in order, even when its crops were split over several batches.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import numpy as np

from worker.infer.base import CROP_SHAPE, InferenceBackend, InferenceError
from worker.settings import BatchSettings
from worker.types import Scores

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
                _settle(self.future, error=error)
                return
            self.fake_prob[start:start + n] = fake_prob
            self.embedding[start:start + n] = embedding
            self.remaining -= n
            if self.remaining > 0:
                return
            self.finished = True
        _settle(self.future, result=Scores(fake_prob=self.fake_prob, embedding=self.embedding))

    def fail(self, error: BaseException) -> None:
        with self.lock:
            if self.finished:
                return
            self.finished = True
        _settle(self.future, error=error)


def _settle(future: Future[Scores], result: Scores | None = None, error: BaseException | None = None) -> None:
    """Resolve a Future that the caller may have cancelled meanwhile."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        pass


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
    ) -> None:
        if settings.max_size < 1:
            raise ValueError("batch max_size must be >= 1")
        self.backend = backend
        self.max_size = settings.max_size
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
                    if self._queued >= self.max_size or (self._closing and self._queued):
                        break
                    if not self._queued:
                        if self._closing:
                            return
                        self._cond.wait()
                        continue
                    wait_s = self._queue[0].enqueued + self.max_delay_s - time.monotonic()
                    if wait_s <= 0:
                        break
                    self._cond.wait(wait_s)
                parts = self._take()
            if parts:
                self._dispatch(parts)

    def _take(self) -> list[_Chunk]:
        """Up to `max_size` rows from the head of the queue; a chunk that does not fit is split."""
        parts: list[_Chunk] = []
        room = self.max_size
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
