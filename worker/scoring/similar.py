"""When two media are near-duplicates: vPDQ's comparison over PDQ frame hashes (one frame for a still).

vPDQ (facebook/ThreatExchange vpdq/README.md, "Comparison (Matching) Algorithm") treats each video as a bag
of unique frame hashes, drops those under a quality floor, and calls two videos a match when enough of each
one's frames have a frame of the other within the PDQ distance. A still is a bag of one, so the same rule
becomes PDQ's "distance <= D". The query is also compared as its mirror image (`PdqHash.mirrored`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from worker.core.contracts import FrameHash, NearDuplicate
from worker.core.settings import NearDuplicateSettings
from worker.core.types import Frame
from worker.media.pdq import BITS, PdqHash, bit_differences, frame_hash

_BYTES = BITS // 8
Hashes = npt.NDArray[np.uint8]  # N x 32


@dataclass(frozen=True)
class MediaHashes:
    """One media's frame hashes (N x 32 bytes), their qualities, and (for a query) the mirrored hashes."""

    hashes: Hashes
    quality: npt.NDArray[np.int16]
    mirrored: Hashes | None = None

    @classmethod
    def of(cls, frames: list[PdqHash]) -> MediaHashes:
        def rows(values: list[bytes]) -> Hashes:
            return np.frombuffer(b"".join(values), np.uint8).reshape(len(values), _BYTES)

        return cls(rows([f.hash for f in frames]), np.array([f.quality for f in frames], np.int16),
                   rows([f.mirrored for f in frames]))

    def usable(self, min_quality: int) -> MediaHashes:
        """The unique hashes of quality >= `min_quality` (vPDQ's filtered, unique frames)."""
        keep = self.quality >= min_quality
        hashes, first = np.unique(self.hashes[keep], axis=0, return_index=True)
        mirrored = self.mirrored[keep][first] if self.mirrored is not None else None
        return MediaHashes(hashes, self.quality[keep][first], mirrored)

    def to_bytes(self) -> bytes:
        """Stored form: per frame one quality byte then its 32 hash bytes."""
        quality = self.quality.astype(np.uint8).reshape(-1, 1)
        return np.concatenate([quality, self.hashes], axis=1).tobytes()

    @classmethod
    def from_bytes(cls, raw: bytes) -> MediaHashes:
        if not raw or len(raw) % (_BYTES + 1):
            raise ValueError(f"stored media hashes have {len(raw)} bytes, not a multiple of {_BYTES + 1}")
        table = np.frombuffer(raw, np.uint8).reshape(-1, _BYTES + 1)
        return cls(table[:, 1:], table[:, 0].astype(np.int16))


def pairwise(a: Hashes, b: Hashes) -> npt.NDArray[np.int64]:
    """(len(a) x len(b)) PDQ distances."""
    return bit_differences(a[:, None, :], b[None, :, :])


def _compare(query: Hashes, target: Hashes, settings: NearDuplicateSettings) -> tuple[float, float, int] | None:
    distance = pairwise(query, target)
    query_best, target_best = distance.min(axis=1), distance.min(axis=0)
    query_hit, target_hit = query_best <= settings.max_distance, target_best <= settings.max_distance
    query_pct, target_pct = 100.0 * query_hit.mean(), 100.0 * target_hit.mean()
    if not query_hit.any() or target_pct < settings.match_pct or query_pct < settings.query_match_pct:
        return None
    return target_pct, query_pct, round(float(query_best[query_hit].mean()))


def match(query: MediaHashes, target: MediaHashes, target_sha256: str,
          settings: NearDuplicateSettings) -> NearDuplicate | None:
    """The match of `query` (filtered by `usable`, with mirrored hashes) against one stored media, or None."""
    target = target.usable(settings.min_quality)
    if not len(query.hashes) or not len(target.hashes):
        return None
    found: list[tuple[float, float, int, bool]] = []
    for mirrored, hashes in ((False, query.hashes), (True, query.mirrored)):
        if hashes is not None:
            result = _compare(hashes, target.hashes, settings)
            if result is not None:
                found.append((*result, mirrored))
    if not found:
        return None
    target_pct, query_pct, distance, mirrored = min(found, key=lambda f: (-min(f[0], f[1]), f[2]))
    return NearDuplicate(media_sha256=target_sha256, distance=distance, mirrored=mirrored,
                         match_pct=round(target_pct, 1), query_match_pct=round(query_pct, 1))


def hash_frames(frames: list[Frame]) -> tuple[list[FrameHash], MediaHashes | None]:
    """PDQ of each sampled frame, for the verdict and the index; a frame under PDQ's 5 px minimum goes unhashed."""
    done: list[tuple[Frame, PdqHash]] = []
    for frame in frames:
        try:
            done.append((frame, frame_hash(frame)))
        except ValueError:
            continue
    phash = [FrameHash(frame_index=f.index, time_s=round(f.time_s, 3), pdq=h.hex, quality=h.quality)
             for f, h in done]
    return phash, (MediaHashes.of([h for _, h in done]) if done else None)
