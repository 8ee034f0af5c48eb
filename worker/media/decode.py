"""Stage 3, decode: N evenly spaced frames of a video (or the one frame of a still), in the decoder's pixels.

PyAV (FFmpeg) opens the bytes from memory; FFmpeg may only use the demuxers in
`DecodeSettings.allowed_containers` (its `format_whitelist`, so a playlist or concat script can never make
it open other files). Which frames are sampled is decided in one of three ways:

- frame count known (mp4 and most containers): `even_indices(count, N)` by decode position; decoding stops
  at the last wanted frame;
- only the duration known (e.g. Matroska): `even_times(duration, N)`; each target takes the nearest frame;
- neither: every k-th frame is kept, k doubling whenever more than 2N are held, and `even_indices` picks N of
  those at the end (bounded memory, exact spacing).

How they are fetched: by seeking (`keyframe_seek`, on by default, `DecodeSettings.seek`): one demux pass lists
every packet, the same selector picks frames by presentation rank, and only the keyframe intervals that hold
a pick are decoded, so the cost follows the number of samples, not the duration. Where the container cannot
seek or its index proves wrong, the one sequential pass below decodes every frame up to the last pick; both
give the very same frames.

Damage policy (the sequential pass; a damaged container never takes the seeking path): a packet that fails
to decode is skipped (as the ffmpeg CLI does); a demuxer error (e.g. the bytes end early) ends the pass. If at
least one frame was sampled by then, the frames so far are returned (the media is judged on what is there);
otherwise DECODE_FAILED. A file whose index is missing (an mp4 cut before its `moov` box) cannot be opened at
all and is DECODE_FAILED.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import av
import av.container
import av.video
import numpy as np

from worker.core.errors import ErrorCode, MediaError
from worker.core.settings import DecodeSettings
from worker.core.types import DecodedMedia, Frame, LumaPlane, RGBImage, Sampling
from worker.media.frame_times import even_indices, even_times
from worker.media.image_header import check_image_header, sniff_container
from worker.media.keyframe_seek import PacketIndex, SeekUnreliable, decode_ranks, keyframe_ranks, scan_packets

log = logging.getLogger(__name__)

#: Demuxers that carry a single still picture.
STILL_CONTAINERS = frozenset({"png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "image2"})
#: Give up on a stream after this many packets that fail to decode.
MAX_PACKET_ERRORS = 32


@dataclass
class _Picked:
    index: int
    time_s: float
    frame: av.VideoFrame | None  # None while the seeking path has only planned the pick


@dataclass
class _Selector:
    """Decides, frame by frame in decode order, which frames to keep; see the module docstring."""

    n: int
    indices: list[int] | None = None          # count-known plan
    times: list[float] | None = None          # duration-known plan
    tolerance_s: float = 0.0
    kept: list[_Picked] = field(default_factory=list)
    stride: int = 1                           # unknown-length plan
    _next: int = 0

    def offer(self, picked: _Picked) -> None:
        if self.indices is not None:
            if self._next < len(self.indices) and picked.index == self.indices[self._next]:
                self.kept.append(picked)
                self._next += 1
        elif self.times is not None:
            matched = False
            while self._next < len(self.times) and picked.time_s >= self.times[self._next] - self.tolerance_s:
                matched = True
                self._next += 1
            if matched:
                self.kept.append(picked)
        elif picked.index % self.stride == 0:
            self.kept.append(picked)
            if len(self.kept) > 2 * self.n:
                self.stride *= 2
                self.kept = [p for p in self.kept if p.index % self.stride == 0]

    @property
    def done(self) -> bool:
        targets = self.indices if self.indices is not None else self.times
        return targets is not None and self._next >= len(targets)

    def finish(self, last: _Picked | None) -> list[_Picked]:
        """The picks once the stream has ended; a stream shorter than announced still gets its last frame."""
        if self.indices is None and self.times is None:
            picks = self.kept
            return [picks[i] for i in even_indices(len(picks), self.n)]
        if not self.done and last is not None and (not self.kept or self.kept[-1].index != last.index):
            self.kept.append(last)
        return self.kept


def decode_media(blob: bytes, settings: DecodeSettings, content_type: str | None = None) -> DecodedMedia:
    """Decode `settings.frames` evenly spaced frames (one for a still); each becomes RGB when the faces stage reads it.

    `content_type` is only quoted in messages: the bytes are sniffed, never trusted by their declared type.
    """
    if not blob:
        raise MediaError(ErrorCode.EMPTY_MEDIA, "the media has zero bytes")
    check_image_header(blob, settings.max_pixels)  # before av.open, whose probe decodes a still's picture
    deadline = time.monotonic() + settings.timeout_s
    container = _open(blob, settings, content_type)
    try:
        return _decode(container, settings, deadline, reopen=lambda: _open(blob, settings, content_type))
    finally:
        container.close()


def _open(blob: bytes, settings: DecodeSettings, content_type: str | None) -> av.container.InputContainer:
    whitelist = ",".join(settings.allowed_containers)
    try:
        container = av.open(
            io.BytesIO(blob),
            mode="r",
            container_options={"format_whitelist": whitelist},
            metadata_errors="ignore",
        )
    except av.FFmpegError as exc:
        sniffed = sniff_container(blob)
        declared = f" (declared {content_type})" if content_type else ""
        if sniffed is not None and _allowed_container(sniffed, settings):
            raise MediaError(ErrorCode.DECODE_FAILED, f"{sniffed} that FFmpeg cannot open: {exc}") from exc
        raise MediaError(ErrorCode.UNSUPPORTED_MEDIA, f"not an allowed image or video{declared}") from exc
    name = container.format.name
    if name not in settings.allowed_containers:  # the whitelist already refuses these; stay explicit
        container.close()
        raise MediaError(ErrorCode.UNSUPPORTED_MEDIA, f"container {name!r} is not allowed")
    return container


def _decode(
    container: av.container.InputContainer,
    settings: DecodeSettings,
    deadline: float,
    reopen: Callable[[], av.container.InputContainer],
) -> DecodedMedia:
    if not container.streams.video:
        raise MediaError(ErrorCode.UNSUPPORTED_MEDIA, f"{container.format.name} without a video stream")
    stream = container.streams.video[0]
    codec = stream.codec_context.codec
    if codec.name not in settings.allowed_codecs and codec.canonical_name not in settings.allowed_codecs:
        raise MediaError(ErrorCode.UNSUPPORTED_MEDIA, f"codec {codec.canonical_name!r} is not allowed")
    _check_pixels(stream.codec_context.width, stream.codec_context.height, settings)
    still = container.format.name in STILL_CONTAINERS
    duration = 0.0 if still else _duration_s(container, stream)
    if duration > settings.max_duration_s:
        raise _too_long(f"duration {duration:.1f} s", settings)
    count = 1 if still else max(0, stream.frames or 0)
    if count > settings.max_decoded_frames:
        raise MediaError(ErrorCode.TOO_LONG, f"{count} frames is above {settings.max_decoded_frames}")
    rate = stream.average_rate or stream.guessed_rate

    with contextlib.ExitStack() as opened:
        index = None
        if settings.seek and not still:
            index = scan_packets(container, stream, deadline, settings.timeout_s)
            container = opened.enter_context(contextlib.closing(reopen()))  # the demux pass consumed it
            stream = container.streams.video[0]
        if index is None:
            stream.thread_type = "AUTO"
        else:
            # The seeking path decodes short runs between seeks; frame threads pay a pipeline fill and flush per
            # seek, so one thread costs ~25-35 % fewer CPU s (720p 300 s: 0.54-0.60 vs 0.76-0.82) for the same pixels.
            stream.codec_context.thread_count = 1
        selector = _plan(settings.frames, count, duration, rate)
        seeked = None if index is None else _seek_picks(container, stream, index, selector, settings, deadline)
        sampling: Sampling = "exact"
        if seeked is not None:
            picks, decoded, sampling = seeked
        else:
            if index is not None:  # the seek went wrong part-way: start over, sequentially
                container = opened.enter_context(contextlib.closing(reopen()))
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
            selector = _plan(settings.frames, count, duration, rate)
            last, decoded = _run(container, stream, selector, settings, deadline)
            picks = selector.finish(last)
        if not picks:
            raise MediaError(ErrorCode.DECODE_FAILED, f"no frame could be decoded from {container.format.name}")
        # The first frame is converted here, so a pixel format the converter cannot handle fails the decode;
        # the others stay in the decoder's pixels until the faces stage reads them (`Frame`).
        first = picks[0]
        frames = [Frame(first.index, first.time_s, rgb=_rgb(first.frame))]
        frames += [Frame(p.index, p.time_s, convert=_converter(p.frame), luma=_luma_reader(p.frame))
                   for p in picks[1:]]
    # Stopped at the last wanted frame: trust the header. Ran to the end of the stream: we counted.
    frame_count = (count or _estimate(duration, rate) or decoded) if selector.done else decoded
    kind: Literal["image", "video"] = "image" if still or frame_count == 1 else "video"
    return DecodedMedia(
        kind=kind,
        frames=frames[:1] if kind == "image" else frames,
        width=frames[0].rgb.shape[1],  # the first frame is converted already: no conversion here
        height=frames[0].rgb.shape[0],
        container=container.format.name,
        codec=codec.canonical_name,
        duration_s=0.0 if kind == "image" else duration,
        frame_count=frame_count,
        sampling=sampling if kind == "video" else "exact",
    )


def _seek_picks(
    container: av.container.InputContainer,
    stream: av.video.VideoStream,
    index: PacketIndex,
    selector: _Selector,
    settings: DecodeSettings,
    deadline: float,
) -> tuple[list[_Picked], int, Sampling] | None:
    """The sequential pass's picks, planned on the packet index and fetched by seeking, with the frame count and
    the sampling used; None if the seek failed.

    The plan replays `_run` on the packets' timestamps in presentation order (what the decoder would return),
    with its limits, so the picks and the frame count are the sequential pass's. With `sampling = "keyframes"`
    the picks then move to keyframes where `seek.keyframe_ranks` allows.
    """
    start = stream.start_time or 0
    base = float(stream.time_base) if stream.time_base else 0.0
    rate = float(stream.average_rate or 0) or None
    last: _Picked | None = None
    decoded = 0
    for rank in range(index.count):
        t = _frame_time(index.pts_of_rank(rank), rank, start, base, rate)
        if t > settings.max_duration_s:
            raise _too_long(f"a frame at {t:.1f} s", settings)
        last = _Picked(index=rank, time_s=max(0.0, t), frame=None)
        selector.offer(last)
        decoded = rank + 1
        if decoded > settings.max_decoded_frames:
            raise MediaError(ErrorCode.TOO_LONG, f"more than {settings.max_decoded_frames} frames")
        if selector.done:
            break
    picks = selector.finish(last)
    try:
        planned = [p.index for p in picks]
        if settings.sampling == "keyframes":
            ranks = keyframe_ranks(index, planned)
            picks = [p if p.index == r else _Picked(index=r, time_s=max(0.0, _frame_time(
                index.pts_of_rank(r), r, start, base, rate)), frame=None) for p, r in zip(picks, ranks, strict=True)]
        frames = decode_ranks(container, stream, index, [p.index for p in picks], deadline, settings.timeout_s)
    except SeekUnreliable as exc:
        log.info("seeking sampler fell back to the sequential pass", extra={"reason": str(exc)})
        return None
    for pick, frame in zip(picks, frames, strict=True):
        _check_pixels(frame.width, frame.height, settings)
        pick.frame = frame
    moved = settings.sampling == "keyframes" and any(r != p.index for r, p in zip(planned, picks, strict=True))
    return picks, decoded, "keyframes" if moved else "exact"


def _rgb(frame: av.VideoFrame | None) -> RGBImage:
    try:
        if frame is None:
            raise ValueError("a planned frame was never decoded")
        return np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)  # rgb24 is uint8: no copy
    except (av.FFmpegError, ValueError) as exc:  # a pixel format the converter cannot handle
        raise MediaError(ErrorCode.DECODE_FAILED, f"cannot convert frames to RGB: {exc}") from exc


def _converter(frame: av.VideoFrame | None) -> Callable[[], RGBImage]:
    """The frame's RGB conversion, deferred: until then the frame keeps only the decoder's buffers."""
    return lambda: _rgb(frame)


#: Decoder pixel formats whose first plane is 8-bit luma, one byte per pixel.
_LUMA_FIRST = frozenset({"gray", "yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv440p",
                         "yuvj440p", "yuv411p", "yuv410p", "nv12", "nv21", "yuva420p"})


def _luma_reader(frame: av.VideoFrame | None) -> Callable[[], LumaPlane | None]:
    """The frame's Y plane as a view (no conversion); None for other pixel formats (then luma comes from RGB)."""
    def read() -> LumaPlane | None:
        if frame is None or frame.format.name not in _LUMA_FIRST:
            return None
        plane = frame.planes[0]
        rows = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)  # type: ignore[arg-type]
        return rows[:, : plane.width]
    return read


