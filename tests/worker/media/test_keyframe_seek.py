"""Sampling by seeking gives exactly the sequential pass's frames, on every container, and falls back when lied to.

Each clip is generated here with PyAV: a small moving face on a plain background, a short keyframe interval
so the sampler has intervals to skip, and a frame counter stripe so neighbouring frames differ in pixels.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import av.container
import cv2
import numpy as np
import pytest

from worker.core.settings import DecodeSettings
from worker.core.types import DecodedMedia, RGBImage
from worker.media.decode import decode_media
from worker.media.frame_times import even_indices
from worker.media.keyframe_seek import SEEK_RETRIES, SeekUnreliable, decode_ranks, scan_packets

SIZE = (128, 72)  # 16:9, tiny: the comparisons are about which frames, not about pixels per frame


@dataclass(frozen=True)
class Clip:
    fmt: str
    codec: str
    seconds: float = 12.0
    fps: int = 30
    gop: int = 30
    bframes: int = 3
    vfr: bool = False
    open_gop: bool = False    # frames after a keyframe in decode order that show before it and predict across it


def make_clip(face: RGBImage, clip: Clip, options: dict[str, str] | None = None) -> bytes:
    width, height = SIZE
    side = height // 2
    small = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=clip.fmt, options=options or {}) as out:
        stream: Any = out.add_stream(clip.codec, rate=clip.fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if clip.codec == "libx264":
            stream.options = {"preset": "ultrafast", "x264-params":
                              f"keyint={clip.gop}:min-keyint={clip.gop}:scenecut=0:bframes={clip.bframes}"
                              f":open-gop={int(clip.open_gop)}"}
        else:
            stream.options = {"g": str(clip.gop), "deadline": "realtime", "cpu-used": "8"}
        if clip.vfr:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        n = int(clip.seconds * clip.fps)
        t_ms = 0
        for i in range(n):
            img = np.full((height, width, 3), (90, 120, 100), np.uint8)
            x = int((width - side) * (0.5 + 0.5 * math.sin(i / 20)))
            img[10 : 10 + side, x : x + side] = small
            img[:4, (i * 3) % (width - 4) : (i * 3) % (width - 4) + 4] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if clip.vfr:  # 20-50 ms between frames
                frame.pts, frame.time_base = t_ms, Fraction(1, 1000)
                t_ms += 20 + (i * 7) % 31
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


CLIPS = {
    "mp4 h264 b-frames": Clip("mp4", "libx264"),
    "mp4 h264 no b-frames": Clip("mp4", "libx264", bframes=0),
    "mp4 h264 variable frame rate": Clip("mp4", "libx264", vfr=True),
    "mp4 h264 open gop": Clip("mp4", "libx264", open_gop=True),
    "mkv h264 b-frames": Clip("matroska", "libx264"),
    "mkv h264 variable frame rate": Clip("matroska", "libx264", vfr=True),
    "webm vp9": Clip("webm", "libvpx-vp9"),
    "webm vp8": Clip("webm", "libvpx"),
    "ts h264 b-frames": Clip("mpegts", "libx264"),
    "mkv mpeg4": Clip("matroska", "mpeg4"),
}


@pytest.fixture(scope="module")
def clips(astronaut_rgb: RGBImage) -> dict[str, bytes]:
    return {name: make_clip(astronaut_rgb, clip) for name, clip in CLIPS.items()}


def _read(blob: bytes) -> av.container.InputContainer:
    return av.open(io.BytesIO(blob), mode="r")


def assert_same_frames(seeking: DecodedMedia, sequential: DecodedMedia) -> None:
    assert [f.index for f in seeking.frames] == [f.index for f in sequential.frames]
    assert [f.time_s for f in seeking.frames] == [f.time_s for f in sequential.frames]
    for a, b in zip(seeking.frames, sequential.frames, strict=True):
        assert np.array_equal(a.rgb, b.rgb), f"frame {a.index} differs"
    assert (seeking.frame_count, seeking.duration_s, seeking.kind) == (
        sequential.frame_count, sequential.duration_s, sequential.kind)


@pytest.mark.parametrize("name", list(CLIPS))
@pytest.mark.parametrize("frames", [32, 5])
def test_seeking_gives_the_sequential_frames(clips: dict[str, bytes], name: str, frames: int) -> None:
    blob = clips[name]
    sequential = decode_media(blob, DecodeSettings(frames=frames, seek=False))
    assert len(sequential.frames) == frames
    assert len({f.rgb.tobytes() for f in sequential.frames}) == frames  # distinct pixels: a wrong frame shows
    assert_same_frames(decode_media(blob, DecodeSettings(frames=frames, seek=True)), sequential)


class CountingContainer:
    """Passes calls through to a PyAV container, counting seeks and decoded frames."""

    def __init__(self, container: av.container.InputContainer) -> None:
        self._container = container
        self.seeks = 0

    def seek(self, *args: Any, **kwargs: Any) -> None:
        self.seeks += 1
        self._container.seek(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


@pytest.mark.parametrize("name", ["mp4 h264 b-frames", "mp4 h264 open gop", "mkv h264 b-frames", "webm vp9",
                                  "ts h264 b-frames"])
def test_seeking_skips_keyframe_intervals_without_a_pick(clips: dict[str, bytes], name: str) -> None:
    blob = clips[name]
    with _read(blob) as scanned:
        index = scan_packets(scanned, scanned.streams.video[0], math.inf, 60.0)
    assert index is not None and index.count == 360
    ranks = [0, 100, 101, 250, 359]
    with _read(blob) as opened:
        spy = CountingContainer(opened)
        got = decode_ranks(spy, opened.streams.video[0], index, ranks, math.inf, 60.0)  # type: ignore[arg-type]
    with _read(blob) as full:
        every = [f.to_ndarray(format="rgb24") for f in full.decode(video=0)]
    # to the keyframes before 100, 250 and 359 (101 follows 100 without one); mpegts seeks by byte position
    # and may land past the keyframe, which is retried from an earlier one
    assert spy.seeks == 3 or (name.startswith("ts") and 3 < spy.seeks <= 3 * (1 + SEEK_RETRIES))
    for rank, frame in zip(ranks, got, strict=True):
        assert np.array_equal(frame.to_ndarray(format="rgb24"), every[rank])


def _all_keyframes(blob: bytes) -> bytes:
    """The clip remuxed to mp4 with every packet flagged a keyframe: an index that lies about seek points.

    (MPEG-4 Part 2: for H.264 FFmpeg re-derives the flags from the bitstream, so its index cannot lie this way.)
    """
    buf = io.BytesIO()
    with _read(blob) as src, av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.size:
                packet.is_keyframe = True
                packet.stream = stream
                out.mux(packet)
    return buf.getvalue()


def test_an_index_that_calls_every_frame_a_keyframe_is_caught(clips: dict[str, bytes]) -> None:
    lying = _all_keyframes(clips["mkv mpeg4"])
    with _read(lying) as scanned:
        index = scan_packets(scanned, scanned.streams.video[0], math.inf, 60.0)
    assert index is not None and all(index.keyframe)
    with _read(lying) as opened, pytest.raises(SeekUnreliable):
        decode_ranks(opened, opened.streams.video[0], index, [0, 200], math.inf, 60.0)
    sequential = decode_media(lying, DecodeSettings(seek=False))
    assert len(sequential.frames) == 32
    assert_same_frames(decode_media(lying, DecodeSettings(seek=True)), sequential)


def test_a_cut_ts_and_an_mkv_without_cues_take_the_sequential_frames(astronaut_rgb: RGBImage,
                                                                     clips: dict[str, bytes]) -> None:
    ts = clips["ts h264 b-frames"]
    cut = ts[: len(ts) * 2 // 3 // 188 * 188 + 100]  # an interrupted upload: ends inside a packet
    assert_same_frames(decode_media(cut, DecodeSettings(seek=True)), decode_media(cut, DecodeSettings(seek=False)))
    no_cues = make_clip(astronaut_rgb, Clip("matroska", "libx264"), options={"live": "1"})  # streamed: no index
    assert b"\x1c\x53\xbb\x6b" not in no_cues  # no Cues element (Matroska's keyframe index)
    with _read(no_cues) as probe:
        assert probe.duration is None  # nor a duration: sampled by the unknown-length plan
    assert_same_frames(decode_media(no_cues, DecodeSettings(seek=True)),
                       decode_media(no_cues, DecodeSettings(seek=False)))


def _looped(blob: bytes, times: int) -> bytes:
    """`blob` (closed GOPs) played `times` times over in one mp4: packets copied with shifted timestamps."""
    buf = io.BytesIO()
    with _read(blob) as src, av.open(buf, mode="w", format="mp4") as out:
        source = src.streams.video[0]
        packets = [p for p in src.demux(source) if p.size]
        span = source.duration or 0
        stream = out.add_stream_from_template(source)
        for r in range(times):
            for p in packets:
                copy = av.Packet(bytes(p))
                copy.pts, copy.dts = p.pts + r * span, p.dts + r * span  # type: ignore[operator]
                copy.is_keyframe, copy.time_base, copy.stream = p.is_keyframe, p.time_base, stream
                out.mux(copy)
    return buf.getvalue()


def test_a_video_at_the_duration_limit_is_sampled_by_seeking(clips: dict[str, bytes]) -> None:
    """3,600 s (the default limit, 108,000 frames) is decoded within the default timeout, with the right pixels:
    the clip repeats every 360 frames, so frame i must equal the clip's frame i % 360."""
    clip = clips["mp4 h264 b-frames"]
    hour = _looped(clip, 300)
    with _read(clip) as full:
        every = [f.to_ndarray(format="rgb24") for f in full.decode(video=0)]
    media = decode_media(hour, DecodeSettings())
    assert media.duration_s == pytest.approx(3600.0) and media.frame_count == 108_000
    assert [f.index for f in media.frames] == even_indices(108_000, 32)
    for frame in media.frames:
        assert np.array_equal(frame.rgb, every[frame.index % 360]), frame.index


