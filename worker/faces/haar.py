"""Haar cascade (OpenCV): the fallback detector that needs no model download. Boxes only, no landmarks.

Needs `cv2.CascadeClassifier`, which OpenCV 4.x ships with its cascade files (`cv2.data.haarcascades`).
OpenCV 5 moved the cascade classifier to opencv-contrib (the project depends on
opencv-contrib-python-headless) and ships no cascade files; there the cascade is looked up in `weights_dir`,
then in Debian's `opencv-data` folders, and a missing class or file is a clear error at start-up.

Its score: the cascade has no confidence, only the last stage's weight sum `w` (`detectMultiScale3`).
We report `1 / (1 + exp(-(w - 2)))`, a monotone squash chosen so that the default threshold 0.6 keeps clear
faces (w > ~2.4; frontal faces score 5-8) and drops weak hits (w < 1). It is not a calibrated probability.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from worker.core.settings import FaceSettings
from worker.core.types import Detection, RGBImage
from worker.faces.common import downscale, filter_detections, make_detection, to_source

HAAR_FILE = "haarcascade_frontalface_default.xml"
_WEIGHT_OFFSET = 2.0
#: Debian's `opencv-data` package (installed by deploy/local/system-deps.sh) puts the cascades here.
DEBIAN_CASCADE_DIRS = ("/usr/share/opencv4/haarcascades", "/usr/share/opencv/haarcascades")


def haar_supported() -> bool:
    """Whether this OpenCV build has the cascade classifier (4.x does; 5.x only with opencv-contrib)."""
    return hasattr(cv2, "CascadeClassifier")


def require_cascade_classifier() -> None:
    """Raise a RuntimeError that says what to install when this OpenCV has no cascade classifier."""
    if not haar_supported():
        raise RuntimeError(
            f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 moved it to opencv-contrib): "
            "install opencv-python-headless<5 or opencv-contrib-python-headless, or use the yunet backend"
        )


def cascade_candidates(weights_dir: Path) -> list[Path]:
    """Where the cascade file is looked for: OpenCV's bundled data, `weights_dir`, Debian's opencv-data."""
    candidates = []
    bundled = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if bundled:
        candidates.append(Path(bundled) / HAAR_FILE)
    candidates.append(Path(weights_dir) / HAAR_FILE)
    candidates += [Path(d) / HAAR_FILE for d in DEBIAN_CASCADE_DIRS]
    return candidates


class HaarDetector:
    """One `cv2.CascadeClassifier` (not documented as thread-safe: hold one per thread)."""

    name = "haar"

    def __init__(self, cascade_path: Path, settings: FaceSettings) -> None:
        require_cascade_classifier()
        classifier: Any = getattr(cv2, "CascadeClassifier")  # noqa: B009  (absent from OpenCV 5 stubs)
        self._cascade = classifier(str(cascade_path))
        if self._cascade.empty():
            raise FileNotFoundError(f"cannot load a Haar cascade from {cascade_path}")
        self._settings = settings

    def detect(self, rgb: RGBImage) -> list[Detection]:
        small, fx, fy = downscale(rgb, self._settings.detect_max_side)
        gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        min_side = max(1, math.floor(self._settings.min_face_px * min(fx, fy)))
        boxes, _levels, weights = self._cascade.detectMultiScale3(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side), outputRejectLevels=True
        )
        if len(boxes) == 0:
            return []
        rows = to_source(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), fx, fy)
        scores = 1.0 / (1.0 + np.exp(-(np.asarray(weights, dtype=np.float64).reshape(-1) - _WEIGHT_OFFSET)))
        found = [make_detection(row, None, score) for row, score in zip(rows, scores, strict=True)]
        return filter_detections(found, self._settings)
