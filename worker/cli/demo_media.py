"""Sample media made from one photo: for the demo, smoke tests and tests (no binaries in the repo).

A pan/zoom video (a real face that moves), a mosaic (several faces), a re-encoded copy (same content,
other bytes), and damaged variants (corrupt, truncated) that exercise the decoder's error paths.
"""

from __future__ import annotations

import io
import math
import random
from pathlib import Path
from typing import Literal

import av
import av.video.stream
import cv2
import numpy as np

from worker.core.types import RGBImage

#: Bytes `corrupt` keeps so the result still starts like its format (PNG signature + IHDR, the mp4 ftyp box).
_KEEP_HEADER = 48


def load_rgb(path: str | Path) -> RGBImage:
    """An image file as RGB uint8 (H, W, 3)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read an image from {path}")
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def _window(width: int, height: int, t: float, aspect: float) -> tuple[int, int, int, int]:
    """The crop at phase t in [0, 1]: zoom 1.0 -> 0.85 -> 1.0, sideways pan and a small vertical one.

    The window never leaves the image and never shrinks below 85 % of it, so a face anywhere but the
    outer ~8 % band stays in view in every frame.
    """
    zoom = 1.0 - 0.15 * math.sin(math.pi * t)
    crop_w = min(width, height * aspect) * zoom
    crop_h = crop_w / aspect
    x0 = (width - crop_w) * (0.5 + 0.5 * math.sin(2 * math.pi * t))
    y0 = (height - crop_h) * (0.5 + 0.25 * math.sin(4 * math.pi * t))
    return int(x0), int(y0), max(2, round(crop_w)), max(2, round(crop_h))


def pan_zoom_video(
    rgb: RGBImage,
    seconds: float = 2.0,
    fps: int = 15,
    size: tuple[int, int] = (320, 320),
    codec: str = "libx264",
    container: Literal["mp4", "matroska", "mpegts"] = "mp4",
) -> bytes:
    """A video (default mp4, H.264, yuv420p) of panned and zoomed crops of `rgb`; `size` is (width, height).

    `container` other than mp4 makes streams whose frame count the header does not carry (Matroska) or
    whose tail stays decodable when cut off (both), for the decoder's other sampling paths.
    """
    width, height = size
    n = max(1, round(seconds * fps))
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        if not isinstance(stream, av.video.stream.VideoStream):
            raise ValueError(f"{codec} is not a video codec")
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            x, y, w, h = _window(rgb.shape[1], rgb.shape[0], i / max(1, n - 1), width / height)
            crop = cv2.resize(rgb[y : y + h, x : x + w], (width, height), interpolation=cv2.INTER_AREA)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(crop, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def mosaic(rgb: RGBImage, n: int = 4) -> RGBImage:
    """`n` downscaled copies of `rgb` on a ceil(sqrt(n))-wide grid the size of `rgb`; spare tiles black."""
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    height, width = rgb.shape[:2]
    tile_w, tile_h = width // cols, height // rows
    tile = cv2.resize(rgb, (tile_w, tile_h), interpolation=cv2.INTER_AREA)
    out = np.zeros_like(rgb)
    for k in range(n):
        r, c = divmod(k, cols)
        out[r * tile_h : (r + 1) * tile_h, c * tile_w : (c + 1) * tile_w] = tile
    return out


def encode_image(
    rgb: RGBImage, fmt: Literal["png", "jpeg", "webp", "bmp"] = "png", quality: int = 90
) -> bytes:
    """`rgb` encoded as an image file (quality applies to jpeg and webp)."""
    params: list[int] = []
    if fmt == "jpeg":
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    elif fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, quality]
    extension = ".jpg" if fmt == "jpeg" else f".{fmt}"
    ok, encoded = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV cannot encode {fmt}")
    return encoded.tobytes()


def corrupt(blob: bytes, seed: int = 0) -> bytes:
    """Same length, same first bytes (so the format is still recognised), random bytes after them."""
    keep = min(_KEEP_HEADER, len(blob) // 2)
    noise = random.Random(seed).randbytes(len(blob) - keep)
    return blob[:keep] + noise


def truncated(blob: bytes, fraction: float = 0.5) -> bytes:
    """The first `fraction` of the bytes, as an interrupted upload leaves them."""
    return blob[: int(len(blob) * fraction)]
