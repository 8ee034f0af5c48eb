"""An in-memory `InferenceBackend` for tests of everything above inference, the way httpx ships MockTransport.

It answers through the real contract checks (`check_faces`, `scores_from_outputs`) so a caller that sends
the wrong batch fails as it would against Triton, and it can be taken down and brought back to test
outages without a server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from worker.core.contracts import ModelInfo
from worker.core.types import Scores
from worker.infer.base import (
    BatchLimits,
    InferenceError,
    ScoresCallback,
    checked_or_delivered,
    deliver,
    scores_from_outputs,
)

#: Maps a checked uint8 (N, 224, 224, 3) batch to (fake_prob [N], embedding [N, D]).
Handler = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

FAKE_MODEL = ModelInfo(name="deepfake_clip", version="1", weights="fake", threshold=0.5,
                       preprocessing_version="")


def mean_pixel(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The default answer: fake_prob = mean pixel / 255 of each crop, a constant 4-wide embedding."""
    prob = faces.reshape(len(faces), -1).mean(axis=1).astype(np.float32) / 255.0
    return prob, np.full((len(faces), 4), 0.5, np.float32)


class FakeBackend:
    """Answers synchronously from `handler`; `down = True` makes every request fail as an unreachable server."""

    def __init__(self, handler: Handler = mean_pixel, model: ModelInfo = FAKE_MODEL,
                 limits: BatchLimits | None = None) -> None:
        self.handler = handler
        self.model = model
        self.limits = limits or BatchLimits()
        self.down = False
        self.batch_sizes: list[int] = []
        self.failures = 0
        self._lock = threading.Lock()

    def model_info(self) -> ModelInfo:
        return self.model

    def is_ready(self) -> bool:
        return not self.down

    def batch_limits(self) -> BatchLimits:
        return self.limits

    def infer_async(self, faces: np.ndarray, callback: ScoresCallback) -> None:
        batch = checked_or_delivered(faces, callback)
        if batch is None:
            return
        with self._lock:
            if self.down:
                self.failures += 1
                error: InferenceError | None = InferenceError("fake backend is down")
            else:
                self.batch_sizes.append(int(batch.shape[0]))
                error = None
        if error is not None:
            deliver(callback, None, error)
            return
        try:
            scores: Scores = scores_from_outputs(*self.handler(batch), int(batch.shape[0]))
        except InferenceError as exc:
            deliver(callback, None, exc)
            return
        deliver(callback, scores, None)

    def close(self) -> None:
        pass
