"""Face detectors on a real face, and the aligned crops extracted from them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pytest

from worker.cli import demo_media as samples
from worker.core.settings import DecodeSettings, FaceSettings
from worker.core.types import Detection, FaceDetector, Frame, RGBImage
from worker.faces.align import crop_template, estimate_similarity
from worker.faces.extract import extract_faces, extract_faces_counted, select_faces
from worker.faces.factory import DetectorWeightsMissing, ThreadLocalDetector, create_detector
from worker.media.decode import decode_media

#: Where YuNet finds the astronaut's face (x, y, w, h): worker/faces/weights/README.md's model on data.astronaut().
ASTRONAUT_BOX = (178.0, 65.0, 91.0, 111.0)
Backend = Literal["yunet", "scrfd", "haar"]
#: SCRFD's weights are user-supplied (non-commercial terms), so its cases need the optional extras.
LANDMARK_BACKENDS = ["yunet", pytest.param("scrfd", marks=pytest.mark.needs_shared)]


class _Detectors(dict[str, FaceDetector]):
    """Detectors built on first use, so a deselected backend's weights are never asked for."""

    def __init__(self, models_dir: Path) -> None:
        super().__init__()
        self._models_dir = models_dir

    def __missing__(self, backend: Backend) -> FaceDetector:
        detector = self[backend] = create_detector(FaceSettings(backend=backend, weights_dir=self._models_dir))
        return detector


@pytest.fixture(scope="module")
def detectors(models_dir: Path) -> dict[str, FaceDetector]:
    return _Detectors(models_dir)


def test_default_settings_use_the_packaged_yunet_weights(astronaut_rgb: RGBImage) -> None:
    found = create_detector(FaceSettings()).detect(astronaut_rgb)  # no weights_dir: the wheel's own weights
    assert len(found) == 1 and iou(found[0].box, ASTRONAUT_BOX) > 0.7


def test_scrfd_without_a_weights_dir_says_it_is_not_shipped() -> None:
    with pytest.raises(DetectorWeightsMissing, match=r"non-commercial.*DFMOD_FACES__WEIGHTS_DIR"):
        create_detector(FaceSettings(backend="scrfd"))


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    h = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = w * h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def assert_plausible_face(d: Detection) -> None:
    assert d.landmarks is not None and d.landmarks.shape == (5, 2) and d.landmarks.dtype == np.float32
    x, y, w, h = d.box
    assert np.all(d.landmarks[:, 0] > x) and np.all(d.landmarks[:, 0] < x + w)
    assert np.all(d.landmarks[:, 1] > y) and np.all(d.landmarks[:, 1] < y + h)
    left_eye, right_eye, nose, left_mouth, right_mouth = d.landmarks
    assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]  # ArcFace order: left-in-image first
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])


@pytest.mark.parametrize("backend", LANDMARK_BACKENDS)
def test_one_face_on_the_astronaut(
    detectors: dict[str, FaceDetector], astronaut_rgb: RGBImage, backend: Backend
) -> None:
    found = detectors[backend].detect(astronaut_rgb)
    assert len(found) == 1
    assert found[0].score >= 0.6
    assert iou(found[0].box, ASTRONAUT_BOX) > 0.7
    assert_plausible_face(found[0])
    assert detectors[backend].name == backend


