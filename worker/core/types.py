"""Plain data passed between stages. Kept apart from the stages so every stage (and `train`) can import it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from worker.core.settings import Sampling

RGBImage = npt.NDArray[np.uint8]  # H x W x 3, RGB, uint8
LumaPlane = npt.NDArray[np.uint8]  # H x W, the decoder's Y

#: How a video's frames were chosen (DecodeSettings.sampling): the exact evenly spaced frames, or keyframes.


class Frame:
    """One sampled frame. `index` is its position in the decoded stream, `time_s` its presentation time.

    Its pixels are either an RGB array or a `convert` that makes one: decoded video frames stay in the
    decoder's YUV 4:2:0 (half the bytes of RGB) until a stage reads `rgb`, and each read converts again, so
    a stage reads it once. Holding 32 RGB frames per item was the bulk of a worker's memory (1080p: 200 MB).
    `luma`, where the decoder has one, reads its Y plane without converting (the perceptual hash needs only that).
    """

    __slots__ = ("_convert", "_luma", "_rgb", "index", "time_s")

    def __init__(self, index: int, time_s: float, rgb: RGBImage | None = None,
                 convert: Callable[[], RGBImage] | None = None,
                 luma: Callable[[], LumaPlane | None] | None = None) -> None:
        if (rgb is None) == (convert is None):
            raise ValueError("a Frame takes either rgb or convert")
        self.index, self.time_s, self._rgb, self._convert, self._luma = index, time_s, rgb, convert, luma

    def luma_plane(self) -> LumaPlane | None:
        """The decoder's 8-bit luma (H x W, a view of its buffer) without an RGB conversion, where it has one."""
        return self._luma() if self._luma is not None else None

    @property
    def rgb(self) -> RGBImage:
        """H x W x 3 uint8; converted on each read when the frame holds decoder pixels."""
        if self._rgb is not None:
            return self._rgb
        assert self._convert is not None
        return self._convert()

    def __repr__(self) -> str:
        return f"Frame(index={self.index}, time_s={self.time_s:.3f})"


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
    #: how the frames were chosen: "exact" (the N evenly spaced frames) or "keyframes" (DecodeSettings.sampling,
    #: when the seeking path could apply it)
    sampling: Sampling = "exact"


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
