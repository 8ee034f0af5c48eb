"""SCRFD's aspect-preserving input: the same faces as the square letterbox, from fewer pixels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from worker.core.settings import FaceSettings
from worker.core.types import RGBImage
from worker.faces.scrfd import ScrfdDetector, input_size


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [(1280, 720, (640, 384)), (720, 1280, (384, 640)), (512, 512, (640, 640)), (1920, 1080, (640, 384)),
     (4000, 100, (640, 32)), (320, 240, (640, 480))],
)
def test_input_keeps_the_aspect_ratio_in_multiples_of_32(width: int, height: int, expected: tuple[int, int]) -> None:
    assert input_size(width, height, 640) == expected


def wide_frame(face: RGBImage) -> RGBImage:
    """A 1280x720 frame with two faces of different sizes on a plain background."""
    frame = np.full((720, 1280, 3), 110, np.uint8)
    frame[100:612, 80:592] = face
    small = cv2.resize(face, (256, 256), interpolation=cv2.INTER_AREA)
    frame[300:556, 900:1156] = small
    return frame


def square_letterbox(model_path: Path, rgb: RGBImage, settings: FaceSettings) -> np.ndarray:
    """What the detector found before: insightface's own call with a 640x640 input."""
    from insightface.model_zoo import get_model

    model = get_model(str(model_path), providers=["CPUExecutionProvider"])
    model.prepare(ctx_id=-1, input_size=(640, 640), det_thresh=settings.score_threshold,
                  nms_thresh=settings.nms_threshold)
    boxes, _ = model.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), input_size=(640, 640))
    return np.asarray(boxes, dtype=np.float32)


@pytest.mark.needs_shared  # SCRFD weights: a user-supplied extra (non-commercial terms), never shipped
@pytest.mark.parametrize("frame", ["astronaut", "16:9 two faces"])
def test_same_boxes_as_the_square_letterbox(models_dir: Path, astronaut_rgb: RGBImage, frame: str) -> None:
    rgb = np.ascontiguousarray(astronaut_rgb) if frame == "astronaut" else wide_frame(np.asarray(astronaut_rgb))
    settings = FaceSettings(backend="scrfd", weights_dir=models_dir)
    path = models_dir / settings.scrfd_file
    found = ScrfdDetector(path, settings).detect(rgb)
    before = square_letterbox(path, rgb, settings)
    before = before[before[:, 4] >= settings.score_threshold]
    assert len(found) == len(before) == (1 if frame == "astronaut" else 2)
    ours = sorted((d.box[0], d.box[1], d.box[0] + d.box[2], d.box[1] + d.box[3], d.score) for d in found)
    theirs = sorted(tuple(float(v) for v in row) for row in before)
    for a, b in zip(ours, theirs, strict=True):
        assert np.allclose(a[:4], b[:4], atol=2.0), (a, b)   # pixels of the source frame
        assert a[4] == pytest.approx(b[4], abs=0.02)
