"""YuNet (OpenCV `cv2.FaceDetectorYN`): the default detector, Apache-2.0 weights, boxes + 5 landmarks.

Not thread-safe: `setInputSize` and `detect` mutate the native object. Hold one per thread
(`worker.faces.factory.ThreadLocalDetector` does that). YuNet's landmark order (right eye, left eye, nose,
right and left mouth corner, "right" being the subject's) is ArcFace's left-in-image-first order.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from worker.core.settings import FaceSettings
from worker.core.types import Detection, RGBImage
from worker.faces.common import downscale, filter_detections, make_detection, to_source

_TOP_K = 5000


class YuNetDetector:
    """One `cv2.FaceDetectorYN`; frames are downscaled to `detect_max_side`, results mapped back."""

    name = "yunet"

    def __init__(self, model_path: Path, settings: FaceSettings) -> None:
        if not model_path.is_file():
            raise FileNotFoundError(f"YuNet weights not found: {model_path}")
        self._settings = settings
        self._net = cv2.FaceDetectorYN.create(
            str(model_path), "", (320, 320), settings.score_threshold, settings.nms_threshold, _TOP_K
        )
        self._input_size = (320, 320)

    def detect(self, rgb: RGBImage) -> list[Detection]:
        small, fx, fy = downscale(rgb, self._settings.detect_max_side)
        height, width = small.shape[:2]
        if self._input_size != (width, height):
            self._net.setInputSize((width, height))
            self._input_size = (width, height)
        _, faces = self._net.detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))  # trained on BGR
        if faces is None:
            return []
        rows = to_source(np.asarray(faces, dtype=np.float32)[:, :14], fx, fy)
        scores = np.asarray(faces, dtype=np.float32)[:, 14]
        found = [make_detection(row[:4], row[4:14], score) for row, score in zip(rows, scores, strict=True)]
        return filter_detections(found, self._settings)
