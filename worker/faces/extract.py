"""Stage 4, faces: detect on every sampled frame, keep what the caps allow, align each kept face."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from worker.core.settings import FaceSettings
from worker.core.types import Detection, FaceCrop, FaceDetector, Frame
from worker.faces.align import align_face, landmarks_from_box


@dataclass(frozen=True)
class ExtractedFaces:
    """The aligned crops, and how many detected faces the caps left unscored."""

    crops: list[FaceCrop]
    dropped: int = 0


def _area(detection: Detection) -> float:
    return detection.box[2] * detection.box[3]


def _ranked(faces: list[Detection]) -> list[Detection]:
    return sorted(faces, key=lambda d: (_area(d), d.score), reverse=True)


def select_faces(found: list[list[Detection]], settings: FaceSettings) -> tuple[list[list[Detection]], int]:
    """The faces to score per frame (largest first) and how many detected faces were dropped.

    Each frame keeps its largest `max_faces_per_frame` faces (a bigger face carries more evidence, a face
    too small to judge goes first). When all frames together hold more than `max_faces_per_media`, every
    frame's allowance shrinks evenly instead of keeping the largest faces overall, so each frame with a face
    still counts in the media score (the mean over frames); only with more frames than the cap do frames
    keep one face each, those with the largest faces first.
    """
    ranked = [_ranked(faces) for faces in found]
    limit = max(0, settings.max_faces_per_media)
    allowance = max(0, settings.max_faces_per_frame)
    while allowance > 1 and sum(min(allowance, len(faces)) for faces in ranked) > limit:
        allowance -= 1
    kept = [faces[:allowance] for faces in ranked]
    if sum(len(faces) for faces in kept) > limit:  # more frames with a face than the cap
        order = sorted((i for i, faces in enumerate(kept) if faces), key=lambda i: _area(kept[i][0]), reverse=True)
        chosen = set(order[:limit])
        kept = [faces if i in chosen else [] for i, faces in enumerate(kept)]
    dropped = sum(len(faces) for faces in found) - sum(len(faces) for faces in kept)
    return kept, dropped


def extract_faces_counted(frames: Iterable[Frame], detector: FaceDetector, settings: FaceSettings) -> ExtractedFaces:
    """Aligned crops of the faces the caps keep, in frame order and largest first within a frame.

    One pass, one RGB frame at a time: each frame is detected and its candidates (the largest
    `max_faces_per_frame`, a superset of what the caps can keep) aligned while its pixels are at hand, so
    no frame is converted twice and no RGB frame outlives its turn. Pass an iterator that lets go of each
    frame (`drain`) and the decoder's pixels go too. A detection without landmarks (Haar) is aligned on
    template landmarks placed in its box, and its crop says `landmarks_estimated=True`.
    """
    found: list[list[Detection]] = []
    candidates: dict[tuple[int, int], FaceCrop] = {}  # (frame position, id(detection)): alive in `found`
    for position, frame in enumerate(frames):
        rgb = frame.rgb
        detections = detector.detect(rgb)
        found.append(detections)
        for detection in _ranked(detections)[: max(0, settings.max_faces_per_frame)]:
            landmarks = detection.landmarks
            estimated = landmarks is None
            if landmarks is None:
                landmarks = landmarks_from_box(detection.box)
            crop = align_face(rgb, landmarks, settings.crop_size, settings.crop_scale)
            candidates[position, id(detection)] = FaceCrop(
                frame_index=frame.index, time_s=frame.time_s, detection=detection,
                landmarks_estimated=estimated, crop=crop)
        del rgb, frame
    kept, dropped = select_faces(found, settings)
    crops = [candidates[position, id(d)] for position, detections in enumerate(kept) for d in detections]
    return ExtractedFaces(crops=crops, dropped=dropped)


def drain(frames: list[Frame]) -> Iterable[Frame]:
    """Hand out `frames` front to back, removing each from the list, so each is freed once it is used."""
    frames.reverse()
    while frames:
        yield frames.pop()


def extract_faces(frames: Iterable[Frame], detector: FaceDetector, settings: FaceSettings) -> list[FaceCrop]:
    """The crops of `extract_faces_counted`, for callers that do not report dropped faces (training)."""
    return extract_faces_counted(frames, detector, settings).crops
