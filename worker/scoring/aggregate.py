"""From per-face fake probabilities to one media verdict (DESIGN.md section 1, stage 7).

Frame score = MAX over the frame's faces (one manipulated face makes the frame fake); media score = MEAN
over frames that have a face (the paper's video rule: video score = mean of frame probabilities);
`score_max` = the most suspicious frame, reported beside it. The label compares the media score with the
model's calibrated threshold; scores within `uncertain_band` of it are `uncertain`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from worker.core.contracts import FaceResult, Label, ModelInfo
from worker.core.types import FaceCrop


@dataclass(frozen=True)
class Aggregate:
    """The verdict fields the aggregation decides (the pipeline copies them into `VerdictData`)."""

    status: Literal["ok", "no_face"]
    label: Label | None
    score: float | None
    score_max: float | None
    frames_with_faces: int
    faces_count: int
    faces: list[FaceResult] = field(default_factory=list)
    frames_sampled: int = 0
    threshold: float | None = None


def label_for(score: float, threshold: float, band: float = 0.0) -> Label:
    """`uncertain` if |score - threshold| < band, else `fake` if score >= threshold, else `real`."""
    if abs(score - threshold) < band:
        return "uncertain"
    return "fake" if score >= threshold else "real"


def media_score(frame_indices: Sequence[int], face_probs: Sequence[float]) -> tuple[float, float, int]:
    """(media score, most suspicious frame's score, frames with faces) of one media item's faces.

    The one aggregation rule: frame score = max over the frame's faces, media score = mean over frames.
    Training's evaluation and calibration call this too, so a threshold calibrated offline is applied by
    the worker to exactly the score it was calibrated on. Needs at least one face.
    """
    if len(frame_indices) != len(face_probs):
        raise ValueError(f"{len(face_probs)} scores for {len(frame_indices)} faces")
    if not frame_indices:
        raise ValueError("media_score needs at least one face")
    frame_max: dict[int, float] = {}
    for frame, p in zip(frame_indices, face_probs, strict=True):
        frame_max[frame] = max(frame_max.get(frame, -math.inf), float(p))
    frame_scores = list(frame_max.values())
    return float(math.fsum(frame_scores) / len(frame_scores)), max(frame_scores), len(frame_scores)


def face_result(crop: FaceCrop, score: float) -> FaceResult:
    """The verdict's record of one face; landmarks omitted when the detector only estimated them (haar)."""
    det = crop.detection
    landmarks = None
    if det.landmarks is not None and not crop.landmarks_estimated:
        landmarks = [[float(x), float(y)] for x, y in np.asarray(det.landmarks).reshape(-1, 2)]
    return FaceResult(
        frame_index=crop.frame_index,
        time_s=float(crop.time_s),
        box=[float(v) for v in det.box],
        landmarks=landmarks,
        detector_score=float(det.score),
        score=score,
    )


def aggregate(
    crops: list[FaceCrop], fake_prob: np.ndarray, frames_sampled: int, model: ModelInfo
) -> Aggregate:
    """Aggregate per-face `fake_prob` (one per crop, same order) into media-level fields.

    Raises ValueError when the scores do not match the crops or are not finite probabilities: such a
    verdict would look confident and be wrong.
    """
    probs = np.asarray(fake_prob, dtype=np.float64).reshape(-1)
    if probs.shape[0] != len(crops):
        raise ValueError(f"{probs.shape[0]} scores for {len(crops)} face crops")
    if probs.size and (not np.all(np.isfinite(probs)) or probs.min() < 0.0 or probs.max() > 1.0):
        raise ValueError("face scores must be finite probabilities in [0, 1]")
    if not crops:
        return Aggregate(
            status="no_face", label=None, score=None, score_max=None, frames_with_faces=0, faces_count=0,
            faces=[], frames_sampled=frames_sampled, threshold=model.threshold,
        )

    score, score_max, frames_with_faces = media_score([c.frame_index for c in crops], probs.tolist())
    return Aggregate(
        status="ok",
        label=label_for(score, model.threshold, model.uncertain_band),
        score=score,
        score_max=score_max,
        frames_with_faces=frames_with_faces,
        faces_count=len(crops),
        faces=[face_result(c, float(p)) for c, p in zip(crops, probs, strict=True)],
        frames_sampled=frames_sampled,
        threshold=model.threshold,
    )
