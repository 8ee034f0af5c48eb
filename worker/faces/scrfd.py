"""SCRFD (insightface model zoo): boxes + 5 keypoints in ArcFace order. Weights are non-commercial.

insightface is imported lazily: it is an optional extra (`dfmod[scrfd]`) and slow to import. SCRFD
letterboxes every frame into a square input of `detect_max_side` (rounded up to a multiple of 32) itself,
and reports boxes in source pixels. One instance per thread (its ONNX session is shared state we do not own).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from worker.faces.common import filter_detections, make_detection
from worker.settings import FaceSettings
from worker.types import Detection, RGBImage


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
        self._input_size = (side, side)
        self._model: Any = get_model(str(model_path), providers=["CPUExecutionProvider"])
        if self._model is None:
            raise RuntimeError(f"insightface does not recognise {model_path} as a model")
        self._model.prepare(
            ctx_id=-1, input_size=self._input_size, det_thresh=settings.score_threshold,
            nms_thresh=settings.nms_threshold,
        )

    def detect(self, rgb: RGBImage) -> list[Detection]:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)  # insightface models take BGR
        boxes, keypoints = self._model.detect(bgr, input_size=self._input_size)
        found = []
        for i, row in enumerate(np.asarray(boxes, dtype=np.float32)):
            x1, y1, x2, y2, score = (float(v) for v in row[:5])
            landmarks = None if keypoints is None else keypoints[i]
            found.append(make_detection((x1, y1, x2 - x1, y2 - y1), landmarks, score))
        return filter_detections(found, self._settings)
