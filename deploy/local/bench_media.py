"""Media for `make bench`, generated on the spot: realistic enough to size a deployment, cheap to make.

Videos are H.264 like most uploads: 30 fps, a keyframe every 2 s, 3 B-frames, CABAC and the deblocking
filter on (the decoder's main costs), a real face (the repository's astronaut portrait) moving over a plain
background. Frames are composed directly in YUV 4:2:0 and encoded with x264's `ultrafast` motion search, so
a 300 s 1080p clip takes about a minute of CPU to make. Generated files are kept in a folder and reused.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from worker.cli.demo_media import encode_image
from worker.core.types import RGBImage

HEIGHTS = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}
FPS = 30
GOP_S = 2.0
BFRAMES = 3


@dataclass(frozen=True)
class VideoSpec:
    size: str           # a key of HEIGHTS
    seconds: float
    noise: int = 0      # amplitude of a fixed background texture: more bytes per keyframe

    @property
    def name(self) -> str:
        return f"{self.size} {self.seconds:g} s"

    @property
    def file_name(self) -> str:
        return f"h264-{self.size}-{self.seconds:g}s-gop{GOP_S:g}-b{BFRAMES}-n{self.noise}.mp4"


def _i420(rgb: RGBImage) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = rgb.shape[:2]
    planar = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    y = planar[:h]
    chroma = planar[h:].reshape(2, h // 2, w // 2)
    return y, chroma[0], chroma[1]


def moving_face_video(face: RGBImage, spec: VideoSpec) -> bytes:
    """`spec.seconds` of H.264 mp4: the face (a third of the frame height) drifting over the frame."""
    width, height = HEIGHTS[spec.size]
    side = (height // 3) // 2 * 2
    fy, fu, fv = _i420(np.ascontiguousarray(cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)))
    background = np.full((height, width, 3), (96, 128, 112), np.uint8)
    if spec.noise:
        rng = np.random.default_rng(0)
        texture = rng.integers(-spec.noise, spec.noise + 1, (height, width, 1), dtype=np.int16)
        background = np.clip(background.astype(np.int16) + texture, 0, 255).astype(np.uint8)
    by, bu, bv = _i420(background)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"  # type: ignore[union-attr]
        keyint = int(GOP_S * FPS)
        stream.options = {
            "preset": "ultrafast",
            "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes={BFRAMES}:cabac=1:deblock=1",
        }
        for i in range(int(spec.seconds * FPS)):
            t = i / FPS
            x = int((width - side) * (0.5 + 0.45 * math.sin(2 * math.pi * t / 7.0))) // 2 * 2
            y = int((height - side) * (0.5 + 0.4 * math.sin(2 * math.pi * t / 5.0))) // 2 * 2
            py, pu, pv = by.copy(), bu.copy(), bv.copy()
            py[y : y + side, x : x + side] = fy
            pu[y // 2 : (y + side) // 2, x // 2 : (x + side) // 2] = fu
            pv[y // 2 : (y + side) // 2, x // 2 : (x + side) // 2] = fv
            planes = np.concatenate([py.ravel(), pu.ravel(), pv.ravel()]).reshape(height * 3 // 2, width)
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def video(face: RGBImage, spec: VideoSpec, folder: Path) -> bytes:
    """The clip for `spec`, from `folder` when made before."""
    path = folder / spec.file_name
    if path.is_file():
        return path.read_bytes()
    blob = moving_face_video(face, spec)
    folder.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return blob


def distinct_stills(face: RGBImage, n: int) -> list[bytes]:
    """`n` JPEGs of the portrait, one face each, the same pixels and distinct bytes (so the cache misses).

    The counter goes in a JPEG comment (COM) segment after SOI. Changing a pixel instead does not do it:
    the quantiser erases a one-level change in one pixel, and only 33 of 120 such JPEGs differed.
    """
    base = encode_image(face, fmt="jpeg", quality=90)
    assert base[:2] == b"\xff\xd8", "encode_image did not write a JPEG"
    out = []
    for i in range(n):
        text = f"dfmod bench still {i}".encode()
        out.append(base[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + base[2:])
    return out


def repeated(clip: bytes, times: int) -> bytes:
    """`clip` played `times` times over in one mp4, by copying its packets with shifted timestamps.

    Every keyframe interval of our clips is closed, so the result is a valid stream as costly to decode per
    frame as the clip: a video at the duration limit (3,600 s) without an hour of encoding.
    """
    out_buf = io.BytesIO()
    with av.open(io.BytesIO(clip)) as src, av.open(out_buf, mode="w", format="mp4") as out:
        source = src.streams.video[0]
        packets = [p for p in src.demux(source) if p.size]
        span = source.duration or 0
        stream = out.add_stream_from_template(source)
        for r in range(times):
            for p in packets:
                copy = av.Packet(bytes(p))
                copy.pts = None if p.pts is None else p.pts + r * span
                copy.dts = None if p.dts is None else p.dts + r * span
                copy.is_keyframe, copy.time_base, copy.stream = p.is_keyframe, p.time_base, stream
                out.mux(copy)
    return out_buf.getvalue()


def reencode(blob: bytes, frame: Callable[[RGBImage], RGBImage] = lambda rgb: rgb, crf: int = 23) -> bytes:
    """Every frame of `blob` through `frame`, encoded again with x264 at `crf`."""
    with av.open(io.BytesIO(blob)) as src:
        rate = src.streams.video[0].average_rate or 15
        frames = [frame(f.to_ndarray(format="rgb24")) for f in src.decode(video=0)]
    h, w = frames[0].shape[0] // 2 * 2, frames[0].shape[1] // 2 * 2
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"  # type: ignore[union-attr]
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for rgb in frames:
            picture_ = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:h, :w]), format="rgb24")
            for packet in stream.encode(picture_):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()