def _keyframe_ranks_of(blob: bytes) -> list[int]:
    """Presentation ranks of the keyframes, from a full decode (independent of the packet index)."""
    with _read(blob) as full:
        return [rank for rank, frame in enumerate(full.decode(video=0)) if frame.key_frame]


@pytest.mark.parametrize("name", ["mp4 h264 b-frames", "mkv h264 b-frames", "webm vp9", "ts h264 b-frames"])
def test_keyframe_sampling_moves_each_lone_sample_to_its_intervals_keyframe(clips: dict[str, bytes],
                                                                          name: str) -> None:
    blob = clips[name]
    keyframes = _keyframe_ranks_of(blob)
    exact = [f.index for f in decode_media(blob, DecodeSettings(frames=5)).frames]
    assert len({rank // 30 for rank in exact}) == 5  # one sample in each of 5 of the 12 one-second intervals
    want = [max(k for k in keyframes if k <= rank) for rank in exact]
    assert want != exact
    media = decode_media(blob, DecodeSettings(frames=5, sampling="keyframes"))
    assert media.sampling == "keyframes"
    assert [f.index for f in media.frames] == want
    with _read(blob) as full:
        every = [f.to_ndarray(format="rgb24") for f in full.decode(video=0)]
    for frame in media.frames:
        assert np.array_equal(frame.rgb, every[frame.index]), frame.index
    assert media.frame_count == 360  # the stream is still described as it is


def test_keyframe_sampling_keeps_samples_that_share_an_interval_exact(clips: dict[str, bytes]) -> None:
    """32 samples over 12 intervals: every interval holds two or more, so nothing moves and the verdict says exact."""
    blob = clips["mp4 h264 b-frames"]
    approximate = decode_media(blob, DecodeSettings(sampling="keyframes"))
    assert approximate.sampling == "exact"
    assert_same_frames(approximate, decode_media(blob, DecodeSettings()))


def test_keyframe_sampling_needs_the_seeking_path(clips: dict[str, bytes]) -> None:
    blob = clips["mp4 h264 b-frames"]
    sequential = decode_media(blob, DecodeSettings(frames=5, seek=False, sampling="keyframes"))
    assert sequential.sampling == "exact" and [f.index for f in sequential.frames] == even_indices(360, 5)
