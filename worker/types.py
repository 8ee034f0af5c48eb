"""Plain data passed between stages. Kept apart from the stages so every stage (and `train`) can import it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

RGBImage = npt.NDArray[np.uint8]  # H x W x 3, RGB, uint8


@dataclass(frozen=True)
class Frame:
    """One sampled frame. `index` is its position in the decoded stream, `time_s` its presentation time."""

    index: int
    time_s: float
    rgb: RGBImage


@dataclass(frozen=True)
class DecodedMedia:
    kind: Literal["image", "video"]
    frames: list[Frame]
    width: int
    height: int
    container: str
    codec: str
    duration_s: float            # 0.0 for stills
    frame_count: int             # frames in the stream (estimated when the container does not say)


@dataclass(frozen=True)
class Detection:
    """A face as a detector reports it, in source-frame pixels."""

    box: tuple[float, float, float, float]        # x, y, w, h
    landmarks: npt.NDArray[np.float32] | None     # (5, 2): right eye, left eye, nose, right mouth, left mouth
    score: float


class FaceDetector(Protocol):
    """Every detector backend (yunet, scrfd, haar) answers this one call."""

    name: str

    def detect(self, rgb: RGBImage) -> list[Detection]: ...


@dataclass(frozen=True)
class FaceCrop:
    """An aligned 224x224 crop ready for the model, with where it came from."""

    frame_index: int
    time_s: float
    detection: Detection
    landmarks_estimated: bool
    crop: RGBImage                                # crop_size x crop_size x 3 uint8


@dataclass(frozen=True)
class Scores:
    """What the model returns for a batch of crops."""

    fake_prob: npt.NDArray[np.float32]            # (N,)
    embedding: npt.NDArray[np.float32]            # (N, D), L2-normalised


@dataclass
class StageTimer:
    """Milliseconds per stage for one media item, reported in the verdict's `timings_ms`."""

    timings_ms: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, ms: float) -> None:
        self.timings_ms[stage] = round(self.timings_ms.get(stage, 0.0) + ms, 3)
