"""Image dimensions from headers, and pixel bombs refused as too_large before anything is decoded."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from worker.cli import demo_media as samples
from worker.core.errors import ErrorCode, MediaError
from worker.core.settings import DecodeSettings
from worker.core.types import RGBImage
from worker.media.decode import decode_media
from worker.media.image_header import ImageHeader, check_image_header, probe_image


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int, height: int, rows: int | None = None) -> bytes:
    """A valid RGB PNG of `width` x `height` black pixels: a few hundred KB that decode to width*height*3 bytes.

    `rows` < height writes only that many rows (a header that lies about the image behind it).
    """
    compressor = zlib.compressobj(9)
    row = bytes(1 + 3 * width)  # filter byte 0 + black pixels
    parts = [compressor.compress(row) for _ in range(height if rows is None else rows)]
    idat = b"".join(parts) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """SOI, an APP1 segment to skip, then a baseline SOF0 declaring `width` x `height` (and no picture)."""
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 1000) + b"Exif\x00\x00" + bytes(994)
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + bytes(9)
    return b"\xff\xd8" + app1 + sof0 + b"\xff\xda" + bytes(64)


def gif_claiming(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b"," + bytes(64)


def webp_vp8x_claiming(width: int, height: int) -> bytes:
    body = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (width - 1).to_bytes(3, "little") + (
        height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(body) + 64) + b"WEBP" + body + bytes(64)


def bmp_claiming(width: int, height: int) -> bytes:
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 64, 0, 0, 54) + dib + bytes(64)


def tiff_claiming(width: int, height: int, byte_order: str = "<") -> bytes:
    magic = b"II*\x00" if byte_order == "<" else b"MM\x00*"
    entries = [struct.pack(byte_order + "HHII", 256, 4, 1, width), struct.pack(byte_order + "HHII", 257, 4, 1, height)]
    return magic + struct.pack(byte_order + "I", 8) + struct.pack(byte_order + "H", 2) + b"".join(entries) + bytes(64)


def gif_bytes(rgb: RGBImage) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="gif") as out:
        stream = out.add_stream("gif", rate=1)
        stream.height, stream.width = rgb.shape[:2]  # type: ignore[union-attr]
        stream.pix_fmt = "rgb8"  # type: ignore[union-attr]
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode()]:  # type: ignore[union-attr]
            out.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="module")
def picture() -> RGBImage:
    """A 317x203 picture: odd sizes, so width and height cannot be confused."""
    rng = np.random.default_rng(0)
    return np.asarray(rng.integers(0, 256, (203, 317, 3)), dtype=np.uint8)


def encoded(rgb: RGBImage, extension: str, *params: int) -> bytes:
    ok, buf = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), list(params))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize(
    ("fmt", "make"),
    [
        ("png", lambda rgb: samples.encode_image(rgb, "png")),
        ("jpeg", lambda rgb: samples.encode_image(rgb, "jpeg")),
        ("jpeg", lambda rgb: encoded(rgb, ".jpg", cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        ("webp", lambda rgb: samples.encode_image(rgb, "webp")),                     # lossy: VP8
        ("webp", lambda rgb: encoded(rgb, ".webp", cv2.IMWRITE_WEBP_QUALITY, 101)),  # lossless: VP8L
        ("bmp", lambda rgb: samples.encode_image(rgb, "bmp")),
        ("tiff", lambda rgb: encoded(rgb, ".tiff")),
        ("gif", gif_bytes),
    ],
)
def test_real_files_report_their_true_size(picture: RGBImage, fmt: str, make: object) -> None:
    blob = make(picture)  # type: ignore[operator]
    assert probe_image(blob) == ImageHeader(fmt, 317, 203)


@pytest.mark.parametrize(
    "blob",
    [
        png_bomb(40_000, 40_000, rows=1),
        jpeg_claiming(60_000, 60_000),
        gif_claiming(65_535, 65_535),
        webp_vp8x_claiming(16_384, 16_384),
        bmp_claiming(30_000, -30_000),  # negative height: top-down rows
        tiff_claiming(50_000, 50_000),
        tiff_claiming(50_000, 50_000, byte_order=">"),
    ],
    ids=["png", "jpeg", "gif", "webp", "bmp", "tiff-le", "tiff-be"],
)
def test_headers_claiming_huge_sizes_are_too_large_not_decode_failed(blob: bytes) -> None:
    header = probe_image(blob)
    assert header is not None and header.pixels > DecodeSettings().max_pixels
    with pytest.raises(MediaError) as err:
        decode_media(blob, DecodeSettings())
    assert err.value.code is ErrorCode.TOO_LARGE
    assert f"{header.width}x{header.height}" in err.value.message


def test_the_limit_is_the_settings_pixel_limit() -> None:
    blob = bmp_claiming(1000, 1000)
    assert check_image_header(blob, max_pixels=1_000_000) == ImageHeader("bmp", 1000, 1000)
    with pytest.raises(MediaError, match="above 999999 pixels"):
        check_image_header(blob, max_pixels=999_999)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "gif", "webp", "bmp", "tiff"])
def test_truncated_headers_are_unknown_not_errors(picture: RGBImage, fmt: str) -> None:
    blob = gif_bytes(picture) if fmt == "gif" else encoded(picture, {"jpeg": ".jpg"}.get(fmt, f".{fmt}"))
    assert probe_image(blob) is not None
    cut = {"png": 20, "jpeg": 3, "gif": 8, "webp": 24, "bmp": 20, "tiff": 9}[fmt]
    assert probe_image(blob[:cut]) is None
    with pytest.raises(MediaError) as err:  # the decoder decides, as before the probe existed
        decode_media(blob[:cut], DecodeSettings())
    assert err.value.code in (ErrorCode.DECODE_FAILED, ErrorCode.UNSUPPORTED_MEDIA)


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x89PNG\r\n\x1a\n" + bytes(8) + b"IDAT" + bytes(8), b"\xff\xd8\xff\xd9", b"\xff\xd8\x00\x00\x00",
     b"\xff\xd8\xff\xe0\x00\x00" + bytes(8), b"RIFF\x00\x00\x00\x00WEBPVP8L" + bytes(5) + b"\x00" + bytes(8),
     b"BM" + bytes(12) + struct.pack("<I", 7) + bytes(8), b"II*\x00" + struct.pack("<I", 10**6),
     b"%PDF-1.4", gif_claiming(0, 10), bmp_claiming(0, 5)],
)
def test_odd_headers_give_none(blob: bytes) -> None:
    assert probe_image(blob) is None


def _vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/self/status")


def test_a_12000_square_png_bomb_is_refused_without_allocating() -> None:
    bomb = png_bomb(12_000, 12_000)
    assert len(bomb) < 600 * 1024  # the issue's 560 KB bomb: 432 MB once decoded
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (Linux >= 4.0)
    before = _vm_hwm_kb()
    with pytest.raises(MediaError) as err:
        decode_media(bomb, DecodeSettings())
    assert err.value.code is ErrorCode.TOO_LARGE
    assert (_vm_hwm_kb() - before) < 50 * 1024, "the refusal must not decode the picture"


def test_images_within_the_limit_still_decode(picture: RGBImage) -> None:
    media = decode_media(samples.encode_image(picture, "png"), DecodeSettings(max_pixels=317 * 203))
    assert media.kind == "image" and (media.width, media.height) == (317, 203)
