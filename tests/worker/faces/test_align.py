"""Alignment geometry: the template contract, the similarity estimate, and the warp itself."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from worker.faces.align import (
    align_face,
    arcface_template,
    crop_template,
    estimate_similarity,
    landmarks_from_box,
)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def random_similarity(rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(-np.pi, np.pi)
    scale = rng.uniform(0.3, 4.0)
    shift = rng.uniform(-500, 500, size=2)
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    return np.array([[c, -s, shift[0]], [s, c, shift[1]]])


def test_arcface_template_is_the_standard_one() -> None:
    template = arcface_template()
    assert template.shape == (5, 2) and template.dtype == np.float32
    assert template[0] == pytest.approx([38.2946, 51.6963])
    assert template[0, 0] < template[1, 0] and template[3, 0] < template[4, 0]  # left-in-image first


def test_crop_template_formula() -> None:
    template = arcface_template().astype(np.float64)
    for size, scale in [(224, 1.3), (112, 1.0), (256, 1.3), (224, 2.0)]:
        expected = size / 2 + (template - 56) * size / (112 * scale)
        assert crop_template(size, scale) == pytest.approx(expected, abs=1e-4)
    assert crop_template(112, 1.0) == pytest.approx(template, abs=1e-4)
    # the DeepfakeBench formulation of the same geometry
    size, margin = 224, 0.3
    dbench = template * size / 112 + size * margin / 2
    dbench *= size / (size + 2 * size * margin / 2)
    assert crop_template(224, 1.3) == pytest.approx(dbench, abs=1e-4)


def test_estimate_similarity_recovers_random_transforms() -> None:
    rng = np.random.default_rng(7)
    dst = crop_template()
    for _ in range(50):
        truth = random_similarity(rng)
        landmarks = apply(truth, arcface_template().astype(np.float64))  # the template seen in some image
        # the estimated transform maps those landmarks back onto the crop template
        matrix = estimate_similarity(landmarks, dst)
        assert matrix.shape == (2, 3) and matrix.dtype == np.float64
        assert np.abs(apply(matrix, landmarks) - dst).max() < 1e-3


def test_estimate_similarity_is_a_rotation_not_a_reflection() -> None:
    src = arcface_template().astype(np.float64)
    mirrored = src * [-1.0, 1.0]
    matrix = estimate_similarity(src, mirrored)
    linear = matrix[:, :2]
    assert np.linalg.det(linear) > 0
    assert linear[0, 0] == pytest.approx(linear[1, 1]) and linear[0, 1] == pytest.approx(-linear[1, 0])


def test_estimate_similarity_least_squares_on_noisy_points() -> None:
    """A similarity is linear in (a, b, tx, ty): x' = a x - b y + tx, y' = b x + a y + ty: solve it."""
    rng = np.random.default_rng(1)
    src = arcface_template().astype(np.float64)
    for _ in range(10):
        noisy = apply(random_similarity(rng), src) + rng.normal(0, 2.0, size=src.shape)
        rows = []
        for x, y in src:
            rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        a, b, tx, ty = np.linalg.lstsq(np.array(rows), noisy.reshape(-1), rcond=None)[0]
        expected = np.array([[a, -b, tx], [b, a, ty]])
        assert np.abs(estimate_similarity(src, noisy) - expected).max() < 1e-6


def test_estimate_similarity_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        estimate_similarity(np.zeros((5, 2)), crop_template())
    with pytest.raises(ValueError):
        estimate_similarity(np.zeros((5, 3)), np.zeros((5, 3)))


def blob_centres(image: np.ndarray) -> np.ndarray:
    """Centroids of the bright blobs of a single-channel image, ordered like the template."""
    count, _, _, centroids = cv2.connectedComponentsWithStats((image > 64).astype(np.uint8))
    return centroids[1:count]


def test_align_face_puts_landmark_dots_on_the_template() -> None:
    rng = np.random.default_rng(3)
    truth = random_similarity(rng)
    truth[:, :2] *= 2.5 / np.sqrt(abs(np.linalg.det(truth[:, :2])))   # a face ~2.5x the 112 template
    landmarks = apply(truth, arcface_template().astype(np.float64))
    landmarks += 400 - landmarks.mean(axis=0)                           # centred in an 800x800 image
    image = np.zeros((800, 800, 3), dtype=np.uint8)
    for k, (x, y) in enumerate(landmarks):
        cv2.circle(image, (round(x), round(y)), 6, (50 * (k + 1), 255, 0), -1, lineType=cv2.LINE_AA)

    crop = align_face(image, landmarks)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    found = blob_centres(crop[:, :, 1])
    assert len(found) == 5
    template = crop_template()
    for point in template:  # every template point has a dot within a pixel
        assert np.linalg.norm(found - point, axis=1).min() < 1.0
    # and it is the right dot: the red channel encodes which landmark it was
    for k, point in enumerate(template):
        assert crop[round(point[1]), round(point[0]), 0] == pytest.approx(50 * (k + 1), abs=8)


def test_align_face_borders_are_black() -> None:
    image = np.full((100, 100, 3), 200, dtype=np.uint8)
    landmarks = crop_template(100, 1.0)  # a face that fills the whole image: the 1.3 margin lies outside it
    crop = align_face(image, landmarks)
    assert crop[0, 0].tolist() == [0, 0, 0] and crop[112, 112].tolist() == [200, 200, 200]


def test_landmarks_from_box() -> None:
    points = landmarks_from_box((10.0, 20.0, 112.0, 224.0))
    assert points.shape == (5, 2) and points.dtype == np.float32
    expected = np.array([10.0, 20.0]) + arcface_template() * [1.0, 2.0]
    assert points == pytest.approx(expected, abs=1e-4)
