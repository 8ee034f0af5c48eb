"""Keyframe-aware sampling: decode only the keyframe intervals that hold a sampled frame.

Decoding every frame up to the last sample makes a video's cost linear in its duration (a 300 s 720p
video took ~14 CPU s for 32 frames). Instead, one demux pass (packets only, nothing decoded: milliseconds)
lists every packet's timestamp and keyframe flag; the sampler then chooses frames by their presentation
rank exactly as the sequential pass would, and this module fetches each chosen frame by seeking to the
keyframe before it when that keyframe lies past what was already fed to the decoder, decoding forward
only to it, and skipping on the way the non-reference frames that are not picks. Frames are the same pixels
as a full decode: decoding restarts at a keyframe, and no frame is predicted from a non-reference one.

Nothing here trusts the container: a packet without a timestamp, duplicate timestamps, a first packet that
is not a keyframe, or a demuxer error makes `scan_packets` answer None; a seek that lands elsewhere, a first
frame after a seek that is not a keyframe, a timestamp out of the index, going backwards or passing the
target, or a packet that fails to decode raises `SeekUnreliable`. The caller then runs the sequential pass,
which is always correct, so a lying index costs time, never a wrong frame.

One difference remains by design: a packet that fails to decode inside a skipped interval is never seen, so
frame positions count it as a frame where the sequential pass (which skips it) does not; the pixels of every
pick are still those of the frame at that timestamp.
"""

from __future__ import annotations

import collections
import functools
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass

import av
import av.container
import av.video

from worker.core.errors import ErrorCode, MediaError

#: Demuxers whose seeking we use; others (gif, stills, raw streams) always take the sequential pass.
SEEKABLE_CONTAINERS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "mpegts", "flv", "avi"})


#: Seek only when it skips at least this many packets: a seek drops the decoder's pipeline (frame threads,
#: B-frame reordering), a few frames of work, so decoding on through a short gap is cheaper.
MIN_SKIP = 8
#: Seeks aimed at ever earlier keyframes before giving up on a demuxer that lands past the one wanted.
SEEK_RETRIES = 2


class SeekUnreliable(Exception):
    """The container's index or timestamps cannot be trusted for seeking; use the sequential pass."""


@dataclass(frozen=True)
class PacketIndex:
    """Every video packet of the stream from one demux pass, in decode order."""

    pts: list[int]            # per packet, decode order
    keyframe: list[bool]      # per packet, decode order
    by_rank: list[int]        # presentation rank -> decode position (frames come out of the decoder in pts order)

    @property
    def count(self) -> int:
        return len(self.pts)

    def position_of(self, pts: int | None) -> int | None:
        """Decode position of the packet with this pts, None if the index has no such packet."""
        return self._positions.get(pts) if pts is not None else None

    @functools.cached_property
    def _positions(self) -> dict[int, int]:
        return {p: i for i, p in enumerate(self.pts)}

    def rank_of(self, position: int) -> int:
        """Presentation rank of the packet at decode position `position`."""
        return self._ranks[position]

    @functools.cached_property
    def _ranks(self) -> dict[int, int]:
        return {position: rank for rank, position in enumerate(self.by_rank)}

    def pts_of_rank(self, rank: int) -> int:
        return self.pts[self.by_rank[rank]]

    def keyframe_for(self, rank: int) -> int:
        """Decode position of the last keyframe, at or before the frame in decode order and not after it in time."""
        position = self.by_rank[rank]
        target = self.pts[position]
        for k in range(position, -1, -1):
            if self.keyframe[k] and self.pts[k] <= target:
                return k
        raise SeekUnreliable("no keyframe before the target")


def keyframe_ranks(index: PacketIndex, ranks: list[int]) -> list[int]:
    """Approximate sampling (`DecodeSettings.sampling = "keyframes"`): each rank alone in its keyframe interval
    becomes the rank of that interval's keyframe; ranks sharing an interval are kept. Should the result not be
    strictly ascending (`keyframe_for` rules it out; this guards the decode loop's contract), the exact ranks
    come back unchanged."""
    keys = [index.keyframe_for(rank) for rank in ranks]
    shared = {k for k, n in collections.Counter(keys).items() if n > 1}
    out = [rank if key in shared else index.rank_of(key) for rank, key in zip(ranks, keys, strict=True)]
    return out if all(a < b for a, b in itertools.pairwise(out)) else ranks


def scan_packets(
    container: av.container.InputContainer, stream: av.video.VideoStream, deadline: float, timeout_s: float
) -> PacketIndex | None:
    """The packet index from a demux pass, or None when the stream is not fit for seeking (module docstring)."""
    if container.format.name not in SEEKABLE_CONTAINERS:
        return None
    pts: list[int] = []
    keyframe: list[bool] = []
    try:
        for packet in container.demux(stream):
            if time.monotonic() > deadline:
                raise MediaError(ErrorCode.TIMEOUT, f"decoding ran past {timeout_s} s")
            if packet.size == 0:  # the flush packet PyAV yields at the end of the stream
                continue
            if packet.pts is None:
                return None
            pts.append(packet.pts)
            keyframe.append(bool(packet.is_keyframe))
    except av.FFmpegError:
        return None  # damaged: the sequential pass applies the damage policy
    if not pts or not keyframe[0] or len(set(pts)) != len(pts):
        return None
    by_rank = sorted(range(len(pts)), key=pts.__getitem__)
    return PacketIndex(pts=pts, keyframe=keyframe, by_rank=by_rank)


