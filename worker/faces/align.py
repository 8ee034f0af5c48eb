"""5-point similarity alignment: the crop geometry shared by training and serving (PREPROCESSING_VERSION).

The contract, for crop size S and margin scale s (defaults 224 and 1.3):

    crop_template(S, s) = S / 2 + (T - 56) * S / (112 * s)

where T is the ArcFace 112x112 five-point template (`arcface_template`). That is the template scaled by
S / 112 / s about the crop centre: the face occupies the central 1/s of the crop and the remaining margin
shows context around it. It is the same geometry as DeepfakeBench's `img_align_crop(..., scale=1.3)`.
A face is warped by the least-squares similarity (rotation, uniform scale, translation; no reflection)
that maps its five landmarks onto that template; pixels outside the source image are black (0), as in
DeepfakeBench, so training and serving crops agree at the borders too.

Landmark order everywhere: left-in-image eye (the subject's right eye), right-in-image eye, nose tip,
left-in-image mouth corner, right-in-image mouth corner (ArcFace's order; YuNet and SCRFD report the same).
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from worker.core.types import RGBImage

Points = npt.NDArray[np.floating]

_ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def arcface_template() -> npt.NDArray[np.float32]:
    """The standard ArcFace five-point template in a 112x112 crop, (5, 2) float32 (x, y)."""
    return _ARCFACE_112.copy()


def crop_template(size: int = 224, scale: float = 1.3) -> npt.NDArray[np.float32]:
    """Where the five landmarks land in a `size` x `size` crop with margin `scale` (module docstring)."""
    centre = size / 2.0
    points = centre + (_ARCFACE_112.astype(np.float64) - 56.0) * (size / (112.0 * scale))
    return points.astype(np.float32)


def estimate_similarity(src: Points, dst: Points) -> npt.NDArray[np.float64]:
    """The (2, 3) similarity M minimising sum ||M @ [src, 1] - dst||^2 (Umeyama 1991, no reflection)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need two (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var <= 0:
        raise ValueError("source points are all the same point")
    cov = dst_c.T @ src_c / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0  # the best orthogonal map would be a reflection: take the best rotation instead
    rotation = u @ np.diag(d) @ vt
    scale = float((sigma * d).sum() / src_var)
    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def align_face(rgb: RGBImage, landmarks: Points, size: int = 224, scale: float = 1.3) -> RGBImage:
    """The aligned `size` x `size` x 3 uint8 crop of the face whose five landmarks are given."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    matrix = estimate_similarity(points, crop_template(size, scale))
    crop = cv2.warpAffine(
        rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    return np.asarray(crop, dtype=np.uint8)


def landmarks_from_box(box: tuple[float, float, float, float]) -> npt.NDArray[np.float32]:
    """Template landmarks placed in a face box (x, y, w, h): `(x, y) + T / 112 * (w, h)`.

    For detectors without landmarks (Haar); the alignment is then only as good as the box.
    """
    x, y, w, h = box
    origin = np.array([x, y], dtype=np.float32)
    return (origin + _ARCFACE_112 / 112.0 * np.array([w, h], dtype=np.float32)).astype(np.float32)
