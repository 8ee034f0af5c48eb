"""The one interface every inference backend (Triton over gRPC, local ONNX Runtime) answers.

The model contract (DESIGN.md section 2): input `faces` UINT8 [N, 224, 224, 3] RGB aligned crops; outputs
`fake_prob` FP32 [N] and `embedding` FP32 [N, D]. The helpers here hold the checks both backends share, so a
malformed answer fails the same way whichever backend produced it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from worker.core.contracts import ModelInfo
from worker.core.model_config import CROP_SHAPE, INPUT_NAME, OUTPUT_EMBEDDING, OUTPUT_FAKE_PROB  # noqa: F401 (re-exported)
from worker.core.types import Scores

log = logging.getLogger(__name__)


#: Called exactly once per `infer_async` request, from a backend thread: (scores, None) or (None, error).
ScoresCallback = Callable[[Scores | None, BaseException | None], None]


class InferenceError(Exception):
    """Inference failed or the server is unreachable; maps to the `inference_failed` error code.

    `retriable` (the default) means the server may answer later (unreachable, restarting, overloaded): the
    pipeline waits for it. False means the answer itself is wrong (bad shape, NaN): retrying cannot help.
    """

    def __init__(self, message: str, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable


@dataclass(frozen=True)
class BatchLimits:
    """What the micro-batcher may send: from the served model's config and the backend's request bound.

    `max_batch_size` 0 means unknown (the worker's `batch.max_size` alone decides); `preferred_batch_sizes`
    are the model config's `dynamic_batching.preferred_batch_size` (sizes worth sending without waiting);
    `max_in_flight` is how many requests the backend runs at once (0: it does not say).
    """

    max_batch_size: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_in_flight: int = 0


def limits_from_config(config: Any, max_in_flight: int) -> BatchLimits:
    """`BatchLimits` of a Triton `ModelConfig` message (see `worker.core.model_config.parse_config`)."""
    return BatchLimits(
        max_batch_size=int(config.max_batch_size),
        preferred_batch_sizes=tuple(int(b) for b in config.dynamic_batching.preferred_batch_size),
        max_in_flight=max_in_flight,
    )


@runtime_checkable
class InferenceBackend(Protocol):
    def model_info(self) -> ModelInfo:
        """What the served model is (name, version, weights, calibrated threshold); read once at start-up."""
        ...

    def is_ready(self) -> bool:
        """Whether the backend can answer now (for /readyz and for probing during an outage). Never raises."""
        ...

    def batch_limits(self) -> BatchLimits:
        """Batch sizes the served model takes and how many requests the backend runs at once."""
        ...

    def infer_async(self, faces: np.ndarray, callback: ScoresCallback) -> None:
        """Start inference and return; `callback` gets the result or an InferenceError later, once.

        May block while the backend's own in-flight bound is reached (that is the backpressure).
        """
        ...

    def close(self) -> None: ...


def check_faces(faces: np.ndarray) -> np.ndarray:
    """The batch as the model wants it (C-contiguous uint8 (N, 224, 224, 3)); a non-retriable InferenceError if not."""
    if not isinstance(faces, np.ndarray):
        raise InferenceError(f"faces must be a numpy array, got {type(faces).__name__}", retriable=False)
    if faces.dtype != np.uint8:
        raise InferenceError(f"faces must be uint8, got {faces.dtype}", retriable=False)
    if faces.ndim != 4 or faces.shape[1:] != CROP_SHAPE:
        raise InferenceError(f"faces must have shape (N, 224, 224, 3), got {faces.shape}", retriable=False)
    return np.ascontiguousarray(faces)


def checked_or_delivered(faces: np.ndarray, callback: ScoresCallback) -> np.ndarray | None:
    """`check_faces` for `infer_async`: the batch, or None once `callback` has been given the error."""
    try:
        return check_faces(faces)
    except InferenceError as exc:
        deliver(callback, None, exc)
        return None


def scores_from_outputs(fake_prob: np.ndarray | None, embedding: np.ndarray | None, n: int) -> Scores:
    """Validate raw model outputs for a batch of `n`: fake_prob [N] or [N, 1] -> [N]; embedding [N, D]."""
    if fake_prob is None or embedding is None:
        pairs = ((OUTPUT_FAKE_PROB, fake_prob), (OUTPUT_EMBEDDING, embedding))
        missing = [name for name, arr in pairs if arr is None]
        raise InferenceError(f"model answer lacks output(s) {missing}", retriable=False)
    prob = np.asarray(fake_prob, dtype=np.float32)
    if prob.ndim == 2 and prob.shape[1] == 1:
        prob = prob[:, 0]
    if prob.shape != (n,):
        raise InferenceError(f"{OUTPUT_FAKE_PROB} has shape {prob.shape}, expected ({n},) or ({n}, 1)", retriable=False)
    if not np.all(np.isfinite(prob)):  # a NaN would otherwise become a confident-looking verdict
        raise InferenceError(f"{OUTPUT_FAKE_PROB} contains non-finite values", retriable=False)
    emb = np.asarray(embedding, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise InferenceError(f"{OUTPUT_EMBEDDING} has shape {emb.shape}, expected ({n}, D)", retriable=False)
    return Scores(fake_prob=np.ascontiguousarray(prob), embedding=np.ascontiguousarray(emb))


def empty_scores(dim: int = 0) -> Scores:
    """Scores for zero crops."""
    return Scores(fake_prob=np.zeros((0,), np.float32), embedding=np.zeros((0, dim), np.float32))


def deliver(callback: ScoresCallback, scores: Scores | None, error: BaseException | None) -> None:
    """Call back, logging (not losing in a backend thread) whatever the callback raises."""
    try:
        callback(scores, error)
    except Exception:
        log.exception("inference callback raised")


def deliver_computed(callback: ScoresCallback, compute: Callable[[], Scores], failure: str) -> None:
    """Run `compute` and call back with its scores, or with an InferenceError (unexpected ones prefixed `failure`)."""
    try:
        scores = compute()
    except InferenceError as exc:
        deliver(callback, None, exc)
        return
    except Exception as exc:
        deliver(callback, None, InferenceError(f"{failure}: {exc}", retriable=False))
        return
    deliver(callback, scores, None)


def infer_blocking(backend: InferenceBackend, faces: np.ndarray, timeout_s: float = 60.0) -> Scores:
    """Scores for `faces`, waiting for the backend's one callback (tools and tests; the worker never blocks)."""
    from concurrent.futures import Future

    answer: Future[Scores] = Future()

    def done(scores: Scores | None, error: BaseException | None) -> None:
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(scores if scores is not None else empty_scores())

    backend.infer_async(faces, done)
    return answer.result(timeout=timeout_s)
