"""What every detector backend does the same way: downscale before detecting, filter and order after."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from worker.core.settings import FaceSettings
from worker.core.types import Detection, RGBImage


def downscale(rgb: RGBImage, max_side: int) -> tuple[RGBImage, float, float]:
    """`rgb` shrunk so its longest side is at most `max_side`, with the x and y factors applied (1.0: as is).

    Detection cost grows with pixels, and faces worth judging stay detectable at 640 px.
    """
    height, width = rgb.shape[:2]
    longest = max(height, width)
    if max_side <= 0 or longest <= max_side:
        return rgb, 1.0, 1.0
    factor = max_side / longest
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    small = np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    return small, size[0] / width, size[1] / height


def to_source(
    values: npt.ArrayLike, fx: float, fy: float
) -> npt.NDArray[np.float32]:
    """Map (..., 2k) interleaved x, y values from the downscaled frame back to source pixels."""
    array = np.asarray(values, dtype=np.float32).copy()
    array[..., 0::2] /= fx
    array[..., 1::2] /= fy
    return array


def make_detection(box: npt.ArrayLike, landmarks: npt.ArrayLike | None, score: float) -> Detection:
    x, y, w, h = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    points = None if landmarks is None else np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    return Detection(box=(x, y, w, h), landmarks=points, score=float(score))


def filter_detections(
    detections: list[Detection], settings: FaceSettings, use_score: bool = True
) -> list[Detection]:
    """Best first, the faces with both sides >= min_face_px and a score >= score_threshold
    (`use_score=False` for backends whose score is not a confidence). Every such face is returned: the caps
    on how many are scored apply later (`worker.faces.extract`), so dropped faces can be counted."""
    kept = [
        d
        for d in detections
        if (not use_score or d.score >= settings.score_threshold)
        and min(d.box[2], d.box[3]) >= settings.min_face_px
    ]
    kept.sort(key=lambda d: d.score, reverse=True)
    return kept
