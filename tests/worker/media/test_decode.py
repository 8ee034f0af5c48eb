"""Decode: stills, videos sampled in one pass, limits, and damaged or foreign bytes."""

from __future__ import annotations

import io
import itertools
import zipfile

import numpy as np
import pytest

from worker.cli import demo_media as samples
from worker.core.errors import ErrorCode, MediaError
from worker.core.settings import DecodeSettings
from worker.core.types import RGBImage
from worker.media.decode import decode_media
from worker.media.frame_times import even_indices

SETTINGS = DecodeSettings()


@pytest.fixture(scope="module")
def video_25fps(astronaut_rgb: RGBImage) -> bytes:
    """2 s at 25 fps: 50 frames, more than the 32 sampled."""
    return samples.pan_zoom_video(astronaut_rgb, seconds=2.0, fps=25)


@pytest.fixture(scope="module")
def mkv_25fps(astronaut_rgb: RGBImage) -> bytes:
    """The same in Matroska, whose header carries a duration but no frame count."""
    return samples.pan_zoom_video(astronaut_rgb, seconds=2.0, fps=25, container="matroska")


def decode_error(blob: bytes, settings: DecodeSettings = SETTINGS) -> ErrorCode:
    with pytest.raises(MediaError) as err:
        decode_media(blob, settings)
    return err.value.code


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "bmp"])
def test_still_gives_one_rgb_frame(astronaut_rgb: RGBImage, fmt: str) -> None:
    media = decode_media(samples.encode_image(astronaut_rgb, fmt), SETTINGS)  # type: ignore[arg-type]
    assert media.kind == "image"
    assert len(media.frames) == 1 and media.frame_count == 1 and media.duration_s == 0.0
    frame = media.frames[0]
    assert frame.index == 0 and frame.time_s == 0.0
    assert frame.rgb.shape == (512, 512, 3) and frame.rgb.dtype == np.uint8
    assert (media.width, media.height) == (512, 512)
    tolerance = 0 if fmt in ("png", "bmp") else 12  # lossless formats decode to the very same pixels
    assert np.abs(frame.rgb.astype(int) - astronaut_rgb.astype(int)).mean() <= tolerance


def test_png_fixture(astronaut_png_bytes: bytes, astronaut_rgb: RGBImage) -> None:
    media = decode_media(astronaut_png_bytes, SETTINGS, content_type="image/png")
    assert media.container == "png_pipe" and media.codec == "png"
    assert np.array_equal(media.frames[0].rgb, astronaut_rgb)


def test_video_2s_gives_32_evenly_spaced_frames(video_25fps: bytes) -> None:
    media = decode_media(video_25fps, SETTINGS, content_type="video/mp4")
    assert media.kind == "video" and media.codec == "h264"
    assert media.frame_count == 50 and media.duration_s == pytest.approx(2.0)
    assert [f.index for f in media.frames] == even_indices(50, 32)
    times = [f.time_s for f in media.frames]
    assert times == pytest.approx([i / 25 for i in even_indices(50, 32)], abs=1e-6)
    assert all(f.rgb.shape == (320, 320, 3) and f.rgb.dtype == np.uint8 for f in media.frames)
    assert not np.array_equal(media.frames[0].rgb, media.frames[-1].rgb)  # the camera moved


def test_video_without_frame_count_is_sampled_by_time(mkv_25fps: bytes) -> None:
    media = decode_media(mkv_25fps, SETTINGS)
    assert media.container == "matroska,webm"
    assert len(media.frames) == 32
    indices = [f.index for f in media.frames]
    assert indices[0] == 0 and indices[-1] >= 47
    assert all(b > a for a, b in itertools.pairwise(indices))
    assert max(np.diff(indices)) <= 2


def test_video_with_fewer_frames_than_requested(astronaut_rgb: RGBImage) -> None:
    media = decode_media(samples.pan_zoom_video(astronaut_rgb, seconds=2.0, fps=15), SETTINGS)
    assert [f.index for f in media.frames] == list(range(30))
    assert media.frame_count == 30


def test_frames_setting(video_25fps: bytes) -> None:
    media = decode_media(video_25fps, DecodeSettings(frames=4))
    assert [f.index for f in media.frames] == [0, 16, 33, 49]


def test_single_frame_video_is_an_image(astronaut_rgb: RGBImage) -> None:
    media = decode_media(samples.pan_zoom_video(astronaut_rgb, seconds=0.1, fps=10), SETTINGS)
    assert media.kind == "image" and len(media.frames) == 1


def test_corrupt_media_is_decode_failed(video_25fps: bytes, astronaut_png_bytes: bytes) -> None:
    assert decode_error(samples.corrupt(video_25fps)) is ErrorCode.DECODE_FAILED
    assert decode_error(samples.corrupt(astronaut_png_bytes, seed=3)) is ErrorCode.DECODE_FAILED


def test_truncated_media(video_25fps: bytes, mkv_25fps: bytes, astronaut_png_bytes: bytes) -> None:
    # mp4 keeps its index (moov) at the end: cut, it cannot be opened at all
    assert decode_error(samples.truncated(video_25fps)) is ErrorCode.DECODE_FAILED
    assert decode_error(samples.truncated(astronaut_png_bytes)) is ErrorCode.DECODE_FAILED
    # a streamable container cut in half returns the frames that are there, all from its first half
    media = decode_media(samples.truncated(mkv_25fps, 0.5), SETTINGS)
    assert 1 <= len(media.frames) < 32
    assert all(f.time_s < 1.5 for f in media.frames)


def test_not_media_is_unsupported() -> None:
    text = b"hello, this is plain text and not a video at all\n" * 20
    assert decode_error(text) is ErrorCode.UNSUPPORTED_MEDIA
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("a.txt", "hello" * 100)
    assert decode_error(buf.getvalue()) is ErrorCode.UNSUPPORTED_MEDIA
    # an FFmpeg concat script would make the demuxer open other files: refused by the format whitelist
    assert decode_error(b"ffconcat version 1.0\nfile /etc/passwd\n") is ErrorCode.UNSUPPORTED_MEDIA


def test_zero_bytes() -> None:
    assert decode_error(b"") is ErrorCode.EMPTY_MEDIA


def test_allow_lists(video_25fps: bytes, astronaut_png_bytes: bytes) -> None:
    no_mp4 = DecodeSettings(allowed_containers=["png_pipe"])
    assert decode_error(video_25fps, no_mp4) is ErrorCode.UNSUPPORTED_MEDIA
    no_h264 = DecodeSettings(allowed_codecs=["png"])
    assert decode_error(video_25fps, no_h264) is ErrorCode.UNSUPPORTED_MEDIA
    assert decode_media(astronaut_png_bytes, no_h264).kind == "image"


def test_limits(video_25fps: bytes, astronaut_png_bytes: bytes) -> None:
    assert decode_error(astronaut_png_bytes, DecodeSettings(max_pixels=512 * 511)) is ErrorCode.TOO_LARGE
    assert decode_media(astronaut_png_bytes, DecodeSettings(max_pixels=512 * 512)).kind == "image"
    assert decode_error(video_25fps, DecodeSettings(max_duration_s=1.5)) is ErrorCode.TOO_LONG
    assert decode_error(video_25fps, DecodeSettings(max_decoded_frames=40)) is ErrorCode.TOO_LONG
    assert decode_error(video_25fps, DecodeSettings(timeout_s=0.0)) is ErrorCode.TIMEOUT

