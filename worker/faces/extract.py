"""Stage 4, faces: detect on every sampled frame and align each face into the model's crop."""

from __future__ import annotations

from worker.faces.align import align_face, landmarks_from_box
from worker.settings import FaceSettings
from worker.types import FaceCrop, FaceDetector, Frame


def extract_faces(frames: list[Frame], detector: FaceDetector, settings: FaceSettings) -> list[FaceCrop]:
    """Aligned crops of up to `max_faces_per_frame` faces per frame, in frame order, best face first.

    A detection without landmarks (Haar) is aligned on template landmarks placed in its box, and its crop
    says `landmarks_estimated=True`.
    """
    crops: list[FaceCrop] = []
    for frame in frames:
        for detection in detector.detect(frame.rgb)[: max(0, settings.max_faces_per_frame)]:
            landmarks = detection.landmarks
            estimated = landmarks is None
            if landmarks is None:
                landmarks = landmarks_from_box(detection.box)
            crop = align_face(frame.rgb, landmarks, settings.crop_size, settings.crop_scale)
            crops.append(
                FaceCrop(
                    frame_index=frame.index,
                    time_s=frame.time_s,
                    detection=detection,
                    landmarks_estimated=estimated,
                    crop=crop,
                )
            )
    return crops
