"""SCRFD (insightface model zoo): boxes + 5 keypoints in ArcFace order. Weights are non-commercial.

insightface is imported lazily: it is an optional extra (`dfmod[scrfd]`) and slow to import. SCRFD
scales every frame so its longest side is `detect_max_side` (rounded up to a multiple of 32) and pads it
into its input, reporting boxes in source pixels. The input keeps the frame's aspect ratio (the short side
rounded up to a multiple of 32, the network's largest stride), so a 16:9 frame is 640x384, not padded into
640x640: the same scale, so the same detections, for ~40 % fewer pixels. One instance per thread (its ONNX
session is shared state we do not own).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from worker.core.settings import FaceSettings
from worker.core.types import Detection, RGBImage
from worker.faces.common import filter_detections, make_detection


class ScrfdDetector:
    """One insightface SCRFD model on onnxruntime's CPU provider."""

    name = "scrfd"

    def __init__(self, model_path: Path, settings: FaceSettings) -> None:
        if not model_path.is_file():
            raise FileNotFoundError(f"SCRFD weights not found: {model_path}")
        try:
            from insightface.model_zoo import get_model
        except ImportError as exc:
            raise RuntimeError("the scrfd backend needs insightface: pip install 'dfmod[scrfd]'") from exc
        side = max(32, math.ceil(settings.detect_max_side / 32) * 32)
        self._settings = settings
        self._side = side
        self._model: Any = get_model(str(model_path), providers=["CPUExecutionProvider"])
        if self._model is None:
            raise RuntimeError(f"insightface does not recognise {model_path} as a model")
        self._model.prepare(
            ctx_id=-1, input_size=(side, side), det_thresh=settings.score_threshold,
            nms_thresh=settings.nms_threshold,
        )

    def detect(self, rgb: RGBImage) -> list[Detection]:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)  # insightface models take BGR
        boxes, keypoints = self._model.detect(bgr, input_size=input_size(rgb.shape[1], rgb.shape[0], self._side))
        found = []
        for i, row in enumerate(np.asarray(boxes, dtype=np.float32)):
            x1, y1, x2, y2, score = (float(v) for v in row[:5])
            landmarks = None if keypoints is None else keypoints[i]
            found.append(make_detection((x1, y1, x2 - x1, y2 - y1), landmarks, score))
        return filter_detections(found, self._settings)


#: The network's largest feature stride: input sides must be multiples of it.
STRIDE = 32


def input_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) of the detector input for a frame: the long side `side`, the short one scaled alike,
    rounded up to a multiple of `STRIDE` (insightface scales the frame to fit and pads the rest)."""
    long, short = max(width, height), min(width, height)
    scaled = max(STRIDE, math.ceil(side * short / max(1, long) / STRIDE) * STRIDE)
    return (side, scaled) if width >= height else (scaled, side)
