"""Media for integration tests, built from the astronaut portrait at test time (no binaries committed)."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

from harness import astronaut_png

from worker.cli.demo_media import corrupt, encode_image, load_rgb, mosaic, pan_zoom_video

ASTRONAUT = astronaut_png()


def still_png() -> bytes:
    return ASTRONAUT.read_bytes()


def still_jpeg(quality: int = 90) -> bytes:
    return encode_image(load_rgb(ASTRONAUT), fmt="jpeg", quality=quality)


def unique_still() -> tuple[bytes, bytes]:
    """The portrait with one random corner pixel, as PNG and as JPEG: bytes no other test has sent."""
    import numpy as np

    rgb = load_rgb(ASTRONAUT).copy()
    rgb[0, 0] = np.random.default_rng().integers(0, 256, 3, dtype=np.uint8)
    return encode_image(rgb, fmt="png"), encode_image(rgb, fmt="jpeg", quality=90)


def video_mp4(seconds: float = 3.0) -> bytes:
    return pan_zoom_video(load_rgb(ASTRONAUT), seconds=seconds, fps=15)


def mosaic_png() -> bytes:
    return encode_image(mosaic(load_rgb(ASTRONAUT), n=4), fmt="png")


def corrupt_mp4() -> bytes:
    return corrupt(video_mp4())


def event(blob: bytes | None = None, *, uri: str | None = None, content_type: str | None = None,
          event_id: str | None = None) -> tuple[str, bytes, bytes]:
    """(id, key, value) of a media.submitted CloudEvent carrying `blob` inline or pointing at `uri`."""
    event_id = event_id or str(uuid.uuid4())
    data: dict[str, Any] = {"content_type": content_type, "metadata": {}}
    if uri is not None:
        data["uri"] = uri
    else:
        data["inline"] = base64.b64encode(blob or b"").decode()
    doc = {"specversion": "1.0", "id": event_id, "source": "tests", "type": "media.submitted", "data": data}
    return event_id, event_id.encode(), json.dumps(doc).encode()


def write(path: Path, blob: bytes) -> Path:
    path.write_bytes(blob)
    return path


def reencoded_mp4(blob: bytes) -> bytes:
    """`blob` as another upload of the same video would arrive: 3/4 the size, H.264 at a lower bitrate."""
    import cv2
    from bench_media import reencode

    def smaller(rgb: Any) -> Any:
        return cv2.resize(rgb, (rgb.shape[1] * 3 // 4, rgb.shape[0] * 3 // 4), interpolation=cv2.INTER_AREA)

    return reencode(blob, smaller, crf=32)


def other_video_mp4(seconds: float = 3.0) -> bytes:
    """A video with different content (pans over another picture)."""
    from skimage import data

    return pan_zoom_video(data.coffee(), seconds=seconds, fps=15)
