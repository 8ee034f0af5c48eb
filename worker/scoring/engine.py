"""The scoring engine: the parts behind a verdict, built in one place and closed in reverse order.

backend -> contract check -> micro-batcher -> cache (and the near-duplicate index on it) -> pipeline.
`dfmod worker` and `dfmod scan` both get their pipeline here, so they cannot drift apart in how the parts
are wired; only the backend (Triton or ONNX Runtime) and whether a cache is attached differ.
"""

from __future__ import annotations

import logging
from types import TracebackType

from worker.core.contracts import ModelInfo
from worker.core.model_config import check_preprocessing
from worker.core.retry import Breaker
from worker.core.settings import WorkerSettings
from worker.core.types import FaceDetector
from worker.core.version import pipeline_version
from worker.infer.base import InferenceBackend
from worker.infer.batcher import BatchHook, MicroBatcher
from worker.obs import metrics
from worker.scoring.budget import Budget
from worker.scoring.cache import VerdictCache
from worker.scoring.hashlist import HashLists
from worker.scoring.neardup import NearDuplicateIndex
from worker.scoring.pipeline import MediaPipeline

log = logging.getLogger(__name__)


def _record_batch(size: int, seconds: float) -> None:
    metrics.BATCH_SIZE.observe(size)
    metrics.INFER_SECONDS.observe(seconds)


def _record_breaker(open_: bool) -> None:
    metrics.BREAKER_OPEN.labels("inference").set(1 if open_ else 0)
    log.warning("inference is down: taking no new work" if open_ else "inference is back: taking work again")


def _record_cache(kind: str) -> None:
    metrics.CACHE.labels(kind).inc()
    if kind in ("hit", "miss", "error"):  # Redis answered (or failed) just now; "skip" says nothing new
        metrics.CACHE_AVAILABLE.set(0 if kind == "error" else 1)


class Engine:
    """Owns the backend and everything built on it. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        settings: WorkerSettings,
        backend: InferenceBackend,
        use_cache: bool = True,
        on_batch: BatchHook | None = _record_batch,
        detector: FaceDetector | None = None,
    ) -> None:
        self.backend = backend
        try:
            self.model: ModelInfo = backend.model_info()
            check_preprocessing(self.model)  # a model trained on other crops would give meaningless scores
            self.breaker = Breaker("inference", on_change=_record_breaker)
            self.batcher = MicroBatcher(backend, settings.batch, on_batch=on_batch, limits=backend.batch_limits())
        except BaseException:
            backend.close()
            raise
        self.cache = (
            VerdictCache(settings.cache, on_event=_record_cache)
            if use_cache else None
        )
        self.near_index = (
            NearDuplicateIndex.for_model(self.cache, settings.near_duplicate, self.model,
                                         pipeline_version(settings.decode.sampling))
            if self.cache is not None and self.cache.enabled and settings.near_duplicate.mode != "off" else None
        )
        self.hash_lists = (
            HashLists(self.cache, settings.near_duplicate)
            if self.cache is not None and self.cache.enabled and settings.near_duplicate.lists != "off" else None
        )
        self.pipeline = MediaPipeline(
            settings, self.batcher, self.model, self.cache, detector=detector,
            breaker=self.breaker, budget=Budget(settings.max_in_flight_bytes, "bytes"),
            face_budget=Budget(settings.max_faces_in_flight, "faces"), near_index=self.near_index,
            hash_lists=self.hash_lists,
        )

    def close(self) -> None:
        """Stop in-flight work (answered `Stopped`, never a verdict), then close pipeline -> cache -> batcher ->
        backend (the reverse of building)."""
        self.pipeline.stop()
        if self.cache is not None:
            self.cache.close()
        self.batcher.close()
        self.backend.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
