"""Decoded frames stay in the decoder's pixels until the faces stage reads them, one RGB frame at a time.

Holding every sampled frame as RGB was the bulk of a worker's memory (32 x 6.2 MB per 1080p video). The
detector below keeps a weak reference to each RGB frame it is handed and counts how many are still alive.
"""

from __future__ import annotations

import weakref

import numpy as np
import pytest

from worker.cli import demo_media as samples
from worker.core.settings import DecodeSettings, FaceSettings
from worker.core.types import Detection, Frame, RGBImage
from worker.faces.extract import drain, extract_faces_counted
from worker.media.decode import decode_media

WIDTH, HEIGHT = 640, 360
RGB_BYTES = WIDTH * HEIGHT * 3


class CountingDetector:
    """One fixed face per frame; counts the RGB frames it was handed that are still alive at each call."""

    name = "counting"

    def __init__(self) -> None:
        self.handed: list[weakref.ref[RGBImage]] = []
        self.alive: list[int] = []

    def detect(self, rgb: RGBImage) -> list[Detection]:
        assert rgb.shape == (HEIGHT, WIDTH, 3)
        self.handed.append(weakref.ref(rgb))
        self.alive.append(sum(ref() is not None for ref in self.handed))
        points = np.array([[280, 150], [360, 150], [320, 190], [290, 230], [350, 230]], np.float32)
        return [Detection(box=(240.0, 100.0, 160.0, 180.0), landmarks=points, score=0.9)]


@pytest.fixture(scope="module")
def video(astronaut_rgb: RGBImage) -> bytes:
    return samples.pan_zoom_video(astronaut_rgb, seconds=4.0, fps=15, size=(WIDTH, HEIGHT))


def test_decode_then_faces_hold_one_rgb_frame_at_a_time(video: bytes) -> None:
    media = decode_media(video, DecodeSettings(frames=32))
    # Only the first frame is converted by the decode (it proves the pixel format converts).
    assert [f._rgb is not None for f in media.frames] == [True] + [False] * 31
    detector = CountingDetector()
    extracted = extract_faces_counted(drain(media.frames), detector, FaceSettings())
    assert len(detector.alive) == 32 and len(extracted.crops) == 32
    assert max(detector.alive) == 1, f"RGB frames alive at each detection: {detector.alive}"
    assert media.frames == []  # drained: the decoder's pixels went with each frame


def test_a_list_of_frames_still_works_and_is_left_as_it_was(video: bytes) -> None:
    media = decode_media(video, DecodeSettings(frames=4))
    extracted = extract_faces_counted(media.frames, CountingDetector(), FaceSettings())
    assert len(media.frames) == 4 and [c.frame_index for c in extracted.crops] == [f.index for f in media.frames]


def test_lazy_frames_are_the_pixels_an_eager_conversion_gives(video: bytes) -> None:
    media = decode_media(video, DecodeSettings(frames=8))
    again = decode_media(video, DecodeSettings(frames=8))
    assert [f.index for f in media.frames] == [f.index for f in again.frames]
    for lazy, other in zip(media.frames, again.frames, strict=True):
        first = lazy.rgb
        assert first.shape == (HEIGHT, WIDTH, 3) and first.dtype == np.uint8
        assert np.array_equal(first, lazy.rgb) and np.array_equal(first, other.rgb)
    assert (media.width, media.height) == (WIDTH, HEIGHT)


def test_a_frame_takes_pixels_or_a_conversion_not_both() -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    assert Frame(0, 0.0, rgb).rgb is rgb
    calls: list[int] = []
    lazy = Frame(1, 0.1, convert=lambda: calls.append(1) or rgb)
    lazy.rgb, lazy.rgb  # noqa: B018 - each read converts again
    assert len(calls) == 2
    with pytest.raises(ValueError):
        Frame(2, 0.2)
    with pytest.raises(ValueError):
        Frame(3, 0.3, rgb, convert=lambda: rgb)