def _plan(n: int, count: int, duration: float, rate: Fraction | None) -> _Selector:
    if count > 0:
        return _Selector(n=n, indices=even_indices(count, n))
    if duration > 0:
        tolerance = 0.5 / float(rate) if rate else 1e-3
        return _Selector(n=n, times=even_times(duration, n), tolerance_s=tolerance)
    return _Selector(n=n)


def _run(
    container: av.container.InputContainer,
    stream: av.video.VideoStream,
    selector: _Selector,
    settings: DecodeSettings,
    deadline: float,
) -> tuple[_Picked | None, int]:
    """The one sequential pass: returns the last decoded frame and how many frames were decoded."""
    start = stream.start_time or 0
    base = float(stream.time_base) if stream.time_base else 0.0
    rate = float(stream.average_rate or 0) or None
    index = 0
    errors = 0
    last: _Picked | None = None
    try:
        for packet in container.demux(stream):
            if time.monotonic() > deadline:
                raise MediaError(ErrorCode.TIMEOUT, f"decoding ran past {settings.timeout_s} s")
            try:
                frames = packet.decode()
            except av.FFmpegError:
                errors += 1
                if errors > MAX_PACKET_ERRORS:
                    break
                continue
            for frame in frames:
                t = _frame_time(frame.pts, index, start, base, rate)
                _check_pixels(frame.width, frame.height, settings)
                if t > settings.max_duration_s:
                    raise _too_long(f"a frame at {t:.1f} s", settings)
                last = _Picked(index=index, time_s=max(0.0, t), frame=frame)
                selector.offer(last)
                index += 1
                if index > settings.max_decoded_frames:
                    raise MediaError(ErrorCode.TOO_LONG, f"more than {settings.max_decoded_frames} frames")
                if selector.done:
                    return last, index
    except av.FFmpegError:
        pass  # damaged or cut-off container: keep what was decoded (module docstring)
    return last, index


def _frame_time(pts: int | None, index: int, start: int, base: float, rate: float | None) -> float:
    """Presentation time from the stream start; from the frame position when the frame has no timestamp."""
    if pts is not None and base:
        return (pts - start) * base
    return index / rate if rate else 0.0


def _too_long(what: str, settings: DecodeSettings) -> MediaError:
    return MediaError(ErrorCode.TOO_LONG, f"{what}: past the limit of {settings.max_duration_s} s")


def _check_pixels(width: int, height: int, settings: DecodeSettings) -> None:
    if width * height > settings.max_pixels:
        raise MediaError(ErrorCode.TOO_LARGE, f"{width}x{height} is above {settings.max_pixels} pixels")


def _duration_s(container: av.container.InputContainer, stream: av.video.VideoStream) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return 0.0


def _estimate(duration: float, rate: Fraction | None) -> int:
    return max(1, math.floor(duration * float(rate) + 0.5)) if rate and duration > 0 else 0


def _allowed_container(name: str, settings: DecodeSettings) -> bool:
    return any(name in allowed.split(",") for allowed in settings.allowed_containers)
