"""PDQ against the reference: hashes and qualities that ThreatExchange's Python hasher (pdq/python) gave."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from worker.cli.demo_media import pan_zoom_video
from worker.core.settings import DecodeSettings
from worker.media.decode import decode_media
from worker.media.pdq import distances, frame_hash, from_hex, luma_of, pdq_hash


def astronaut(size: tuple[int, int] = (400, 300)) -> np.ndarray:
    return np.ascontiguousarray(cv2.resize(data.astronaut(), size, interpolation=cv2.INTER_AREA))


def distance(a: bytes, b: bytes) -> int:
    return int(distances(a, np.frombuffer(b, np.uint8)[None])[0])


# (picture, the reference's hex, the reference's quality): PDQHasher().fromFile on the same pixels saved as PNG
REFERENCE = [
    ("astronaut", "2d0f5af3a876cd29c79ca3d6526f283494196c89cedd04de0a26b855fc99b724", 100),
    ("blurred", "2d6b1af2ad56c529e79ca3d2526fa814d4196c81c6fd04de0a26f855fc99b724", 100),
    ("mirror", "f87a4fa6f903107c32c9f683073afd63814c39d493a8518b7f73ad08a9cce271", 100),
]


def picture(name: str) -> np.ndarray:
    if name == "blurred":
        small = cv2.resize(data.astronaut(), (300, 200), interpolation=cv2.INTER_AREA)
        return cv2.GaussianBlur(small, (0, 0), 6)
    if name == "mirror":
        return np.ascontiguousarray(astronaut()[:, ::-1])
    return astronaut()


@pytest.mark.parametrize(("name", "expected", "quality"), REFERENCE)
def test_matches_the_reference_bit_for_bit(name: str, expected: str, quality: int) -> None:
    result = pdq_hash(luma_of(picture(name)))
    assert result.hex == expected
    assert result.quality == quality


def test_a_flat_picture_has_the_references_low_quality() -> None:
    y, x = np.mgrid[0:200, 0:240]
    gradient = np.stack([x * 255 / 239, y * 255 / 199, np.full_like(x, 128.0)], -1).astype(np.uint8)
    assert pdq_hash(luma_of(gradient)).quality == 5  # the reference's value; such hashes are never compared


def test_mirrored_is_the_hash_of_the_mirror_image() -> None:
    original = pdq_hash(luma_of(astronaut()))
    mirror = pdq_hash(luma_of(picture("mirror")))
    assert distance(original.mirrored, mirror.hash) == 0
    assert distance(original.hash, mirror.hash) > 100


def test_large_pictures_are_reduced_first_and_stay_close() -> None:
    large, small = astronaut((1920, 1440)), astronaut((480, 360))
    assert distance(pdq_hash(luma_of(large)).hash, pdq_hash(luma_of(small)).hash) <= 8


def test_video_frames_hash_from_the_decoders_luma_close_to_their_rgb() -> None:
    media = decode_media(pan_zoom_video(data.astronaut(), seconds=1.0, fps=10), DecodeSettings(frames=4))
    later = media.frames[2]
    assert later.luma_plane() is not None  # yuv420p: no RGB conversion for the hash
    assert media.frames[0].luma_plane() is None  # the first frame is RGB already
    assert distance(frame_hash(later).hash, pdq_hash(luma_of(later.rgb)).hash) <= 8


def test_refuses_pictures_under_five_pixels_and_bad_hex() -> None:
    with pytest.raises(ValueError, match="5x5"):
        pdq_hash(np.zeros((4, 40), np.uint8))
    with pytest.raises(ValueError, match="64 hex"):
        from_hex("abcd")
    assert from_hex(REFERENCE[0][1]).hex() == REFERENCE[0][1]
