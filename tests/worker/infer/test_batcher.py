"""The micro-batcher, against a fake backend whose scores encode its input rows."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest

from worker.core.contracts import ModelInfo
from worker.core.settings import BatchSettings
from worker.core.types import Scores
from worker.infer.base import BatchLimits, InferenceError, ScoresCallback
from worker.infer.batcher import MicroBatcher

POISON = 255  # a crop whose pixel [0, 0, 0] is this makes the fake backend fail its whole batch


def make_crops(caller: int, k: int, first_row: int = 0) -> np.ndarray:
    """k crops whose pixel (0, 0) encodes (caller, row): the fake backend echoes it back."""
    crops = np.zeros((k, 224, 224, 3), np.uint8)
    for row in range(k):
        crops[row, 0, 0] = (caller % 250, caller // 250, (first_row + row) % 256)
    return crops


def echo_scores(faces: np.ndarray) -> Scores:
    return Scores(
        fake_prob=faces[:, 0, 0, 0].astype(np.float32) / 255.0,
        embedding=faces[:, 0, 0, :].astype(np.float32),
    )


class EchoBackend:
    """fake_prob = pixel[0,0,0] / 255, embedding = pixel[0,0,:] as floats; answers later, out of order."""

    def __init__(self, delay_s: tuple[float, float] = (0.0, 0.005), workers: int = 4) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.batches: list[tuple[int, bool, set[int]]] = []  # (size, failed, callers in it)
        self.rng = random.Random(1)

    def model_info(self) -> ModelInfo:
        return ModelInfo(name="fake", version="1", weights="test")

    def is_ready(self) -> bool:
        return True

    def infer_async(self, faces: np.ndarray, callback: ScoresCallback) -> None:
        faces = faces.copy()  # what a real client does when it serialises the request
        with self.lock:
            delay = self.rng.uniform(*self.delay_s)

        def job() -> None:
            time.sleep(delay)
            callers = {int(c) + 250 * int(h) for c, h in faces[:, 0, 0, :2]}
            failed = bool(np.any(faces[:, 0, 0, 0] == POISON))
            with self.lock:
                self.batches.append((faces.shape[0], failed, callers))
            if failed:
                callback(None, InferenceError("poisoned batch"))
            else:
                callback(echo_scores(faces), None)

        self.pool.submit(job)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


@pytest.fixture
def echo() -> Iterator[EchoBackend]:
    backend = EchoBackend()
    yield backend
    backend.close()


def check_rows(scores: Scores, caller: int, k: int) -> None:
    expected = make_crops(caller, k)[:, 0, 0, :].astype(np.float32)
    if k == 0:  # the embedding width is unknown until a first batch came back
        assert scores.fake_prob.shape == (0,) and scores.embedding.shape[0] == 0
        return
    assert scores.fake_prob.shape == (k,) and scores.embedding.shape == (k, 3)
    np.testing.assert_array_equal(scores.embedding, expected)
    np.testing.assert_allclose(scores.fake_prob, expected[:, 0] / 255.0)


def test_many_threads_each_get_exactly_their_rows(echo: EchoBackend) -> None:
    settings = BatchSettings(max_size=16, max_delay_ms=3.0)
    sizes_seen: list[int] = []
    batcher = MicroBatcher(echo, settings, on_batch=lambda size, _s: sizes_seen.append(size))
    total = 0
    total_lock = threading.Lock()
    errors: list[BaseException] = []

    def caller(cid: int) -> None:
        nonlocal total
        rng = random.Random(cid)
        try:
            for _ in range(12):
                k = rng.choice([0, 1, 2, 3, 5, 8, 13, 16, 17, 40])  # includes 0 and more than max_size
                scores = batcher.submit(make_crops(cid, k)).result(timeout=10)
                check_rows(scores, cid, k)
                with total_lock:
                    total += k
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(cid,)) for cid in range(1, 13)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    batcher.close()
    assert not errors, errors[:3]
    assert sum(n for n, _f, _c in echo.batches) == total > 0, "every crop was sent exactly once"
    assert max(size for size, _f, _c in echo.batches) <= 16
    assert sorted(sizes_seen) == sorted(n for n, _f, _c in echo.batches)
    assert not any(failed for _n, failed, _c in echo.batches)
    assert any(len(c) > 1 for _n, _f, c in echo.batches), "crops of several callers never shared a batch"


def test_zero_crops_resolve_at_once(echo: EchoBackend) -> None:
    batcher = MicroBatcher(echo, BatchSettings(max_size=8, max_delay_ms=10_000))
    future = batcher.submit(np.zeros((0, 224, 224, 3), np.uint8))
    assert future.done()
    assert future.result().fake_prob.shape == (0,)
    assert echo.batches == []
    batcher.close()


def test_lone_crop_is_flushed_after_max_delay(echo: EchoBackend) -> None:
    batcher = MicroBatcher(echo, BatchSettings(max_size=32, max_delay_ms=60.0))
    start = time.monotonic()
    scores = batcher.submit(make_crops(3, 1)).result(timeout=5)
    elapsed = time.monotonic() - start
    check_rows(scores, 3, 1)
    assert 0.055 <= elapsed < 0.5
    assert [n for n, _f, _c in echo.batches] == [1]
    batcher.close()


def test_full_batch_does_not_wait_for_the_delay(echo: EchoBackend) -> None:
    batcher = MicroBatcher(echo, BatchSettings(max_size=8, max_delay_ms=10_000))
    start = time.monotonic()
    scores = batcher.submit(make_crops(4, 8)).result(timeout=5)
    assert time.monotonic() - start < 1.0
    check_rows(scores, 4, 8)
    # 20 crops with max 8: two full batches leave at once, the last 4 wait for the delay (or close).
    future = batcher.submit(make_crops(5, 20))
    time.sleep(0.2)
    assert not future.done()
    assert [n for n, _f, _c in echo.batches] == [8, 8, 8]
    batcher.close()
    check_rows(future.result(timeout=5), 5, 20)
    assert [n for n, _f, _c in echo.batches] == [8, 8, 8, 4]


def test_error_fails_exactly_the_callers_of_that_batch() -> None:
    backend = EchoBackend(delay_s=(0.0, 0.003))
    batcher = MicroBatcher(backend, BatchSettings(max_size=6, max_delay_ms=2.0))
    futures: dict[int, Future[Scores]] = {}
    ks: dict[int, int] = {}
    lock = threading.Lock()

    def caller(cid: int) -> None:
        rng = random.Random(cid)
        k = rng.randint(1, 9)
        crops = make_crops(cid, k)
        if cid % 7 == 0:
            crops[rng.randrange(k), 0, 0, 0] = POISON
        fut = batcher.submit(crops)
        with lock:
            futures[cid], ks[cid] = fut, k

    threads = [threading.Thread(target=caller, args=(cid,)) for cid in range(1, 40)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    for fut in futures.values():
        fut.exception(timeout=10)  # wait for all
    batcher.close()
    backend.close()

    failed_callers = set().union(*(c for _n, failed, c in backend.batches if failed))
    failed_callers.discard(POISON)  # the poison pixel overwrote that row's caller byte
    assert failed_callers, "no batch failed: the test did not exercise errors"
    for cid, fut in futures.items():
        if cid in failed_callers or cid % 7 == 0:
            assert isinstance(fut.exception(), InferenceError), cid
        else:
            check_rows(fut.result(), cid, ks[cid])
    assert any(failed for _n, failed, _c in backend.batches)
    assert any(not failed for _n, failed, _c in backend.batches)


class SilentBackend:
    """Accepts requests and never answers (a hung server)."""

    def __init__(self) -> None:
        self.calls = 0

    def model_info(self) -> ModelInfo:
        return ModelInfo(name="fake", version="1", weights="test")

    def infer(self, faces: np.ndarray) -> Scores:
        raise NotImplementedError

    def infer_async(self, faces: np.ndarray, callback: ScoresCallback) -> None:
        self.calls += 1

    def close(self) -> None:
        pass


def test_close_sends_queued_work_and_rejects_new_work(echo: EchoBackend) -> None:
    batcher = MicroBatcher(echo, BatchSettings(max_size=32, max_delay_ms=60_000))
    future = batcher.submit(make_crops(9, 3))
    batcher.close(timeout_s=5)
    check_rows(future.result(timeout=1), 9, 3)
    late = batcher.submit(make_crops(9, 1))
    assert isinstance(late.exception(timeout=1), InferenceError)


def test_close_fails_requests_the_backend_never_answers() -> None:
    backend = SilentBackend()
    batcher = MicroBatcher(backend, BatchSettings(max_size=4, max_delay_ms=1.0))
    future = batcher.submit(make_crops(1, 6))
    time.sleep(0.1)
    start = time.monotonic()
    batcher.close(timeout_s=0.3)
    assert time.monotonic() - start < 2.0
    assert isinstance(future.exception(timeout=1), InferenceError)
    assert backend.calls == 2


def scripted(answer: Callable[[np.ndarray, ScoresCallback], None]) -> SilentBackend:
    backend = SilentBackend()
    backend.infer_async = answer  # type: ignore[method-assign,assignment]
    return backend


def test_backend_that_raises_or_answers_wrong_rows_fails_the_batch_only() -> None:
    calls = {"n": 0}

    def answer(faces: np.ndarray, callback: ScoresCallback) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("socket closed")
        if calls["n"] == 2:  # one row short
            n = faces.shape[0] - 1
            callback(Scores(np.zeros(n, np.float32), np.zeros((n, 3), np.float32)), None)
            return
        callback(echo_scores(faces), None)

    batcher = MicroBatcher(scripted(answer), BatchSettings(max_size=4, max_delay_ms=1.0))
    first = batcher.submit(make_crops(1, 2)).exception(timeout=5)
    assert isinstance(first, InferenceError) and "socket closed" in str(first)
    second = batcher.submit(make_crops(2, 2)).exception(timeout=5)
    assert isinstance(second, InferenceError) and "rows" in str(second)
    check_rows(batcher.submit(make_crops(3, 3)).result(timeout=5), 3, 3)
    assert calls["n"] == 3, "each failure cost its own batch only"
    batcher.close()


def test_submit_validates_crops(echo: EchoBackend) -> None:
    batcher = MicroBatcher(echo, BatchSettings(max_size=4, max_delay_ms=1.0))
    with pytest.raises(ValueError):
        batcher.submit(np.zeros((2, 224, 224, 3), np.float32))
    with pytest.raises(ValueError):
        batcher.submit(np.zeros((2, 112, 112, 3), np.uint8))
    batcher.close()


class SlowBackend(EchoBackend):
    """Takes `seconds` per batch, runs at most `workers` at once, and records the most ever running."""

    def __init__(self, seconds: float, workers: int) -> None:
        super().__init__(delay_s=(seconds, seconds), workers=workers)
        self.running = 0
        self.most_running = 0

    def infer_async(self, faces: np.ndarray, callback: ScoresCallback) -> None:
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)

        def done(scores: Scores | None, error: BaseException | None) -> None:
            with self.lock:
                self.running -= 1
            callback(scores, error)

        super().infer_async(faces, done)


def test_a_slow_backend_gets_full_batches_and_no_more_requests_than_its_slots() -> None:
    backend = SlowBackend(seconds=0.05, workers=4)
    batcher = MicroBatcher(backend, BatchSettings(max_size=16, max_delay_ms=1.0), limits=BatchLimits(max_in_flight=2))
    try:
        crops = [make_crops(i, 1) for i in range(160)]  # made first: submitting is then quicker than a batch
        futures = [batcher.submit(c) for c in crops]
        for i, future in enumerate(futures):
            check_rows(future.result(timeout=30), i, 1)
        sizes = [size for size, _failed, _callers in backend.batches]
        assert sum(sizes) == 160 and backend.most_running <= 2
        # the first two leave at once with what had arrived; while both slots are busy the queue fills
        assert sorted(sizes[2:-1]) == [16] * (len(sizes) - 3), sizes
    finally:
        batcher.close()
        backend.close()


def test_preferred_batch_sizes_leave_without_waiting_and_the_model_caps_the_size(echo: EchoBackend) -> None:
    limits = BatchLimits(max_batch_size=8, preferred_batch_sizes=(4, 6, 64), max_in_flight=4)
    batcher = MicroBatcher(echo, BatchSettings(max_size=32, max_delay_ms=60_000), limits=limits)
    try:
        assert batcher.max_size == 8 and batcher.preferred == (4, 6)
        five = batcher.submit(make_crops(1, 5))
        deadline = time.monotonic() + 10
        while not echo.batches and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert [size for size, _f, _c in echo.batches] == [4], "4 of 5 leave at once, one waits for more"
        twenty = batcher.submit(make_crops(2, 20))
        check_rows(five.result(timeout=10), 1, 5)
        deadline = time.monotonic() + 10
        while sum(size for size, _f, _c in echo.batches) < 24 and time.monotonic() < deadline:
            time.sleep(0.01)
        sizes = [size for size, _f, _c in echo.batches]
        assert sizes[0] == 4 and all(s in (4, 6, 8) for s in sizes) and max(sizes) == 8, sizes
        assert not twenty.done(), "the last row waits for company (or max_delay_ms)"
    finally:
        batcher.close()
    check_rows(twenty.result(timeout=10), 2, 20)
