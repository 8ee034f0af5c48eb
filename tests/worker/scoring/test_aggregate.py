"""Aggregation rules: frame = max over its faces, media = mean over frames with a face, labels with a band."""

from __future__ import annotations

import numpy as np
import pytest

from worker.core.contracts import ModelInfo
from worker.core.types import Detection, FaceCrop
from worker.scoring.aggregate import aggregate, label_for

MODEL = ModelInfo(name="deepfake_clip", version="1", weights="test", threshold=0.5, uncertain_band=0.0)
BLANK = np.zeros((224, 224, 3), np.uint8)


def crop(frame: int, estimated: bool = False, with_landmarks: bool = True) -> FaceCrop:
    landmarks = np.arange(10, dtype=np.float32).reshape(5, 2) + frame if with_landmarks else None
    det = Detection(box=(10.0 + frame, 20.0, 30.0, 40.0), landmarks=landmarks, score=0.9)
    return FaceCrop(
        frame_index=frame, time_s=frame / 25.0, detection=det, landmarks_estimated=estimated, crop=BLANK
    )


def test_frame_max_then_media_mean() -> None:
    # frame 0: faces 0.2, 0.8 -> 0.8; frame 3: 0.1 -> 0.1; frame 7: 0.3, 0.45, 0.4 -> 0.45
    crops = [crop(0), crop(0), crop(3), crop(7), crop(7), crop(7)]
    probs = np.array([0.2, 0.8, 0.1, 0.3, 0.45, 0.4], np.float32)
    agg = aggregate(crops, probs, frames_sampled=32, model=MODEL)
    assert agg.status == "ok"
    assert agg.score == pytest.approx((0.8 + 0.1 + 0.45) / 3, abs=1e-6)  # 0.45; the mean over faces is 0.375
    assert agg.score_max == pytest.approx(0.8, abs=1e-6)
    assert agg.frames_with_faces == 3
    assert agg.faces_count == 6
    assert agg.label == "real"
    assert [f.score for f in agg.faces] == pytest.approx(probs.tolist(), abs=1e-6)
    assert [f.frame_index for f in agg.faces] == [0, 0, 3, 7, 7, 7]


def test_mean_is_over_frames_not_faces() -> None:
    # Many faces in one frame must not outweigh a frame with a single face.
    crops = [crop(0)] * 4 + [crop(1)]
    probs = np.array([0.75, 0.75, 0.75, 0.75, 0.25], np.float32)  # exact in binary: the mean is 0.5
    agg = aggregate(crops, probs, frames_sampled=2, model=MODEL)
    assert agg.score == pytest.approx(0.5, abs=1e-6)
    assert agg.label == "fake"  # score == threshold counts as fake; the mean over faces would be 0.65


def test_no_face() -> None:
    agg = aggregate([], np.zeros((0,), np.float32), frames_sampled=32, model=MODEL)
    assert (agg.status, agg.label, agg.score, agg.score_max) == ("no_face", None, None, None)
    assert (agg.frames_with_faces, agg.faces_count, agg.faces) == (0, 0, [])


def test_uncertain_band_uses_model_parameters() -> None:
    model = MODEL.model_copy(update={"threshold": 0.4, "uncertain_band": 0.1})

    def label(p: float) -> str | None:
        return aggregate([crop(0)], np.array([p], np.float32), 1, model).label
    assert label(0.45) == "uncertain"
    assert label(0.31) == "uncertain"
    assert label(0.55) == "fake"
    assert label(0.2) == "real"


@pytest.mark.parametrize(
    ("score", "threshold", "band", "expected"),
    [
        (0.5, 0.5, 0.0, "fake"),
        (0.4999, 0.5, 0.0, "real"),
        (0.9, 0.5, 0.0, "fake"),
        (0.55, 0.5, 0.1, "uncertain"),
        (0.45, 0.5, 0.1, "uncertain"),
        (0.5, 0.5, 0.1, "uncertain"),
        (0.75, 0.5, 0.25, "fake"),   # |d| == band is outside the band
        (0.25, 0.5, 0.25, "real"),
        (0.65, 0.5, 0.1, "fake"),
        (0.35, 0.5, 0.1, "real"),
    ],
)
def test_label_for(score: float, threshold: float, band: float, expected: str) -> None:
    assert label_for(score, threshold, band) == expected


def test_face_results_and_aggregate_fields() -> None:
    crops = [crop(2), crop(5, estimated=True), crop(6, with_landmarks=False)]
    agg = aggregate(crops, np.array([0.7, 0.9, 0.8], np.float32), frames_sampled=8, model=MODEL)
    first, estimated, none = agg.faces
    assert first.box == [12.0, 20.0, 30.0, 40.0]
    assert first.landmarks == [[2.0, 3.0], [4.0, 5.0], [6.0, 7.0], [8.0, 9.0], [10.0, 11.0]]
    assert first.time_s == pytest.approx(0.08)
    assert first.detector_score == pytest.approx(0.9)
    assert estimated.landmarks is None and none.landmarks is None
    assert agg.threshold == 0.5 and agg.frames_sampled == 8
    assert agg.label == "fake" and agg.faces_count == 3
    assert agg.score == pytest.approx(0.8, abs=1e-6)


@pytest.mark.parametrize("probs", [[0.5], [0.1, np.nan], [0.2, 1.5]])
def test_bad_scores_raise(probs: list[float]) -> None:
    crops = [crop(0), crop(1)]
    with pytest.raises(ValueError):
        aggregate(crops, np.array(probs, np.float32), 2, MODEL)
