"""Image dimensions from the first bytes of a file, read before anything is decoded.

FFmpeg's probe inside `av.open` (`avformat_find_stream_info`) decodes a still's picture to learn its pixel
format, so a 560 KB PNG claiming 12000x12000 cost ~540 MB of memory before the decoder's pixel check ran.
Reading the width and height from the container header (a few dozen bytes: PNG IHDR, JPEG SOFn, GIF logical
screen, WebP VP8/VP8L/VP8X, BMP DIB header, TIFF first IFD) lets the worker refuse it as `too_large` first.

Hand-written on purpose: Pillow's lazy `Image.open` reads only headers for most formats, but for WebP it
hands the whole file to libwebp's animation decoder, which allocates the canvas (width x height x 4) at
open; and it would be a new dependency of the worker image for a hundred lines of struct unpacking.

A header that cannot be read (truncated, unknown format) gives None: the decoder then decides, and reports
DECODE_FAILED or UNSUPPORTED_MEDIA as before.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from worker.core.errors import ErrorCode, MediaError

#: JPEG start-of-frame markers that carry the dimensions (not DHT C4, JPG C8, DAC CC).
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
#: JPEG markers without a length field.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


@dataclass(frozen=True)
class ImageHeader:
    format: str    # png, jpeg, gif, webp, bmp, tiff
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def sniff_container(blob: bytes) -> str | None:
    """The container the first bytes announce (FFmpeg demuxer name): picks the image header reader, and tells
    corrupt media from non-media. The one table of magic bytes."""
    head = blob[:16]
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"):
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp_pipe"
    if head.startswith(b"FLV"):
        return "flv"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png_pipe"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg_pipe"
    if head.startswith(b"BM"):
        return "bmp_pipe"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff_pipe"
    if len(blob) > 188 and blob[0] == 0x47 and blob[188] == 0x47:
        return "mpegts"
    return None


def probe_image(blob: bytes) -> ImageHeader | None:
    """The format and dimensions an image file's header declares, or None when it is not one we can read."""
    reader = _READERS.get(sniff_container(blob) or "")
    try:
        return reader(blob) if reader is not None else None
    except (struct.error, IndexError):
        return None  # truncated header


def check_image_header(blob: bytes, max_pixels: int) -> ImageHeader | None:
    """Raise TOO_LARGE when the header declares more than `max_pixels`; the header (or None) otherwise."""
    header = probe_image(blob)
    if header is not None and header.pixels > max_pixels:
        raise MediaError(
            ErrorCode.TOO_LARGE,
            f"{header.format} header declares {header.width}x{header.height}, above {max_pixels} pixels",
        )
    return header


def _sized(fmt: str, width: int, height: int) -> ImageHeader | None:
    return ImageHeader(fmt, width, height) if width > 0 and height > 0 else None


def _png(blob: bytes) -> ImageHeader | None:
    if blob[12:16] != b"IHDR":
        return None
    return _sized("png", *struct.unpack_from(">II", blob, 16))


def _jpeg(blob: bytes) -> ImageHeader | None:
    pos = 2
    while pos + 4 <= len(blob):
        if blob[pos] != 0xFF:
            return None
        marker = blob[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        (length,) = struct.unpack_from(">H", blob, pos + 2)
        if marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", blob, pos + 5)
            return _sized("jpeg", width, height)
        if length < 2:
            return None
        pos += 2 + length
    return None


def _webp(blob: bytes) -> ImageHeader | None:
    chunk = blob[12:16]
    if chunk == b"VP8X":  # extended: 24-bit canvas size minus one
        width = 1 + int.from_bytes(blob[24:27], "little")
        height = 1 + int.from_bytes(blob[27:30], "little")
        return _sized("webp", width, height) if len(blob) >= 30 else None
    if chunk == b"VP8L":  # lossless: signature 0x2f, then 14-bit width and height minus one
        if blob[20] != 0x2F:
            return None
        (bits,) = struct.unpack_from("<I", blob, 21)
        return _sized("webp", 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF))
    if chunk == b"VP8 ":  # lossy: frame tag (3 bytes), start code 9d 01 2a, 14-bit width and height
        if blob[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack_from("<HH", blob, 26)
        return _sized("webp", width & 0x3FFF, height & 0x3FFF)
    return None


def _bmp(blob: bytes) -> ImageHeader | None:
    (dib_size,) = struct.unpack_from("<I", blob, 14)
    if dib_size == 12:  # BITMAPCOREHEADER: 16-bit unsigned sizes
        return _sized("bmp", *struct.unpack_from("<HH", blob, 18))
    if dib_size >= 40:  # BITMAPINFOHEADER and later: signed; a negative height means top-down rows
        width, height = struct.unpack_from("<ii", blob, 18)
        return _sized("bmp", abs(width), abs(height))
    return None


def _tiff(blob: bytes) -> ImageHeader | None:
    order = "<" if blob.startswith(b"II") else ">"
    (ifd,) = struct.unpack_from(order + "I", blob, 4)
    (count,) = struct.unpack_from(order + "H", blob, ifd)
    found: dict[int, int] = {}
    for i in range(min(count, 512)):
        tag, kind, _n = struct.unpack_from(order + "HHI", blob, ifd + 2 + 12 * i)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4), value in the entry
            (value,) = struct.unpack_from(order + ("H" if kind == 3 else "I"), blob, ifd + 10 + 12 * i)
            found[tag] = value
            if len(found) == 2:
                return _sized("tiff", found[256], found[257])
    return None


def _gif(blob: bytes) -> ImageHeader | None:
    return _sized("gif", *struct.unpack_from("<HH", blob, 6))


#: The header reader of each still format `sniff_container` names.
_READERS: dict[str, Callable[[bytes], ImageHeader | None]] = {
    "png_pipe": _png, "jpeg_pipe": _jpeg, "gif": _gif, "webp_pipe": _webp, "bmp_pipe": _bmp, "tiff_pipe": _tiff,
}