@pytest.mark.parametrize("backend", LANDMARK_BACKENDS)
def test_four_faces_on_a_mosaic(
    detectors: dict[str, FaceDetector], astronaut_rgb: RGBImage, backend: Backend
) -> None:
    found = detectors[backend].detect(samples.mosaic(astronaut_rgb, 4))
    assert len(found) == 4
    scores = [d.score for d in found]
    assert scores == sorted(scores, reverse=True)
    boxes = [d.box for d in found]
    tiles = sorted((int((x + w / 2) // 256), int((y + h / 2) // 256)) for x, y, w, h in boxes)
    assert tiles == [(0, 0), (0, 1), (1, 0), (1, 1)]  # one per tile
    for d in found:
        assert_plausible_face(d)


def test_filters(models_dir: Path, astronaut_rgb: RGBImage) -> None:
    grid = samples.mosaic(astronaut_rgb, 4)
    two = create_detector(FaceSettings(weights_dir=models_dir, max_faces_per_frame=2))
    assert len(two.detect(grid)) == 4, "detectors report every face; the cap applies when extracting"
    big_only = create_detector(FaceSettings(weights_dir=models_dir, min_face_px=80))
    assert len(big_only.detect(grid)) == 0 and len(big_only.detect(astronaut_rgb)) == 1
    strict = create_detector(FaceSettings(weights_dir=models_dir, score_threshold=0.99))
    assert strict.detect(astronaut_rgb) == []
    assert two.detect(np.zeros((240, 320, 3), dtype=np.uint8)) == []


@pytest.mark.parametrize("backend", LANDMARK_BACKENDS)
def test_large_frames_are_downscaled_and_mapped_back(
    models_dir: Path, astronaut_rgb: RGBImage, backend: Backend
) -> None:
    big = np.asarray(cv2.resize(astronaut_rgb, (1536, 1024)), dtype=np.uint8)  # 3x wide, 2x tall
    detector = create_detector(FaceSettings(backend=backend, weights_dir=models_dir, detect_max_side=640))
    found = detector.detect(big)
    assert len(found) == 1
    expected = (ASTRONAUT_BOX[0] * 3, ASTRONAUT_BOX[1] * 2, ASTRONAUT_BOX[2] * 3, ASTRONAUT_BOX[3] * 2)
    assert iou(found[0].box, expected) > 0.6
    assert_plausible_face(found[0])


def test_haar_finds_the_astronaut(models_dir: Path, astronaut_rgb: RGBImage) -> None:
    detector = create_detector(FaceSettings(backend="haar", weights_dir=models_dir))
    found = detector.detect(astronaut_rgb)
    assert len(found) == 1 and found[0].landmarks is None
    assert iou(found[0].box, ASTRONAUT_BOX) > 0.5
    assert len(detector.detect(samples.mosaic(astronaut_rgb, 4))) == 4


def test_haar_without_cascade_classifier_says_what_to_install(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.faces.haar as haar

    monkeypatch.setattr(haar, "haar_supported", lambda: False)
    with pytest.raises(RuntimeError, match="opencv-contrib"):
        create_detector(FaceSettings(backend="haar", weights_dir=models_dir))


def test_missing_weights_name_the_path_and_the_setting(tmp_path: Path) -> None:
    for backend in ("yunet", "scrfd"):
        with pytest.raises(DetectorWeightsMissing) as err:
            create_detector(FaceSettings(backend=backend, weights_dir=tmp_path))  # type: ignore[arg-type]
        assert str(tmp_path) in str(err.value) and "DFMOD_FACES__WEIGHTS_DIR" in str(err.value)


@pytest.mark.parametrize("backend", LANDMARK_BACKENDS)
def test_aligned_crop_puts_the_eyes_on_the_template(
    detectors: dict[str, FaceDetector], astronaut_rgb: RGBImage, backend: Backend
) -> None:
    settings = FaceSettings(backend=backend)
    crops = extract_faces([Frame(index=3, time_s=0.25, rgb=astronaut_rgb)], detectors[backend], settings)
    assert len(crops) == 1
    crop = crops[0]
    assert crop.crop.shape == (224, 224, 3) and crop.crop.dtype == np.uint8
    assert (crop.frame_index, crop.time_s, crop.landmarks_estimated) == (3, 0.25, False)

    # re-detect on the crop (YuNet) and compare with where the template says the landmarks are
    redetected = detectors["yunet"].detect(crop.crop)
    assert len(redetected) == 1 and redetected[0].landmarks is not None
    found, template = redetected[0].landmarks, crop_template()
    eye_centre_error = np.linalg.norm(found[:2].mean(axis=0) - template[:2].mean(axis=0))
    eye_distance_ratio = np.linalg.norm(found[1] - found[0]) / np.linalg.norm(template[1] - template[0])
    # YuNet re-detecting its own alignment agrees to ~2 px; SCRFD puts eyes ~3 px (source) above YuNet's
    assert eye_centre_error < {"yunet": 4.0, "scrfd": 8.0}[backend]
    assert 0.9 < eye_distance_ratio < 1.1  # the margin scale is right (scale 1.0 would give 1.3)
    assert np.linalg.norm(found - template, axis=1).max() < 10.0
    # and the warp moved the detected landmarks exactly where the same detector finds them again
    assert crop.detection.landmarks is not None
    matrix = estimate_similarity(crop.detection.landmarks, template)
    moved = crop.detection.landmarks @ matrix[:, :2].T + matrix[:, 2]
    if backend == "yunet":
        assert np.linalg.norm(found - moved, axis=1).max() < 5.0


def test_extract_faces_on_several_frames(detectors: dict[str, FaceDetector], astronaut_rgb: RGBImage) -> None:
    frames = [
        Frame(index=0, time_s=0.0, rgb=astronaut_rgb),
        Frame(index=5, time_s=0.2, rgb=np.zeros((200, 200, 3), dtype=np.uint8)),
        Frame(index=9, time_s=0.4, rgb=samples.mosaic(astronaut_rgb, 4)),
    ]
    extracted = extract_faces_counted(frames, detectors["yunet"], FaceSettings(max_faces_per_frame=3))
    assert [c.frame_index for c in extracted.crops] == [0, 9, 9, 9]
    assert all(c.crop.shape == (224, 224, 3) for c in extracted.crops)
    assert extracted.dropped == 1  # the mosaic's fourth face
    again = extract_faces(frames, detectors["yunet"], FaceSettings(max_faces_per_frame=3))
    assert [c.detection.box for c in again] == [c.detection.box for c in extracted.crops]


@pytest.mark.parametrize("backend", LANDMARK_BACKENDS)
def test_every_face_of_a_16_face_group_is_scored_by_default(
    detectors: dict[str, FaceDetector], astronaut_rgb: RGBImage, backend: Backend
) -> None:
    group = samples.mosaic(astronaut_rgb, 16)  # 4x4 tiles of 128 px: faces of ~23 px
    extracted = extract_faces_counted([Frame(0, 0.0, group)], detectors[backend], FaceSettings(backend=backend))
    assert len(extracted.crops) == 16 and extracted.dropped == 0
    tiles = {(int((c.detection.box[0] + c.detection.box[2] / 2) // 128),
              int((c.detection.box[1] + c.detection.box[3] / 2) // 128)) for c in extracted.crops}
    assert len(tiles) == 16  # one face per tile, none twice


@pytest.mark.parametrize("backend", LANDMARK_BACKENDS)
def test_small_faces_down_to_the_detectors_reliable_size_are_found(
    detectors: dict[str, FaceDetector], astronaut_rgb: RGBImage, backend: Backend
) -> None:
    crowd = samples.mosaic(astronaut_rgb, 36)  # 6x6 tiles of 85 px: faces of ~13-15 px
    found = detectors[backend].detect(crowd)
    assert len(found) == 36
    assert min(min(d.box[2], d.box[3]) for d in found) < 16


def test_the_cap_keeps_the_largest_faces_and_counts_the_rest(
    detectors: dict[str, FaceDetector], astronaut_rgb: RGBImage
) -> None:
    canvas = np.zeros((512, 1024, 3), dtype=np.uint8)
    canvas[:, :512] = astronaut_rgb                      # one face of ~91x111 px
    canvas[:, 512:] = samples.mosaic(astronaut_rgb, 16)  # sixteen of ~23 px
    extracted = extract_faces_counted([Frame(0, 0.0, canvas)], detectors["yunet"], FaceSettings(max_faces_per_frame=5))
    assert extracted.dropped == 12 and len(extracted.crops) == 5
    areas = [c.detection.box[2] * c.detection.box[3] for c in extracted.crops]
    assert areas == sorted(areas, reverse=True) and areas[0] > 4 * areas[1]  # the big face first
    assert extracted.crops[0].detection.box[0] < 512


def box(side: float, score: float = 0.9) -> Detection:
    return Detection(box=(0.0, 0.0, side, side), landmarks=None, score=score)


def test_the_media_cap_shrinks_every_frames_allowance_evenly() -> None:
    found = [[box(s) for s in (10, 50, 30, 20)], [box(s) for s in (40, 15)], [], [box(12)]]
    kept, dropped = select_faces(found, FaceSettings(max_faces_per_frame=3, max_faces_per_media=5))
    assert [[d.box[2] for d in faces] for faces in kept] == [[50, 30], [40, 15], [], [12]]
    assert dropped == 2
    kept, dropped = select_faces(found, FaceSettings(max_faces_per_frame=3, max_faces_per_media=100))
    assert [[d.box[2] for d in faces] for faces in kept] == [[50, 30, 20], [40, 15], [], [12]] and dropped == 1


def test_with_more_frames_than_the_media_cap_the_largest_faces_frames_keep_one() -> None:
    found = [[box(10), box(9)], [box(30)], [box(20), box(5)]]
    kept, dropped = select_faces(found, FaceSettings(max_faces_per_media=2))
    assert [[d.box[2] for d in faces] for faces in kept] == [[], [30], [20]] and dropped == 3
    assert select_faces(found, FaceSettings(max_faces_per_frame=0)) == ([[], [], []], 5)


class BoxOnlyDetector:
    """A detector without landmarks (as Haar is), reporting a fixed box."""

    name = "box-only"

    def detect(self, rgb: RGBImage) -> list[Detection]:
        return [Detection(box=ASTRONAUT_BOX, landmarks=None, score=0.9)]


def test_extract_faces_estimates_landmarks_from_the_box(astronaut_rgb: RGBImage) -> None:
    crops = extract_faces([Frame(0, 0.0, astronaut_rgb)], BoxOnlyDetector(), FaceSettings(crop_size=112))
    assert len(crops) == 1 and crops[0].landmarks_estimated and crops[0].detection.landmarks is None
    assert crops[0].crop.shape == (112, 112, 3)


def test_detector_is_safe_to_share_between_threads(models_dir: Path, astronaut_rgb: RGBImage) -> None:
    detector = create_detector(FaceSettings(weights_dir=models_dir))
    assert isinstance(detector, ThreadLocalDetector)
    small = np.asarray(cv2.resize(astronaut_rgb, (400, 300)), dtype=np.uint8)
    images = [astronaut_rgb, samples.mosaic(astronaut_rgb, 4), small] * 4
    expected = [len(detector.detect(image)) for image in images]
    assert expected[:3] == [1, 4, 1]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            assert list(pool.map(lambda image: len(detector.detect(image)), images)) == expected


def test_pan_zoom_video_keeps_the_face_in_view(
    detectors: dict[str, FaceDetector], astronaut_rgb: RGBImage
) -> None:
    video = samples.pan_zoom_video(astronaut_rgb, seconds=2.0, fps=15)
    media = decode_media(video, DecodeSettings(frames=10))
    assert len(media.frames) == 10
    boxes = []
    for frame in media.frames:
        found = detectors["yunet"].detect(frame.rgb)
        assert len(found) == 1
        boxes.append(found[0].box)
    assert np.ptp([b[0] for b in boxes]) > 10  # and the face really moves