def decode_ranks(
    container: av.container.InputContainer,
    stream: av.video.VideoStream,
    index: PacketIndex,
    ranks: list[int],
    deadline: float,
    timeout_s: float,
) -> list[av.VideoFrame]:
    """The frames of presentation ranks `ranks` (ascending), seeking past keyframe intervals with none of them
    (when the next pick's keyframe is `MIN_SKIP` or more packets past what the decoder was fed).

    `container` must be freshly opened (nothing demuxed yet).
    """
    known = set(index.pts)
    wanted = {index.by_rank[rank] for rank in ranks}
    out: list[av.VideoFrame] = []
    run: Iterator[av.VideoFrame] | None = None
    fed = _Fed()
    for rank in ranks:
        target = index.pts_of_rank(rank)
        key = index.keyframe_for(rank)
        if run is None or key > fed.position + MIN_SKIP:
            packets = container.demux(stream) if run is None and key == 0 else _seek(container, stream, index, key)
            fed = _Fed()
            run = _frames(packets, stream, index, wanted, fed, deadline, timeout_s)
        out.append(_advance_to(run, target, known, fed))
    stream.codec_context.skip_frame = "DEFAULT"
    return out


def _seek(
    container: av.container.InputContainer, stream: av.video.VideoStream, index: PacketIndex, key: int
) -> Iterator[av.Packet]:
    """Packets from the keyframe at decode position `key` on.

    Demuxers seek by their own means (mpegts by byte position), so the landing is checked: early is fine (the
    packets before the keyframe are skipped, undecoded); late is retried from an earlier keyframe, up to
    `SEEK_RETRIES` times, and then the index is not trusted.
    """
    earlier = [k for k in range(key, -1, -1) if index.keyframe[k]][: SEEK_RETRIES + 1]
    for aim in earlier:
        container.seek(index.pts[aim], stream=stream, backward=True, any_frame=False)
        packets = container.demux(stream)
        for packet in packets:
            if not packet.size:
                break  # the end of the stream
            position = index.position_of(packet.pts)
            if position is None or position > key:
                break  # landed past the keyframe: aim earlier
            if position == key:
                return itertools.chain([packet], packets)
    raise SeekUnreliable("no seek landed at or before the keyframe")


@dataclass
class _Fed:
    """Where the current run (since the last seek) stands."""

    position: int = -1            # decode position of the last packet fed to the decoder
    last_pts: int | None = None   # pts of the last frame the decoder returned
    first: bool = True            # no frame returned yet since the seek


def _frames(
    packets: Iterator[av.Packet],
    stream: av.video.VideoStream,
    index: PacketIndex,
    wanted: set[int],
    fed: _Fed,
    deadline: float,
    timeout_s: float,
) -> Iterator[av.VideoFrame]:
    """Decoded frames of `packets`, updating `fed` with the decode position reached.

    Non-reference frames (most B-frames) that are not wanted are not decoded at all (`skip_frame=NONREF`):
    no other frame is predicted from them, so every frame that is decoded has the very same pixels.
    """
    codec = stream.codec_context
    try:
        for packet in packets:
            if time.monotonic() > deadline:
                raise MediaError(ErrorCode.TIMEOUT, f"decoding ran past {timeout_s} s")
            if packet.size:
                position = index.position_of(packet.pts)
                if position is None:
                    raise SeekUnreliable(f"packet pts {packet.pts} is not in the index")
                fed.position = position
                codec.skip_frame = "DEFAULT" if position in wanted else "NONREF"
            else:
                codec.skip_frame = "DEFAULT"  # draining: whatever is still inside comes out
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                raise SeekUnreliable(f"a packet failed to decode: {exc}") from exc
            yield from frames
    except av.FFmpegError as exc:
        raise SeekUnreliable(f"demuxing after a seek failed: {exc}") from exc


def _advance_to(run: Iterator[av.VideoFrame], target: int, known: set[int], fed: _Fed) -> av.VideoFrame:
    """Decode forward to the frame at pts `target`, checking that every frame on the way is where the index says
    (skipped non-reference frames leave gaps; order and the index's timestamps must hold)."""
    for frame in run:
        pts = frame.pts
        if pts is None or pts not in known:
            raise SeekUnreliable(f"decoded a frame with pts {pts} that the index does not list")
        if fed.first and not frame.key_frame:
            raise SeekUnreliable("the first frame after a seek is not a keyframe")
        if fed.last_pts is not None and pts <= fed.last_pts:
            raise SeekUnreliable("frames came out of order")
        fed.first = False
        fed.last_pts = pts
        if pts == target:
            return frame
        if pts > target:
            raise SeekUnreliable("decoding passed the target frame")
    raise SeekUnreliable("the stream ended before the target frame")
